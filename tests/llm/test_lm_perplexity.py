"""LM perplexity stage: prompt log-probs from a real vLLM server, checked against the same model's log-probs computed directly with transformers; failures
against a port where nothing listens are dead-lettered with the health check off, and fail the
job at once, in one line, with it on."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import uuid

import apache_beam as beam
import pyarrow as pa
import pytest

from classifiers.vllm_client import ServerUnavailable
from tests.support import test_pipeline
from transforms.core.config import parse
from transforms.llm.lm_perplexity import LMPerplexity, LMPerplexityConfig
from transforms.llm.prompts import Chunker, load_tokenizer


def real_docs(shared_data, n: int, max_chars: int) -> list[dict]:
    docs = []
    with open(shared_data / "dclm_quality" / "agreement_data.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            text = json.loads(line)["text"]
            if len(text) <= max_chars:
                docs.append({"id": f"doc{i}", "text": text, "source": "dclm", "url": None})
            if len(docs) == n:
                return docs
    return docs


def reference_logprobs(model_dir, text: str) -> tuple[float, int]:
    """Sum of log p(token | prefix) over tokens 2..n with transformers, and the count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    return float(logp.gather(1, ids[0, 1:, None]).sum()), ids.shape[1] - 1


def _dump(batch: pa.RecordBatch, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{uuid.uuid4().hex}.json"), "w") as f:
        json.dump(batch.to_pylist(), f, default=lambda b: b.decode())


def _load(directory) -> list[dict]:
    if not os.path.isdir(directory):
        return []
    return [row for name in sorted(os.listdir(directory))
            for row in json.load(open(os.path.join(directory, name)))]


def run_stage(config: LMPerplexityConfig, docs: list[dict], out_dir) -> tuple[list, list]:
    """Scored documents and rejects of the stage run through Beam on `docs`."""
    with test_pipeline() as p:
        documents, rejects = p | beam.Create([pa.RecordBatch.from_pylist(docs)]) | LMPerplexity(
            config)
        documents | "DumpDocuments" >> beam.Map(_dump, str(out_dir / "documents"))
        rejects | "DumpRejects" >> beam.Map(_dump, str(out_dir / "rejects"))
    return _load(out_dir / "documents"), _load(out_dir / "rejects")


@pytest.mark.vllm
def test_scores_match_transformers_log_probs(vllm_server, tiny_model_dir, shared_data,
                                             tmp_path):
    docs = real_docs(shared_data, 6, 3000) + [
        {"id": "empty", "text": "", "source": "dclm", "url": None}]
    config = parse(LMPerplexityConfig, {
        "vllm": {"endpoint": vllm_server.base_url, "model": str(tiny_model_dir),
                 "cache": str(tmp_path / "cache"), "concurrency": 4},
        "window_tokens": 4000})
    scored, rejects = run_stage(config, docs, tmp_path)
    assert rejects == []
    by_id = {d["id"]: d for d in scored}
    assert set(by_id) == {d["id"] for d in docs}
    assert by_id["empty"]["lm_perplexity"] is None and by_id["empty"]["lm_tokens"] == 0
    for doc in docs[:3]:
        logprob, n = reference_logprobs(str(tiny_model_dir), doc["text"])
        got = by_id[doc["id"]]
        assert got["lm_tokens"] == n
        assert got["lm_logprob"] == pytest.approx(logprob, rel=1e-3)
        assert got["lm_perplexity"] == pytest.approx(math.exp(-logprob / n), rel=1e-3)
        assert got["text"] == doc["text"] and got["source"] == "dclm"  # columns kept
    # windows: each window's first token is unscored, the rest add up
    chunker = Chunker(load_tokenizer(str(tiny_model_dir)))
    longest = sorted(docs, key=lambda d: -len(d["text"]))[:3]
    windowed, rejects = run_stage(dataclasses.replace(config, window_tokens=128), longest,
                                  tmp_path / "windowed")
    assert rejects == [] and len(windowed) == 3
    for doc in windowed:
        windows = chunker.chunks(doc["text"], 128)
        assert len(windows) > 1
        assert doc["lm_tokens"] == sum(len(chunker.tokenizer(w)["input_ids"]) - 1
                                       for w in windows)
        assert doc["lm_perplexity"] == pytest.approx(by_id[doc["id"]]["lm_perplexity"], rel=0.1)
    # a random 384-token model is near-uniform: perplexity close to the vocabulary size
    assert all(100 < d["lm_perplexity"] < 1000 for d in scored if d["lm_tokens"])
    assert len(os.listdir(tmp_path / "cache")) > 0


def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_unreachable_server_fails_documents_into_the_dead_letter(tiny_model_dir, tmp_path):
    config = parse(LMPerplexityConfig, {  # health check off: the requests themselves fail
        "vllm": {"endpoint": dead_endpoint(), "model": "tiny", "health_check_s": 0,
                 "tokenizer": str(tiny_model_dir), "max_attempts": 2, "backoff_s": 0.01,
                 "max_backoff_s": 0.02}})
    docs = [{"id": "a", "text": "Some text.\nMore text.", "source": "web", "url": None},
            {"id": "b", "text": "", "source": "web", "url": None}]
    scored, rejects = run_stage(config, docs, tmp_path)
    assert [d["id"] for d in scored] == ["b"] and scored[0]["lm_perplexity"] is None
    assert [(r["id"], r["kind"], r["reason"]) for r in rejects] == [
        ("a", "failed", "lm_perplexity_connection_error")]
    assert json.loads(rejects[0]["payload"])["text"] == docs[0]["text"]


def test_unreachable_server_stops_the_stage_before_it_runs(tiny_model_dir, tmp_path):
    """With the health check (default on), the stage fails in seconds with one line instead of
    retrying every request: when the graph is built on a local runner, and in `setup`."""
    config = parse(LMPerplexityConfig, {
        "vllm": {"endpoint": dead_endpoint(), "model": "tiny", "health_check_s": 2,
                 "tokenizer": str(tiny_model_dir)}})
    docs = [{"id": "a", "text": "Some text.", "source": "web", "url": None}]
    start = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"^vLLM server unavailable: GET .*/v1/models "
                                                r"failed \d+ time\(s\) over \ds \(URLError"):
        run_stage(config, docs, tmp_path)
    assert time.monotonic() - start < 20
