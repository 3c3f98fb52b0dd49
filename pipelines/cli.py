"""The `sluice` command line. Each subcommand lives in its own module with `register(subparsers)`.

Arguments a subcommand does not know are passed to Beam as pipeline options
(`--runner DataflowRunner --project ...`, `--direct_num_workers 4`).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from transforms.config import ConfigError

# Subcommand modules, in help order; each defines register(subparsers).
COMMANDS = [
    "pipelines.run",
    "pipelines.refresh",
    "pipelines.mixture",
    "pipelines.select",
    "pipelines.dedup",
    "pipelines.rephrase",
    "pipelines.quality",
]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sluice", description="Curate LLM pretraining corpora "
                                  "on Apache Beam. Unknown options go to Beam.")
    subparsers = top.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return top


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parser().parse_known_args(argv)
    args.beam_args = beam_args
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
