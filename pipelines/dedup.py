"""`sluice dedup INPUT... --output DIR [--threshold 0.8] [--ngram 5] [--num-perm N]
[--bands B --rows R] [--index DIR] [--update-index]`: exact + near-duplicate removal.

Runs a job whose only stage is `dedup` (transforms/dedup/stage.py), so the outputs are the usual ones
(documents, dead_letter, manifest.json, stats.json) plus `clusters/`. With `--update-index` the
survivors are added to the index after the job succeeded (transforms/dedup/index.py); a `sluice
run` job with a dedup stage that sets `write_index` does the same (`commit_index_update`).
"""
from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from pipelines.job import load_config, run_job, set_dotted
from transforms.core.config import parse
from transforms.dedup import index as dedup_index
from transforms.dedup.stage import DedupConfig


def register(subparsers) -> None:
    p = subparsers.add_parser("dedup", help="remove exact and near-duplicate documents")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input glob(s)")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--threshold", type=float, help="Jaccard similarity of duplicates (0.8)")
    p.add_argument("--ngram", type=int, help="shingle length in words (5) or characters")
    p.add_argument("--char", action="store_true", help="character n-grams instead of words")
    p.add_argument("--num-perm", type=int, help="MinHash permutations (256)")
    p.add_argument("--bands", type=int, help="LSH bands (default: chosen from the threshold)")
    p.add_argument("--rows", type=int, help="rows per band (with --bands)")
    p.add_argument("--no-verify", action="store_true",
                   help="cluster unverified LSH candidates (faster, chains dissimilar documents)")
    p.add_argument("--index", metavar="DIR", help="dedup against the index of an earlier corpus")
    p.add_argument("--update-index", action="store_true",
                   help="add this run's survivors to --index (created if missing)")
    p.add_argument("--config", metavar="YAML", help="job config for ingest/sink/other settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config value, e.g. stages.0.dedup.partitions=64")
    p.set_defaults(func=_run)


def _stage_params(args) -> dict:
    params = {"threshold": args.threshold, "ngram": args.ngram, "num_perm": args.num_perm,
              "bands": args.bands, "rows": args.rows, "index": args.index}
    params = {k: v for k, v in params.items() if v is not None}
    if args.char:
        params["shingle"] = "char"
    if args.no_verify:
        params["verify"] = False
    if args.update_index:
        params["write_index"] = True
    return params


def _run(args) -> int:
    data = load_config(args.config, args.inputs, args.output)
    data["stages"] = [{"dedup": _stage_params(args)}]
    for assignment in args.set:
        set_dotted(data, assignment)
    run_job(data, args.beam_args)
    commit_index_update(data)
    return 0


def commit_index_update(data: dict, log=print) -> None:
    """After a job succeeded: add the survivors its dedup stage wrote to `OUTPUT/index_update`
    to the stage's index, if the stage sets `write_index` (one stage at most can: the output
    is written once)."""
    for index, entry in enumerate(data.get("stages") or []):
        if "dedup" not in entry:
            continue
        config = parse(DedupConfig, entry["dedup"], where=f"stages.{index}.dedup")
        if config.write_index:
            added = dedup_index.commit(FileSystems.join(data["output"], "index_update"),
                                       config.index, config.sketch_params())
            log(f"sluice: added {added['documents']:,} documents to the index at {config.index} "
                f"({added['total_shards']} shards)")
