"""`sluice check CONFIG [--input GLOB ...] [--set key=value ...]`: the checks `sluice run` makes
before anything runs (config keys and types, each stage's files, the chain of columns from the
input through the stages), without running."""
from __future__ import annotations

from pipelines.job import JobConfig, check_job, load_config
from pipelines.run import add_job_arguments
from transforms.core.config import parse


def register(subparsers) -> None:
    p = subparsers.add_parser("check", help="check a job config and its chain of columns")
    add_job_arguments(p)
    p.set_defaults(func=_check)


def _check(args) -> int:
    job = parse(JobConfig, load_config(args.config, args.input, args.output, args.set))
    for note in check_job(job):
        print(f"sluice: note: {note}")
    names = ", ".join(next(iter(s)) for s in job.stages) or "ingest only"
    print(f"sluice: {args.config}: ok ({len(job.stages)} stage(s): {names})")
    return 0
