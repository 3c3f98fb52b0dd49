"""The `sluice` command line. Each subcommand lives in its own module with `register(subparsers)`.

Arguments a subcommand does not know are passed to Beam as pipeline options
(`--runner DataflowRunner --project ...`, `--direct_num_workers 4`).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from classifiers import ModelError
from pipelines.worker import exit_now
from transforms.core.config import ConfigError

# Subcommand -> the module that registers it (`register(subparsers)`), in help order. Only the
# chosen command's module is imported, so `sluice run` does not pay for scipy or torch imports.
COMMANDS = {
    "run": "pipelines.run",
    "refresh": "pipelines.refresh",
    "corpus": "pipelines.refresh",
    "dedup": "pipelines.dedup",
    "quality": "pipelines.quality",
    "rephrase": "pipelines.rephrase",
    "select": "pipelines.select",
    "mixture": "pipelines.mixture",
}


def parser(command: str | None = None) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sluice", description="Curate LLM pretraining corpora "
                                  "on Apache Beam. Unknown options go to Beam.")
    subparsers = top.add_subparsers(dest="command", required=True)
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(module).register(subparsers)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, beam_args = parser(argv[0] if argv else None).parse_known_args(argv)
    args.beam_args = beam_args
    try:
        return args.func(args) or 0
    except (ConfigError, ModelError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2


def console() -> None:
    """The `sluice` command: `main`, then an exit without interpreter teardown (~1 s with Beam's
    ~3,000 modules loaded), as the local workers do. Every output is written and closed by then;
    an exception still leaves the normal way."""
    exit_now(main())


if __name__ == "__main__":
    console()
