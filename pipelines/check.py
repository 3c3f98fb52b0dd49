"""`sluice check CONFIG [--input GLOB ...] [--set key=value ...]`: the checks `sluice run` makes
before anything runs (config keys and types, each stage's files, the chain of columns from the
input through the stages), without running.

A config whose input comes at run time (`input: []` for `--input`, as a refresh's, or the
output of a job not run yet) is checked all the same: the columns no stage writes are then
listed as what the input must carry, instead of being checked against it."""
from __future__ import annotations

from pipelines.job import JobConfig, check_job, load_config
from pipelines.run import add_job_arguments
from transforms.core.config import ConfigError, parse
from transforms.io.ingest import InputSpec, expand_inputs

RUN_TIME_INPUT = "<given at run time>"


def register(subparsers) -> None:
    p = subparsers.add_parser("check", help="check a job config and its chain of columns")
    add_job_arguments(p)
    p.set_defaults(func=_check)


def _check(args) -> int:
    data = load_config(args.config, args.input, args.output, args.set)
    known = bool(data["input"]) and _inputs_exist(data["input"])
    if not data["input"]:
        data["input"] = [{"path": RUN_TIME_INPUT}]
    job = parse(JobConfig, data)
    if not known:
        print(f"sluice: note: input {', '.join(s.path for s in job.input)} not readable now: "
              "the chain is checked from the stages alone")
    for note in check_job(job, sample_input=known):
        print(f"sluice: note: {note}")
    names = ", ".join(next(iter(s)) for s in job.stages) or "ingest only"
    print(f"sluice: {args.config}: ok ({len(job.stages)} stage(s): {names})")
    return 0


def _inputs_exist(specs: list[dict]) -> bool:
    try:
        expand_inputs([parse(InputSpec, spec) for spec in specs])
    except ConfigError:  # a glob that matches nothing yet (an earlier job's output, say)
        return False
    return True
