"""Prompt templates and tokenizer-based chunking for LLM stages (rephrase, lm_perplexity).

Templates live in YAML (`configs/prompts/rephrase.yaml`) so users swap them; a job may also
give templates inline. Chunking follows Nemotron-CC (Su et al. 2024): split the document on
newlines and merge neighbouring lines while the chunk stays within the family's input limit,
counted in the served model's own tokens; a single line longer than the limit is cut at token
boundaries.
"""
from __future__ import annotations

import hashlib
import os
from typing import Literal, Optional

import yaml

from transforms.core.config import ConfigError, config_dataclass, parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PROMPTS = "configs/prompts/rephrase.yaml"


@config_dataclass
class Template:
    prompt: str
    max_input_tokens: int
    max_output_tokens: int
    family: Literal["wrap", "nemotron_cc", "custom"] = "custom"
    system: Optional[str] = None
    prefix: Optional[str] = None       # the line the output should start with (removed)
    prefix_required: bool = True       # false: removed when present, kept output otherwise
    postprocess: Literal["none", "diverse_qa"] = "none"
    max_pairs: int = 8                 # diverse_qa: keep 1..max_pairs QA pairs, drawn per chunk

    def __post_init__(self):
        if self.max_pairs < 1:
            raise ValueError("'max_pairs' must be at least 1")

    def messages(self, text: str) -> list[dict]:
        user = {"role": "user", "content": self.prompt.replace("{text}", text)}
        return ([{"role": "system", "content": self.system}] if self.system else []) + [user]

    def prompt_hash(self) -> str:
        """Identifies the wording (system + prompt) that produced a synthetic document."""
        return hashlib.sha256(f"{self.system or ''}\0{self.prompt}".encode()).hexdigest()[:16]


def resolve_path(path: str) -> str:
    """A relative path from the working directory, else from the repository root."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(REPO, path)


def load_templates(path: str, inline: Optional[dict] = None) -> dict[str, Template]:
    """Templates from a YAML file, updated by `inline` ones (same keys), validated strictly."""
    with open(resolve_path(path), encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: prompt templates must be a mapping of name -> template")
    data.update(inline or {})
    return {name: parse(Template, spec, where=f"templates.{name}") for name, spec in data.items()}


class Chunker:
    """Cuts text into chunks of at most `limit` tokens of `tokenizer` (a HF fast tokenizer)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def measure(self, text: str) -> tuple[list[str], list[int]]:
        """The lines of `text` and their token counts (+1 for the newline that joins them)."""
        return self.measure_all([text])[0]

    def measure_all(self, texts: list[str]) -> list[tuple[list[str], list[int]]]:
        """`measure` of many texts with one tokenizer call (with the server's tokenizer: every
        line of every text queued at once on the client)."""
        lines = [text.split("\n") for text in texts]
        ids = iter(self.tokenizer([line for ls in lines for line in ls],
                                  add_special_tokens=False)["input_ids"])
        return [(ls, [len(next(ids)) + 1 for _ in ls]) for ls in lines]

    def chunks(self, text: str, limit: int, measured=None) -> list[str]:
        lines, counts = measured or self.measure(text)
        chunks: list[str] = []
        current: list[str] = []
        size = 0
        for line, n in zip(lines, counts):
            if size + n > limit and current:
                chunks.append("\n".join(current))
                current, size = [], 0
            if n > limit:
                chunks.extend(self.split_line(line, limit))
                continue
            current.append(line)
            size += n
        if current:
            chunks.append("\n".join(current))
        return [c.strip() for c in chunks if c.strip()]

    def split_line(self, line: str, limit: int) -> list[str]:
        """Cut one over-long line at token boundaries, `limit - 1` tokens a piece."""
        step = max(1, limit - 1)
        piece_starts = getattr(self.tokenizer, "piece_starts", None)
        if piece_starts is not None:  # the server's tokenizer: no offsets, cut points only
            starts = piece_starts(line, step)
        else:
            offsets = self.tokenizer(line, add_special_tokens=False,
                                     return_offsets_mapping=True)["offset_mapping"]
            starts = [offsets[i][0] for i in range(0, len(offsets), step)]
        return [line[a:b] for a, b in zip(starts, starts[1:] + [len(line)])]


