"""Rephrase throughput: `sluice rephrase` end to end vs the same requests sent directly.

Baseline: the identical chat requests (same chunks, templates and seeded sampling params, hence
the same generated tokens) sent with the official `openai` AsyncOpenAI client at the same
concurrency, nothing else running. Pipeline: `sluice rephrase` on one Beam worker with that
concurrency, a fresh request cache, ingest, chunking, post-filters and the Arrow sinks included.
Both are timed in the same run against the same server (prefix caching off, so the second run
does not reuse the first one's prompt KV); the overhead is pipeline time / direct time - 1 over
completion tokens/s. Timings on a shared machine are noisy: compare the ratio, not the rates.

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
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines import cli  # noqa: E402
from transforms.config import parse  # noqa: E402
from transforms.rephrase import RephraseConfig, RephraseFn  # noqa: E402

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


def run_direct(base_url: str, bodies: list[dict], concurrency: int) -> tuple[int, float]:
    from openai import AsyncOpenAI

    async def main():
        client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(body):
            async with semaphore:
                response = await client.chat.completions.create(**body)
                return response.usage.completion_tokens

        start = time.perf_counter()
        tokens = await asyncio.gather(*(one(b) for b in bodies))
        elapsed = time.perf_counter() - start
        await client.close()
        return sum(tokens), elapsed

    return asyncio.run(main())


def run_pipeline(inputs: str, args, concurrency: int, work: Path) -> tuple[int, float, int]:
    output = Path(tempfile.mkdtemp(dir=work, prefix="out-"))
    argv = ["rephrase", inputs, "--output", str(output), "--endpoint", args.endpoint,
            "--model", args.model, "--tokenizer", args.tokenizer, "--styles", *args.styles,
            "--cache", tempfile.mkdtemp(dir=work, prefix="cache-"),
            "--concurrency", str(concurrency),
            "--set", f"stages.0.rephrase.sampling.max_tokens={args.max_tokens}",
            "--set", f"ingest.batch_size={args.batch_size}", "--direct_num_workers=1"]
    start = time.perf_counter()
    assert cli.main(argv) == 0
    elapsed = time.perf_counter() - start
    counters = json.loads((output / "stats.json").read_text())["counters"]
    return counters["rephrase.completion_tokens"], elapsed, counters["rephrase.requests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", help="a running server (default: start the tiny model)")
    parser.add_argument("--model")
    parser.add_argument("--tokenizer")
    parser.add_argument("--docs", type=int, default=120)
    parser.add_argument("--styles", nargs="+", default=["wrap_simple", "wrap_qa"])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("SLUICE_QUIET", "1")

    work = Path(tempfile.mkdtemp(prefix="bench-rephrase-"))
    server = None
    if args.endpoint is None:
        from classifiers.vllm_server import VLLMServer
        from tests.tiny_model import build_tiny_model, server_args

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
        direct, pipeline = [], []
        for repeat in range(args.repeats):  # alternate, so drift in load hits both
            tokens, seconds = run_direct(args.endpoint, bodies, args.concurrency)
            direct.append(tokens / seconds)
            print(f"  direct   #{repeat}: {tokens:,} tokens in {seconds:6.1f}s = "
                  f"{tokens / seconds:8.1f} tokens/s", flush=True)
            tokens_p, seconds, requests = run_pipeline(str(inputs), args, args.concurrency, work)
            assert requests == len(bodies) and tokens_p == tokens, (requests, tokens_p, tokens)
            pipeline.append(tokens_p / seconds)
            print(f"  pipeline #{repeat}: {tokens_p:,} tokens in {seconds:6.1f}s = "
                  f"{tokens_p / seconds:8.1f} tokens/s", flush=True)
        ratio = statistics.median(pipeline) / statistics.median(direct)
        print(f"pipeline / direct throughput = {ratio:.3f}  (overhead {1 / ratio - 1:+.1%}, "
              f"target < 10%)")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
