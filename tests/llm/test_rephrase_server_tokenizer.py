"""Chunking with the server's own tokenizer (POST /tokenize, /detokenize at the server root) when
no tokenizer is configured and the served model name is no local path: a real vLLM CPU server
serving the tiny model under the name `tiny-served` (no hub id, no folder: nothing here could
load a tokenizer by that name). Its own server, so the session server's tests are unaffected."""
from __future__ import annotations

import json

import pytest

from classifiers.vllm_client import VLLMClient
from pipelines import cli
from tests.support.tiny_model import server_args
from transforms.core.config import parse
from transforms.io.sink import read_output
from transforms.llm.prompts import Chunker, ServerTokenizer, load_tokenizer
from transforms.llm.serving import Connection, ServingConfig

pytestmark = pytest.mark.vllm
SERVED = "tiny-served"


@pytest.fixture(scope="module")
def served_server(tiny_model_dir):
    pytest.importorskip("vllm")
    from classifiers.vllm_server import VLLMServer

    server = VLLMServer(str(tiny_model_dir), [*server_args(), "--served-model-name", SERVED],
                        env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
                        startup_timeout_s=600)
    server.start()
    yield server
    server.stop()


def real_texts(shared_data, n: int) -> list[str]:
    with open(shared_data / "dclm_quality" / "majority_data.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f)]


def test_server_tokenizer_chunks_equal_the_local_tokenizers(served_server, tiny_model_dir,
                                                             shared_data):
    config = parse(ServingConfig, {"endpoint": served_server.base_url, "model": SERVED})
    assert config.server_tokenizer
    connection = Connection(config)
    connection.open()
    try:
        server = connection.tokenizer()
        assert isinstance(server, ServerTokenizer)
        assert server.client.base_url == served_server.base_url[: -len("/v1")]  # the root
        remote, local = Chunker(server), Chunker(load_tokenizer(str(tiny_model_dir)))
        texts = real_texts(shared_data, 30) + [
            "\n".join(f"line number {i} of a list" for i in range(50)),
            "word " * 2000,                                 # one line cut at token boundaries
            "Ünïcödé façade – naïve “quotes” 東京 " * 120,    # multi-byte characters cut
            "", "\n\n  \n"]
        measured = remote.measure_all(texts)
        assert measured == [local.measure(t) for t in texts]
        for limit in (64, 300, 1000):
            for text, m in zip(texts, measured):
                assert remote.chunks(text, limit, m) == local.chunks(text, limit), limit
    finally:
        connection.close()


def test_tokenize_routes_are_at_the_server_root(served_server):
    root = served_server.base_url[: -len("/v1")]
    client = VLLMClient(root, concurrency=2, max_attempts=2)
    try:
        tokenized, = client.run([("tokenize", {"model": SERVED, "prompt": "Hello world",
                                               "add_special_tokens": False})])
        assert tokenized.error is None and tokenized.response["count"] == len(
            tokenized.response["tokens"])
        detokenized, = client.run([("detokenize", {"model": SERVED,
                                                   "tokens": tokenized.response["tokens"]})])
        assert detokenized.response["prompt"] == "Hello world"
    finally:
        client.close()


def test_rephrase_with_a_served_name_and_no_tokenizer_end_to_end(served_server, tiny_model_dir,
                                                                 shared_data, tmp_path):
    docs = [{"id": f"doc{i}", "text": t} for i, t in enumerate(real_texts(shared_data, 6))]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(d) + "\n" for d in docs))
    code = cli.main(["rephrase", str(inputs), "--output", str(tmp_path / "out"),
                     "--endpoint", served_server.base_url, "--model", SERVED,
                     "--styles", "wrap_simple",
                     "--set", "stages.0.rephrase.sampling.max_tokens=64"])
    assert code == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    local = Chunker(load_tokenizer(str(tiny_model_dir)))
    expected = sum(len(local.chunks(d["text"], 300)) for d in docs)  # wrap_simple: 300 tokens
    assert stats["counters"]["rephrase.requests"] == expected
    assert stats["balanced"] and stats["failed"] == 0
    synthetic = read_output(str(tmp_path / "out" / "synthetic")).to_pylist()
    assert synthetic and {s["model"] for s in synthetic} == {SERVED}
    assert {(s["parent_id"], s["chunk_count"]) for s in synthetic} <= {
        (d["id"], len(local.chunks(d["text"], 300))) for d in docs}
