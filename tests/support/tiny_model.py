"""A tiny random-weight Llama with its own byte-level BPE tokenizer, built locally for tests.

Nothing is downloaded (HF_HUB_OFFLINE=1): the tokenizer is trained with `tokenizers` on real text
from ../shared/data, the model is `transformers.LlamaForCausalLM` with seeded random weights.
vLLM's CPU attention kernel needs a head size of at least 32 (hidden 64 with 2 heads). The chat
template makes the model servable through `/v1/chat/completions` like an instruct model.

    python -m tests.support.tiny_model OUT_DIR [TEXT_FILE...]
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
VOCAB_SIZE = 384
MAX_POSITIONS = 4096


def _texts(files: Iterable[Path]) -> Iterable[str]:
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"] if path.suffix == ".jsonl" else line


def build_tiny_model(out_dir: Path, text_files: list[Path], seed: int = 0,
                     mean_output_tokens: float = 20.0, temperature: float = 0.5) -> Path:
    """Write tokenizer and model files into `out_dir` (idempotent) and return it."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(_texts(text_files), trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, model_max_length=MAX_POSITIONS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        # final RMSNorm output of the constant dimension is ~sqrt(hidden) = 8
        eos_odds = (config.vocab_size - 1) / (mean_output_tokens - 1)
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[config.eos_token_id, 0] = temperature * math.log(eos_odds) / 8.0
    model.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    target = Path(sys.argv[1])
    from tests.support import SHARED_DATA

    sources = [Path(p) for p in sys.argv[2:]] or sorted((SHARED_DATA / "dclm_quality").glob("*.jsonl"))
    print(build_tiny_model(target, sources))


# --- pytest fixtures (imported by tests/conftest.py) -------------------------------------------

import pytest  # noqa: E402

_SERVER = None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.support import SHARED_DATA

    files = sorted((SHARED_DATA / "dclm_quality").glob("*.jsonl"))
    if not files:
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-llama", files)


def server_args() -> list[str]:
    """CPU server flags. Chunked prefill is off: vLLM 0.32 on CPU crashes the engine when a
    seeded request's prefill is split ("CPU Generator does not use offset")."""
    return ["--max-model-len", "4096", "--dtype", "float32", "--enforce-eager",
            "--max-num-seqs", "64", "--no-enable-chunked-prefill",
            "--max-num-batched-tokens", "4096"]


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir):
    """One real vLLM server for the whole session (own process group, stopped at the end)."""
    global _SERVER
    pytest.importorskip("vllm")
    from classifiers.vllm_server import VLLMServer

    if _SERVER is None:
        _SERVER = VLLMServer(str(tiny_model_dir), server_args(),
                             env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
                             startup_timeout_s=600)
    _SERVER.start()
    yield _SERVER
    _SERVER.stop()