class FastTokenizer:
    """A `tokenizers.Tokenizer` called like a transformers tokenizer (the calls `Chunker` makes).

    Loading `tokenizer.json` with `tokenizers` takes ~0.05 s; `AutoTokenizer` first imports
    transformers (and torch), 5-20 s on a busy worker before the first request could be sent."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, add_special_tokens: bool = True,
                 return_offsets_mapping: bool = False) -> dict:
        texts = text if isinstance(text, list) else [text]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encodings]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encodings]
        return out if isinstance(text, list) else {k: v[0] for k, v in out.items()}


class ServerTokenizer:
    """The served model's own tokenizer, through the vLLM server's `POST /tokenize` and
    `POST /detokenize` (at the server root, not under /v1), for workers that cannot load the
    tokenizer themselves (a served name that is no hub id or local path, no hub access).

    Called like a transformers tokenizer for token ids (the calls `Chunker` makes). The route
    takes one prompt per request, so a call queues one request per distinct non-empty line on
    `client` (a `VLLMClient` for the server root, no cache): all lines of a batch in flight
    together at the client's concurrency, each retried on its own. Over-long lines are cut with
    `piece_starts` (one /detokenize per cut)."""

    def __init__(self, client, model: str):
        self.client = client
        self.model = model

    def _results(self, path: str, bodies: list[dict]) -> list[dict]:
        from classifiers import ModelError
        from classifiers.vllm_client import UNAVAILABLE, ServerUnavailable

        results = self.client.run([(path, body) for body in bodies])
        for result in results:
            if result.error == UNAVAILABLE:
                raise ServerUnavailable(result.detail)
            if result.error is not None:
                raise ModelError(f"vLLM server tokenizer: POST {self.client.base_url}/{path} "
                                 f"failed ({result.error}: {result.detail[:200]})")
        return [r.response for r in results]

    def ids(self, texts: list[str]) -> list[list[int]]:
        distinct = list(dict.fromkeys(t for t in texts if t))
        responses = self._results("tokenize", [
            {"model": self.model, "prompt": t, "add_special_tokens": False} for t in distinct])
        tokens = dict(zip(distinct, (r["tokens"] for r in responses)))
        return [tokens[t] if t else [] for t in texts]

    def __call__(self, text, add_special_tokens: bool = True,
                 return_offsets_mapping: bool = False) -> dict:
        if add_special_tokens or return_offsets_mapping:
            raise ValueError("ServerTokenizer counts tokens without special tokens only")
        ids = self.ids(text if isinstance(text, list) else [text])
        return {"input_ids": ids if isinstance(text, list) else ids[0]}

    def piece_starts(self, line: str, step: int) -> list[int]:
        """Character offsets where `line` is cut into pieces of `step` tokens: the length of
        the detokenized prefix before each cut (a cut inside a multi-byte character is moved
        to that character's start)."""
        tokens = self.ids([line])[0]
        cuts = list(range(step, len(tokens), step))
        prefixes = self._results("detokenize", [{"model": self.model, "tokens": tokens[:k]}
                                                for k in cuts])
        return [0] + [len(p["prompt"].rstrip("\ufffd")) for p in prefixes]


def load_tokenizer(name_or_path: str):
    """The served model's tokenizer: its `tokenizer.json` read by `tokenizers` when the folder
    has one, else transformers' `AutoTokenizer` (hub names, sentencepiece-only models)."""
    local = os.path.join(name_or_path, "tokenizer.json")
    if os.path.isfile(local):
        from tokenizers import Tokenizer

        return FastTokenizer(Tokenizer.from_file(local))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)
