"""`sluice run CONFIG [--input GLOB ...] [--output DIR] [--set key=value ...] [--allow-empty]`."""
from __future__ import annotations

import sys

from pipelines.job import load_config, run_job
from transforms.core.stage import STAGES


def add_job_arguments(p) -> None:
    """The config and its overrides, as `run` and `check` take them."""
    p.add_argument("config", help="YAML job config (see configs/)")
    p.add_argument("--input", action="append", metavar="GLOB",
                   help="input glob(s), replacing the config's inputs (repeatable)")
    p.add_argument("--output", metavar="DIR", help="output folder, replacing the config's")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config value by dotted key, e.g. ingest.batch_size=500")


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a job from a YAML config")
    add_job_arguments(p)
    p.add_argument("--allow-empty", action="store_true",
                   help="succeed (writing an empty output) when the inputs hold no records")
    p.set_defaults(func=_run)


def _run(args) -> int:
    data = load_config(args.config, args.input, args.output, args.set)
    if args.allow_empty:
        data["allow_empty"] = True
    stats = run_job(data, args.beam_args)
    if any(STAGES.get(name, "").startswith("transforms.llm.")
           for stage in data.get("stages") or [] for name in stage):
        # requests to a served model may mostly fail without failing the job: checked here
        from transforms.llm.serving import failed_fraction_errors  # aiohttp: LLM jobs only

        errors = failed_fraction_errors(data, stats)
        for error in errors:
            print(f"sluice: {error}", file=sys.stderr)
        if errors:
            return 1
    if any("dedup" in stage for stage in data.get("stages") or []):
        from pipelines.dedup import commit_index_update  # scipy and datasketch: dedup jobs only

        commit_index_update(data)
    return 0
