"""`sluice decontaminate INPUT... --eval NAME=PATH[:FIELD] ... --output DIR [--rule any|fraction]
[--ngram N] [--threshold T] [--action drop|redact]`: remove evaluation-set items from a corpus.

A job whose only stage is `decontaminate` (transforms/decontam/stage.py): the usual outputs
(documents, dead_letter, manifest.json, stats.json) plus `decontamination.json`. FIELD is the
item's text field (default `text`) or a template of fields, `"{question} {choices}"`.
"""
from __future__ import annotations

from pipelines.job import load_config, run_job, set_dotted
from transforms.core.config import ConfigError


def eval_spec(spec: str) -> dict:
    """`NAME=PATH[:FIELD]` -> an eval set entry. FIELD holding `{` is a template. A `:` belongs
    to the path when what follows it holds a `/` (`gs://bucket/x.jsonl`)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--eval expects NAME=PATH[:FIELD], got '{spec}'")
    path, field = rest, "text"
    head, colon, tail = rest.rpartition(":")
    if colon and head and tail and "/" not in tail and "\\" not in tail:
        path, field = head, tail
    entry = {"name": name, "path": path}
    entry["template" if "{" in field else "text_field"] = field
    return entry


def register(subparsers) -> None:
    p = subparsers.add_parser("decontaminate", help="drop or redact documents that contain "
                              "evaluation-set items (n-gram overlap)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input glob(s)")
    p.add_argument("--eval", action="append", required=True, metavar="NAME=PATH[:FIELD]",
                   help="an eval set: JSONL/Parquet glob and its text field or a template of "
                   "fields, e.g. humaneval=HumanEval.jsonl.gz:prompt (repeatable)")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--rule", choices=["any", "fraction"],
                   help="any: one shared n-gram (GPT-3, default); fraction: word coverage of "
                   ">= --threshold (TULU 3)")
    p.add_argument("--ngram", type=int, help="n-gram length in words (13 for any, 8 for fraction)")
    p.add_argument("--threshold", type=float, help="coverage for --rule fraction (0.5)")
    p.add_argument("--action", choices=["drop", "redact"], help="drop the document (default) or "
                   "cut the overlapping spans")
    p.add_argument("--config", metavar="YAML", help="job config for ingest/sink/other settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config value, e.g. stages.0.decontaminate.replacement=' '")
    p.set_defaults(func=_run)


def _run(args) -> int:
    params = {"eval_sets": [eval_spec(s) for s in args.eval], "rule": args.rule,
              "ngram": args.ngram, "threshold": args.threshold, "action": args.action}
    data = load_config(args.config, args.inputs, args.output)
    data["stages"] = [{"decontaminate": {k: v for k, v in params.items() if v is not None}}]
    for assignment in args.set:
        set_dotted(data, assignment)
    run_job(data, args.beam_args)
    return 0
