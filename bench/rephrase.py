"""Rephrase throughput: `sluice rephrase` end to end vs the same requests sent directly.

Baseline: the identical chat requests (same chunks, templates and seeded sampling params, hence
the same generated tokens) sent with the official `openai` AsyncOpenAI client at the same
concurrency, nothing else running. Pipeline: `sluice rephrase` as a user runs it (one local Beam
worker process by default) with that concurrency, a fresh request cache, ingest, chunking,
post-filters and the Arrow sinks included. Both are timed in the same run against the same
server (prefix caching off, so the second run does not reuse the first one's prompt KV), after
one untimed warm-up of 2 x concurrency requests; with `--repeats` the order alternates, so a
drift in the machine's load hits both. A watcher polls the server's Prometheus `/metrics` (every
50 ms until the first request arrives, then once a second) to time each run's start-up (command
start to the first request on the server: Beam graph construction and start-up, tokenizer load,
ingest and planning of the first batch) and to sample the requests in flight. Two ratios of
completion tokens/s, pipeline / direct (medians over repeats): end to end, and steady state (each
run's time minus its own start-up; the pipeline's tail, sinks and finalisation, stays in).
Timings on a shared machine are noisy: compare the ratios, not the rates.

    python -m bench.rephrase                       # tiny random Llama on a local CPU vLLM server
    python -m bench.rephrase --endpoint URL --model NAME --tokenizer PATH   # e.g. a GPU server
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
from openai import AsyncOpenAI

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines import cli  # noqa: E402
from transforms.core.config import parse  # noqa: E402
from transforms.llm.rephrase import RephraseConfig, RephraseFn  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "dclm_quality" / "majority_data.jsonl"


def load_docs(n: int) -> list[dict]:
    docs = []
    with open(DATA, encoding="utf-8") as f:
        for i, line in enumerate(f):
            docs.append({"id": f"doc{i}", "text": json.loads(line)["text"], "source": "dclm"})
            if len(docs) == n:
                break
    return docs


def planned_bodies(stage: dict, docs: list[dict]) -> list[dict]:
    """The chat request bodies the stage sends for `docs` (its own planning code)."""
    fn = RephraseFn(parse(RephraseConfig, stage))
    fn.setup()
    try:
        return [p["body"] for p in fn.plan(pa.RecordBatch.from_pylist(docs))]
    finally:
        fn.teardown()


class ServerWatch:
    """Polls a vLLM server's `/metrics` in a thread: when the first request arrived, and the
    requests in flight (running + waiting) sampled once a second after that."""

    def __init__(self, base_url: str):
        self.url = base_url.rstrip("/").removesuffix("/v1") + "/metrics"
        self.first_request = None
        self.in_flight: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "ServerWatch":
        self.cpu = time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = time.process_time() - self.cpu

    def requests(self) -> float:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{")))

    def _poll(self) -> None:
        while not self._stop.wait(0.05 if self.first_request is None else 1.0):
            n = self.requests()
            if self.first_request is None and n > 0:
                self.first_request = time.perf_counter()
            if self.first_request is not None:
                self.in_flight.append(n)

    @property
    def mean_in_flight(self) -> float:
        return statistics.fmean(self.in_flight) if self.in_flight else 0.0


def run_direct(base_url: str, bodies: list[dict], concurrency: int) -> tuple[int, float, float]:
    async def main():
        client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(body):
            async with semaphore:
                response = await client.chat.completions.create(**body)
                return response.usage.completion_tokens

        tokens = await asyncio.gather(*(one(b) for b in bodies))
        await client.close()
        return sum(tokens)

    start = time.perf_counter()
    tokens = asyncio.run(main())
    return tokens, start, time.perf_counter() - start


def run_pipeline(inputs: str, args, concurrency: int, work: Path) -> tuple[int, float, float, int]:
    output = Path(tempfile.mkdtemp(dir=work, prefix="out-"))
    argv = ["rephrase", inputs, "--output", str(output), "--endpoint", args.endpoint,
            "--model", args.model, "--tokenizer", args.tokenizer, "--styles", *args.styles,
            "--cache", tempfile.mkdtemp(dir=work, prefix="cache-"),
            "--concurrency", str(concurrency),
            "--set", f"stages.0.rephrase.sampling.max_tokens={args.max_tokens}"]
    if args.batch_size:
        argv += ["--set", f"ingest.batch_size={args.batch_size}"]
    start = time.perf_counter()
    assert cli.main(argv) == 0
    elapsed = time.perf_counter() - start
    counters = json.loads((output / "stats.json").read_text())["counters"]
    return counters["rephrase.completion_tokens"], start, elapsed, counters["rephrase.requests"]


def report(name: str, repeat: int, tokens: int, start: float, seconds: float,
           watch: ServerWatch) -> dict:
    startup = watch.first_request - start
    rates = {"end_to_end": tokens / seconds, "steady": tokens / (seconds - startup)}
    print(f"  {name:8s} #{repeat}: {tokens:,} tokens in {seconds:6.1f}s = "
          f"{rates['end_to_end']:7.1f} tokens/s end to end; start-up {startup:5.1f}s, "
          f"then {rates['steady']:7.1f} tokens/s; mean in flight {watch.mean_in_flight:5.1f}; "
          f"client CPU {watch.cpu:5.1f}s", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", help="a running server (default: start the tiny model)")
    parser.add_argument("--model")
    parser.add_argument("--tokenizer")
    parser.add_argument("--docs", type=int, default=300,
                        help="documents (300: ~3 min of direct-client time on the CPU tiny model)")
    parser.add_argument("--styles", nargs="+", default=["wrap_simple", "wrap_qa"])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-size", type=int,
                        help="ingest batch size (default: configs/rephrase.yaml's)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("SLUICE_QUIET", "1")

    work = Path(tempfile.mkdtemp(prefix="bench-rephrase-"))
    server = None
    if args.endpoint is None:
        from classifiers.vllm_server import VLLMServer
        from tests.support.tiny_model import build_tiny_model, server_args

        model_dir = build_tiny_model(work / "tiny-llama", [DATA])
        server = VLLMServer(str(model_dir), server_args() + ["--no-enable-prefix-caching"],
                            env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
        print(f"starting vLLM (CPU) for the tiny model in {model_dir} ...", flush=True)
        args.endpoint, args.model = server.start(), str(model_dir)
    args.tokenizer = args.tokenizer or args.model
    try:
        docs = load_docs(args.docs)
        inputs = work / "docs.jsonl"
        inputs.write_text("".join(json.dumps(d) + "\n" for d in docs))
        stage = {"vllm": {"endpoint": args.endpoint, "model": args.model,
                          "tokenizer": args.tokenizer}, "styles": args.styles,
                 "sampling": {"max_tokens": args.max_tokens}}
        bodies = planned_bodies(stage, docs)
        print(f"{len(docs)} documents -> {len(bodies)} requests, styles {args.styles}, "
              f"max_tokens {args.max_tokens}, concurrency {args.concurrency}", flush=True)
        run_direct(args.endpoint, bodies[:2 * args.concurrency], args.concurrency)  # warm-up
        rates = {"direct": [], "pipeline": []}
        tokens = {}
        for repeat in range(args.repeats):  # alternate the order, so drift in load hits both
            for name in ("direct", "pipeline")[::1 if repeat % 2 == 0 else -1]:
                with ServerWatch(args.endpoint) as watch:
                    if name == "direct":
                        tokens[name], start, seconds = run_direct(args.endpoint, bodies,
                                                                  args.concurrency)
                    else:
                        tokens[name], start, seconds, requests = run_pipeline(
                            str(inputs), args, args.concurrency, work)
                        assert requests == len(bodies), (requests, len(bodies))
                rates[name].append(report(name, repeat, tokens[name], start, seconds, watch))
            assert tokens["direct"] == tokens["pipeline"], tokens  # seeded: the same generations
        direct, pipeline = rates["direct"], rates["pipeline"]
        for kind in ("end_to_end", "steady"):
            ratio = (statistics.median(p[kind] for p in pipeline)
                     / statistics.median(d[kind] for d in direct))
            print(f"pipeline / direct throughput, {kind.replace('_', ' '):10s} = {ratio:.3f}  "
                  f"(overhead {1 / ratio - 1:+.1%}, target < 10%)")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
