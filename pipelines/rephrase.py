"""`sluice rephrase INPUT... (--endpoint URL --model NAME | --serve MODEL) --output DIR
[--styles S ...] [--cache DIR] [--config YAML] [--set key=value ...]`

Runs the `rephrase` stage (docs/rephrase.md) as a job: OUTPUT/documents/ keeps the inputs,
OUTPUT/synthetic/ holds the rewrites, OUTPUT/dead_letter/ what was dropped or failed. The cache
folder outlives runs and output folders: a re-run with the same cache pays only for requests
that did not finish.

Locally the job runs on one SDK worker process unless `--direct_num_workers` is given: the stage
waits on the server, `vllm.concurrency` requests in flight from one async client keep it busy,
and every extra worker process would run its own client (and, with `--serve`, its own server)
on the cores the server needs.

Exit status: 0 when the job finished with at most `vllm.max_failed_fraction` of its requests
failed; 1 with a one-line message when more failed, or when the server was unreachable or died
(the stage's health check or circuit breaker, transforms/llm/serving.py). Finished requests are
cached either way, so a re-run resumes.
"""
from __future__ import annotations

import json
import re
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.job import load_config, run_job, set_dotted
from transforms.core.config import ConfigError, is_local
from transforms.llm.serving import failed_fraction_errors

DEFAULT_CONFIG = "configs/rephrase.yaml"


def register(subparsers) -> None:
    p = subparsers.add_parser("rephrase", help="LLM rephrasing (WRAP / Nemotron-CC) with vLLM")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input globs")
    p.add_argument("--output", required=True, metavar="DIR")
    server = p.add_mutually_exclusive_group()
    server.add_argument("--endpoint", metavar="URL",
                        help="a running vLLM server, e.g. http://127.0.0.1:8000/v1")
    server.add_argument("--serve", metavar="MODEL",
                        help="start a vLLM server for this model folder or name on each worker")
    p.add_argument("--model", help="served model name (required with --endpoint)")
    p.add_argument("--tokenizer", help="tokenizer for chunking (default: the model)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="argument passed to the vLLM server, repeatable "
                        "(--serve-arg=--tensor-parallel-size --serve-arg=2)")
    p.add_argument("--styles", nargs="+", metavar="STYLE",
                   help="templates for documents without a quality bucket")
    p.add_argument("--cache", metavar="DIR", help="request cache folder (local or gs://)")
    p.add_argument("--concurrency", type=int, help="requests in flight per worker process")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"job config with the rephrase stage (default {DEFAULT_CONFIG})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, e.g. stages.0.rephrase.sampling.seed=1")
    p.set_defaults(func=_run)


def job_data(args) -> dict:
    """The config file's job with the command-line inputs, output and server settings."""
    overrides = {
        "vllm.endpoint": args.endpoint, "vllm.serve": args.serve, "vllm.model": args.model,
        "vllm.tokenizer": args.tokenizer, "vllm.cache": args.cache,
        "vllm.concurrency": args.concurrency, "styles": args.styles,
        "vllm.serve_args": args.serve_arg or None,
    }
    data = load_config(args.config, args.inputs, args.output)
    stages = data.get("stages") or []
    index = next((i for i, s in enumerate(stages) if isinstance(s, dict) and "rephrase" in s), None)
    if index is None:
        raise ConfigError(f"{args.config}: no 'rephrase' stage to configure")
    stage = stages[index]["rephrase"] = stages[index]["rephrase"] or {}
    vllm = stage.setdefault("vllm", {})
    if args.endpoint or args.serve:  # the command line names the server: drop the file's
        vllm.pop("endpoint", None)
        vllm.pop("serve", None)
    for key, value in overrides.items():
        if value is not None:
            (vllm if key.startswith("vllm.") else stage)[key.split(".")[-1]] = value
    for assignment in args.set:
        set_dotted(data, assignment)
    return data


def beam_args(given: list[str]) -> list[str]:
    """Beam options with one local worker process unless the user chose a number."""
    if is_local(PipelineOptions(given)) and not any(
            a.startswith("--direct_num_workers") for a in given):
        return [*given, "--direct_num_workers=1"]
    return given


UNAVAILABLE_LINE = re.compile(r"vLLM server unavailable: [^\n]*")


def unavailable_message(error: BaseException) -> str | None:
    """The one-line `ServerUnavailable` message inside a failed job's error (a worker's
    exception reaches here as text in Beam's), or None for other errors."""
    found = UNAVAILABLE_LINE.findall(str(error))
    return re.sub(r"\s*\[while running .*$", "", found[-1]) if found else None


def _run(args) -> int:
    data = job_data(args)
    try:
        stats = run_job(data, beam_args(args.beam_args))
    except Exception as error:  # noqa: BLE001 - re-raised unless the server was unavailable
        message = unavailable_message(error)
        if message is None:
            raise
        print(f"sluice: {message}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in stats.get("counters", {}).items()
                      if k.startswith("rephrase.")}, indent=2))
    errors = failed_fraction_errors(data, stats)
    for error in errors:
        print(f"sluice: {error}", file=sys.stderr)
    return 1 if errors else 0
