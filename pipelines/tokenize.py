"""`sluice tokenize INPUT... --tokenizer PATH --output DIR`: a one-stage `tokenize` job.

Writes Megatron-LM indexed datasets to `DIR/tokens/` (and/or tokenized Arrow to
`DIR/tokenized/` with `--format arrow|both`), with the documents, dead-letter, manifest and stats
of any job. `--config JOB.yaml` runs the job's stages first; `--set key=value` sets any
`tokenize` parameter (`--set shuffle.run_bytes=...`). See docs/tokens.md.
"""
from __future__ import annotations

import yaml

from pipelines.job import load_config, run_job


_UNSET = object()


def _token(value: str):
    """`--eos 2` is an id, `--eos '</s>'` a token, `--eos none` no EOS."""
    if value.lower() in ("none", "null"):
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="tokenize documents into Megatron-LM indexed "
                              "datasets (.bin/.idx) and/or tokenized Arrow")
    p.add_argument("input", nargs="+", help="input glob(s)")
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer.json, a transformers tokenizer folder, or a hub name")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--eos", type=_token, default=_UNSET, help="EOS token or id appended to every document "
                   "(default: the tokenizer's eos_token; 'none' for no EOS)")
    p.add_argument("--bos", type=_token, help="BOS token or id prepended (default none)")
    p.add_argument("--format", choices=["megatron", "arrow", "both"])
    p.add_argument("--shuffle-seed", type=int, help="shuffle documents across shards with "
                   "this seed (bounded memory)")
    p.add_argument("--shuffle-shards", type=int, help="number of shuffled shards (default 8)")
    p.add_argument("--config", help="a job YAML whose settings (ingest, sink, earlier stages) "
                   "the command extends")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any 'tokenize' stage parameter")
    p.set_defaults(func=_run)


def _run(args) -> int:
    params: dict = {"tokenizer": args.tokenizer}
    if args.eos is not _UNSET:
        params["eos"] = args.eos
    if args.bos is not None:
        params["bos"] = args.bos
    if args.format:
        params["format"] = args.format
    if args.shuffle_seed is not None or args.shuffle_shards is not None:
        params["shuffle"] = {k: v for k, v in (("seed", args.shuffle_seed),
                                               ("shards", args.shuffle_shards)) if v is not None}
    for assignment in args.set:
        key, _, raw = assignment.partition("=")
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(raw)
    data = load_config(args.config, args.input, args.output)
    data["stages"] = [*data.get("stages", []), {"tokenize": params}]
    run_job(data, args.beam_args)
    return 0
