"""The `sluice` command line. Each subcommand lives in its own module with `register(subparsers)`.

Arguments a subcommand does not know are passed to Beam as pipeline options
(`--runner DataflowRunner --project ...`, `--direct_num_workers 4`) if Beam knows them; any
other argument is an error naming it. User errors (config, output folder) are one line on
stderr and exit status 2, not a traceback.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import sys

import yaml

from classifiers import ModelError
from pipelines.worker import exit_now
from transforms.core.config import ConfigError

# Subcommand -> the module that registers it (`register(subparsers)`), in help order. Only the
# chosen command's module is imported, so `sluice run` does not pay for scipy or torch imports.
COMMANDS = {
    "run": "pipelines.run",
    "check": "pipelines.check",
    "refresh": "pipelines.refresh",
    "corpus": "pipelines.refresh",
    "dedup": "pipelines.dedup",
    "decontaminate": "pipelines.decontaminate",
    "profile": "pipelines.profile",
    "quality": "pipelines.quality",
    "rephrase": "pipelines.rephrase",
    "select": "pipelines.select",
    "mixture": "pipelines.mixture",
    "tokenize": "pipelines.tokenize",
}


def parser(command: str | None = None) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sluice", description="Curate LLM pretraining corpora "
                                  "on Apache Beam. Unknown options go to Beam.")
    subparsers = top.add_subparsers(dest="command", required=True)
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(module).register(subparsers)
    return top


def beam_option_parser() -> argparse.ArgumentParser:
    """A parser of every pipeline option Beam registers, as `PipelineOptions.get_all_options`
    builds it (no abbreviations)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    # Sluice's own: turns Beam's construction-time type check back on (pipelines.job)
    parser.add_argument("--pipeline_type_check", action="store_true")
    return parser


def unknown_argument(command: argparse.ArgumentParser, beam_args: list[str]) -> str | None:
    """An error for the first argument neither the command nor Beam knows, with the closest
    known option; None if there is none."""
    if not beam_args:
        return None
    beam = beam_option_parser()
    _, unknown = beam.parse_known_args(beam_args)
    if not unknown:
        return None
    arg = unknown[0]
    if not arg.startswith("-"):
        return f"unexpected argument '{arg}'"
    flag = arg.split("=", 1)[0]
    known = [o for o in (*command._option_string_actions, *beam._option_string_actions)
             if o.startswith("--")]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    return f"unknown option '{flag}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = parser(argv[0] if argv else None)
    args, beam_args = top.parse_known_args(argv)
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    problem = unknown_argument(commands.choices[args.command], beam_args)
    if problem:
        print(f"sluice {args.command}: {problem}", file=sys.stderr)
        return 2
    args.beam_args = beam_args
    try:
        return args.func(args) or 0
    except (ConfigError, ModelError, yaml.YAMLError, OSError) as exc:
        # OSError: the config or output unreadable, not writable, full, or locked by another run
        print(f"sluice: {exc}", file=sys.stderr)
        return 2


def console() -> None:
    """The `sluice` command: `main`, then an exit without interpreter teardown (~1 s with Beam's
    ~3,000 modules loaded), as the local workers do. Every output is written and closed by then;
    an exception still leaves the normal way."""
    exit_now(main())


if __name__ == "__main__":
    console()
