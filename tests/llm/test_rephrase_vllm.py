"""`sluice rephrase` against a real vLLM server (tiny random Llama built here): routing by
quality bucket end to end, retries through injected faults, and a run whose server is killed
mid-way, stopped within a minute by the client's circuit breaker (non-zero exit, one line) and
resumed from the request cache by a re-run that starts its own server, with nothing lost or
duplicated. The last test kills the session's server: keep it last in this file."""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import threading
import time

import pytest
from aiohttp import ClientSession, web

from classifiers.vllm_client import CHAT, VLLMClient, completion_text
from pipelines import cli
from tests.support.tiny_model import server_args
from transforms.io.sink import read_output
from transforms.llm.rephrase import NEMOTRON_HIGH

pytestmark = pytest.mark.vllm


def real_docs(shared_data, n: int, max_chars: int) -> list[dict]:
    docs = []
    with open(shared_data / "dclm_quality" / "majority_data.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            text = json.loads(line)["text"]
            if 200 <= len(text) <= max_chars:
                docs.append({"id": f"doc{i}", "text": text, "url": f"https://example.org/{i}"})
            if len(docs) == n:
                break
    return docs


def write_jsonl(path, docs) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    return str(path)


def rephrase(inputs: str, output, *args: str, max_tokens: int = 32) -> dict:
    code = cli.main(["rephrase", inputs, "--output", str(output), *args,
                     "--set", f"stages.0.rephrase.sampling.max_tokens={max_tokens}"])
    assert code == 0
    return json.loads((output / "stats.json").read_text())


def provenance(output) -> tuple[list[dict], list[dict]]:
    """Synthetic rows, and the generation rejects' payloads with reason and kind."""
    synthetic = read_output(str(output / "synthetic")).to_pylist()
    dead = read_output(str(output / "dead_letter")).to_pylist()
    rejected = [json.loads(r["payload"]) | {"reason": r["reason"], "kind": r["kind"]}
                for r in dead if r["stage"] == "rephrase"]
    return synthetic, rejected


def test_rephrase_routes_by_bucket_end_to_end(vllm_server, tiny_model_dir, shared_data, tmp_path):
    docs = real_docs(shared_data, 12, 1200)
    for doc, bucket in zip(docs, [3, 11, 0, 7, 12, 19, 15, 14]):
        doc["quality_bucket"] = bucket
    stats = rephrase(write_jsonl(tmp_path / "in.jsonl", docs), tmp_path / "out",
                     "--endpoint", vllm_server.base_url, "--model", str(tiny_model_dir),
                     "--styles", "wrap_simple", "wrap_qa", "--cache", str(tmp_path / "cache"),
                     # an inline template whose cap is below what the tiny model writes (~17)
                     "--set", "stages.0.rephrase.templates.wrap_qa={family: wrap, prompt: "
                     "'Questions and answers about: {text}', max_input_tokens: 300, "
                     "max_output_tokens: 8}")
    requests = stats["counters"]["rephrase.requests"]
    assert stats["balanced"] and stats["input"] == len(docs) + requests
    assert stats["failed"] == 0

    originals = read_output(str(tmp_path / "out" / "documents")).to_pylist()
    assert sorted(d["id"] for d in originals) == sorted(d["id"] for d in docs)
    synthetic, rejected = provenance(tmp_path / "out")
    assert len(synthetic) + len(rejected) == requests
    assert synthetic and len({s["id"] for s in synthetic}) == len(synthetic)

    expected = set()
    for doc in docs:
        bucket = doc.get("quality_bucket")
        styles = (["wrap_simple", "wrap_qa"] if bucket is None else
                  ["nemotron_wikipedia"] if bucket < 12 else NEMOTRON_HIGH)
        expected |= {(doc["id"], style) for style in styles}
    assert {(s["parent_id"], s["style"]) for s in synthetic} | {
        (r["parent_id"], r["style"]) for r in rejected} == expected

    for s in synthetic:
        assert s["source"] == "dclm_synthetic" or s["source"].endswith("_synthetic")
        assert s["model"] == str(tiny_model_dir) and len(s["prompt_hash"]) == 16
        assert json.loads(s["sampling"]) == {"temperature": 0.5, "top_p": 0.9, "seed": 0,
                                             "max_tokens": 32}
        assert 0 <= s["chunk_index"] < s["chunk_count"] and s["text"].strip()
        assert 0 < s["completion_tokens"] < 32
    # random weights never write the Nemotron-CC prefix lines nor QA pairs: outputs of the
    # templates whose prefix is required are dropped, as are diverse-QA outputs without pairs;
    # extract/list keep theirs (prefix optional); wrap_qa's 8-token cap truncates
    by_reason: dict[str, set] = {}
    for r in rejected:
        by_reason.setdefault(r["reason"], set()).add(r["style"])
    assert by_reason["rephrase_truncated"] == {"wrap_qa"}
    assert by_reason["rephrase_missing_prefix"] == {"nemotron_wikipedia", "nemotron_distill"}
    assert by_reason["rephrase_no_qa_pairs"] == {"nemotron_qa"}
    assert {s["style"] for s in synthetic} == {"wrap_simple", "nemotron_extract", "nemotron_list"}
    assert stats["dropped"].get("rephrase_missing_prefix", 0) > 0


# --- retries --------------------------------------------------------------------------------

class FaultyProxy:
    """Forwards to the real server, but every third request meets a fault, in turn: a 503, a
    connection closed without a response, or a reply slower than the client's timeout."""

    def __init__(self, upstream: str, slow_s: float):
        self.upstream = upstream.rstrip("/")
        self.slow_s = slow_s
        self.counter = itertools.count()
        self.faults = {"503": 0, "dropped": 0, "slow": 0}
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.runner, self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self):
        app = web.Application()
        app.router.add_post("/v1/{path:.*}", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n = next(self.counter)
        body = await request.read()
        if n % 3 == 0:
            fault = ("503", "dropped", "slow")[(n // 3) % 3]
            self.faults[fault] += 1
            if fault == "503":
                return web.Response(status=503, text="overloaded")
            if fault == "dropped":
                request.transport.close()
                return web.Response(status=200)
            await asyncio.sleep(self.slow_s)
        async with ClientSession() as session:
            async with session.post(f"{self.upstream}/{request.match_info['path']}", data=body,
                                    headers={"Content-Type": "application/json"}) as upstream:
                return web.Response(status=upstream.status, body=await upstream.read(),
                                    content_type="application/json")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_retries_recover_503s_dropped_connections_and_timeouts(vllm_server, tiny_model_dir):
    requests = [(CHAT, {"model": str(tiny_model_dir), "max_tokens": 24, "seed": 1,
                        "messages": [{"role": "user", "content": f"Say something about {i}."}]})
                for i in range(18)]
    direct = VLLMClient(vllm_server.base_url, concurrency=6)
    proxy = FaultyProxy(vllm_server.base_url, slow_s=6.0)
    through = VLLMClient(f"http://127.0.0.1:{proxy.port}/v1", concurrency=6, timeout_s=3.0,
                         max_attempts=10, backoff_s=0.05, max_backoff_s=0.2)
    try:
        expected = direct.run(requests)
        got = through.run(requests)
    finally:
        direct.close()
        through.close()
        proxy.close()
    assert all(r.error is None for r in expected + got)
    assert [completion_text(r.response) for r in got] == [
        completion_text(r.response) for r in expected]  # same answers (seeded) after retries
    assert all(proxy.faults[f] >= 2 for f in proxy.faults)
    assert sum(r.attempts for r in got) == len(requests) + sum(proxy.faults.values())


# --- crash and resume (kills the session server: keep last) -----------------------------------

def api_servers(model_dir) -> list[str]:
    """vLLM servers of this test session's model (other sessions on the machine have theirs)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "vllm.entrypoints.openai.api_server" in line
            and str(model_dir) in line]


def test_server_killed_mid_run_stops_the_run_then_rerun_resumes_from_cache(
        vllm_server, tiny_model_dir, shared_data, tmp_path, capsys):
    """Default retry and circuit settings: 8 attempts with backoff up to 60 s would keep every
    request of the killed server retrying for minutes (it took ~9 minutes, then exited 0); the
    circuit breaker stops the run within a minute, non-zero, with one line naming the cause."""
    inputs = write_jsonl(tmp_path / "in.jsonl", real_docs(shared_data, 20, 1500))
    cache = tmp_path / "cache"
    first = {}

    def run_first():
        first["code"] = cli.main([
            "rephrase", inputs, "--output", str(tmp_path / "run1"), "--endpoint",
            vllm_server.base_url, "--model", str(tiny_model_dir), "--cache", str(cache),
            "--concurrency", "4", "--set", "stages.0.rephrase.sampling.max_tokens=32"])

    thread = threading.Thread(target=run_first)
    thread.start()
    deadline = time.monotonic() + 300
    while len(list(cache.rglob("*.json"))) < 12 and thread.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(vllm_server.process.pid, signal.SIGKILL)  # a crash, not a clean shutdown
    killed = time.monotonic()
    vllm_server.process.wait()
    vllm_server.process = None
    thread.join(300)
    stopped_after = time.monotonic() - killed
    assert not thread.is_alive()
    assert first["code"] == 1 and stopped_after < 75, (first, stopped_after)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    print(f"the run stopped {stopped_after:.1f}s after the server was killed: {last}")
    assert last.startswith(f"sluice: vLLM server unavailable: no response from "
                           f"{vllm_server.base_url} for "), last
    assert not (tmp_path / "run1" / "stats.json").exists()  # failed, not finished
    cached = len(list(cache.rglob("*.json")))
    assert cached >= 12

    # The re-run starts its own server (serve mode) and pays only for what did not finish; the
    # CPU default turns chunked prefill off (no --no-enable-chunked-prefill passed here).
    args = [a for a in server_args() if a != "--no-enable-chunked-prefill"]
    stats2 = rephrase(inputs, tmp_path / "run2", "--serve", str(tiny_model_dir),
                      "--cache", str(cache), "--concurrency", "4",
                      *[f"--serve-arg={a}" for a in args],
                      "--set", 'stages.0.rephrase.vllm.serve_env={"VLLM_CPU_KVCACHE_SPACE": "1"}')
    assert api_servers(tiny_model_dir) == []  # the stage stopped the server it started
    counters = stats2["counters"]
    requests = counters["rephrase.requests"]
    assert stats2["balanced"] and stats2["failed"] == 0
    assert counters["rephrase.cache_hits"] == cached < requests
    synthetic2, rejected2 = provenance(tmp_path / "run2")
    assert len(synthetic2) + len(rejected2) == requests  # every request accounted once
    assert len({s["id"] for s in synthetic2}) == len(synthetic2)  # no duplicates
    keys = {(s["parent_id"], s["style"], s["chunk_index"]) for s in synthetic2} | {
        (r["parent_id"], r["style"], r["chunk_index"]) for r in rejected2}
    assert len(keys) == requests  # nothing lost
