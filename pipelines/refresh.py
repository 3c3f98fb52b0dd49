"""`sluice refresh` and `sluice corpus log|diff`: fold a new crawl snapshot into a versioned corpus.

A refresh runs the config's stages on the new input only, with its `dedup` stage reading the
corpus's dedup index (so new documents that duplicate any committed version are dropped as
`duplicate_of_index`), writes the survivors as version N+1, commits, then adds the survivors'
keys to the index and regenerates the corpus report. Steps, and what a crash at each leaves:

1. the job writes `.work/N+1/`            crash: nothing visible; the re-run redoes it
2. `.work/N+1` moves to `versions/N+1`    crash: not in corpus.json; the re-run redoes it
3. corpus.json lists N+1 (the commit)     crash after: the re-run sees the same refresh key
4. index entries of N+1 are added         (idempotent, keyed by version) and rolls 4-5 forward
5. the report is rewritten
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
import sys
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from pipelines.corpus import Corpus, CorpusLocked, Version, diff
from pipelines.corpus_report import write_corpus_report
from pipelines.job import config_hash, load_config, run_job
from pipelines.report import write_mixture_report
from transforms.core.config import ConfigError, parse
from transforms.dedup.index import commit as commit_index
from transforms.dedup.stage import DedupConfig

INDEX_UPDATE = "index_update"


def refresh_key(data: dict) -> str:
    """Identifies a refresh by its config (less the output) and its input files' names, sizes
    and modification times, so re-running a committed refresh is recognised as done."""
    files = []
    for spec in data["input"]:
        for meta in FileSystems.match([spec["path"]])[0].metadata_list:
            files.append((meta.path, meta.size_in_bytes, meta.last_updated_in_seconds))
    config = {k: v for k, v in data.items() if k != "output"}
    return hashlib.sha256(json.dumps([config, sorted(files)], sort_keys=True,
                                     default=str).encode()).hexdigest()


def _dedup_entry(stages: list) -> tuple[int, dict]:
    for position, entry in enumerate(stages):
        if isinstance(entry, dict) and "dedup" in entry:
            return position, entry["dedup"] or {}
    raise ConfigError("a refresh config needs a 'dedup' stage: it is what keeps the new "
                      "version from repeating the corpus")


def _with_corpus_index(data: dict, corpus: Corpus) -> tuple[dict, DedupConfig]:
    data = copy.deepcopy(data)
    position, params = _dedup_entry(data["stages"])
    params = dict(params, index=corpus.path("index"), write_index=True)
    data["stages"][position] = {"dedup": params}
    return data, parse(DedupConfig, params, where=f"stages.{position}.dedup")


def _move_tree(source: str, target: str) -> None:
    """Move a folder; on object stores, where folders are only name prefixes, file by file."""
    if FileSystems.exists(target):
        FileSystems.delete([target])
    if "://" not in source:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        FileSystems.rename([source], [target])
        return
    paths = sorted(m.path for m in
                   FileSystems.match([FileSystems.join(source, "**")])[0].metadata_list)
    FileSystems.rename(paths, [target + p[len(source):] for p in paths])


def _finish(corpus: Corpus, version: Version, dedup: DedupConfig, mixture: MixtureReport,
            log) -> None:
    """Steps 4-5 for a committed version; safe to repeat."""
    update = FileSystems.join(corpus.version_dir(version.version), INDEX_UPDATE)
    if FileSystems.exists(update):
        commit_index(update, corpus.path("index"), dedup.sketch_params(),
                     update_id=f"version-{version.name}")
    log(f"sluice: report {write_corpus_report(corpus)}")
    if mixture.model:
        manifests = [FileSystems.join(corpus.version_dir(v.version), "manifest.json")
                     for v in corpus.versions()]
        path = write_mixture_report(mixture.model, domains=manifests, tokens=mixture.tokens,
                                    max_epochs=mixture.max_epochs)
        log(f"sluice: mixture report {path}")


@dataclass
class MixtureReport:
    """A fitted RegMix model (`sluice mixture fit`) whose report a refresh re-renders against the
    corpus's current token counts per source: budget, epochs and repeat-cap hits per domain."""

    model: str | None = None
    tokens: int | None = None
    max_epochs: float = 4.0


def refresh(root: str, config_path: str, inputs: list[str], sets: list[str] | None = None,
            beam_args: list[str] | None = None, log=print,
            mixture: MixtureReport = MixtureReport()) -> Version:
    corpus = Corpus(root)
    data = load_config(config_path, inputs=inputs, sets=sets)
    key, user_config_hash = refresh_key(data), config_hash({k: v for k, v in data.items()
                                                           if k != "output"})
    data, dedup = _with_corpus_index(data, corpus)
    with corpus.lock():
        head = corpus.head()
        if head:
            _finish(corpus, head, dedup, mixture, log)  # roll forward a refresh that crashed after commit
            if head.refresh_key == key:
                log(f"sluice: these inputs and config are already version {head.version}")
                return head
        number = (head.version if head else 0) + 1
        work = corpus.work_dir(number)
        if FileSystems.exists(work):
            FileSystems.delete([work])
        data["output"] = work
        stats = run_job(data, beam_args or [], log=log)
        with FileSystems.open(FileSystems.join(work, "manifest.json")) as f:
            manifest = json.loads(f.read())
        _move_tree(work, corpus.version_dir(number))
        version = Version(
            version=number, docs=stats["kept"], tokens=manifest["totals"]["tokens"],
            created=dt.datetime.now(dt.timezone.utc).isoformat(), inputs=list(inputs),
            config_hash=user_config_hash,
            refresh_key=key, sources=manifest["sources"], stats=stats)
        corpus.commit(version, head.version if head else 0)
        log(f"sluice: committed version {number} ({version.docs:,} documents)")
        _finish(corpus, version, dedup, mixture, log)
    return version


# --- commands -----------------------------------------------------------------------------------

def register(subparsers) -> None:
    p = subparsers.add_parser("refresh", help="fold new input into a versioned corpus")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="new input globs")
    p.add_argument("--corpus", required=True, metavar="DIR", help="the corpus folder")
    p.add_argument("--config", required=True, help="job config; must contain a dedup stage")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--mixture-model", metavar="DIR",
                   help="a `sluice mixture fit` folder whose report.html is re-rendered with the "
                        "corpus's token counts after each refresh")
    p.add_argument("--tokens", type=int, help="token budget for that report's epochs table")
    p.add_argument("--max-epochs", type=float, default=4.0)
    p.set_defaults(func=_refresh)

    corpus = subparsers.add_parser("corpus", help="inspect a versioned corpus")
    verbs = corpus.add_subparsers(dest="verb", required=True)
    log = verbs.add_parser("log", help="list the committed versions")
    log.add_argument("corpus", metavar="DIR")
    log.add_argument("--json", action="store_true")
    log.set_defaults(func=_log)
    changes = verbs.add_parser("diff", help="what versions after A up to B added")
    changes.add_argument("corpus", metavar="DIR")
    changes.add_argument("a", type=int)
    changes.add_argument("b", type=int)
    changes.set_defaults(func=_diff)


def _refresh(args) -> int:
    try:
        refresh(args.corpus, args.config, args.inputs, args.set, args.beam_args,
                mixture=MixtureReport(args.mixture_model, args.tokens, args.max_epochs))
    except CorpusLocked as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 3
    return 0


def _log(args) -> int:
    versions = Corpus(args.corpus).versions()
    if args.json:
        print(json.dumps([{"version": v.version, "docs": v.docs, "tokens": v.tokens,
                           "created": v.created, "input": v.inputs,
                           "config_hash": v.config_hash} for v in versions], indent=2))
        return 0
    print(f"{'version':>7}  {'docs':>10}  {'tokens':>12}  {'created':<32}  config    input")
    for v in versions:
        print(f"{v.version:>7}  {v.docs:>10,}  {v.tokens:>12,}  {v.created:<32}  "
              f"{v.config_hash[:8]}  {' '.join(v.inputs)}")
    return 0


def _diff(args) -> int:
    versions = {v.version: v for v in Corpus(args.corpus).versions()}
    for number in (args.a, args.b):
        if number and number not in versions:
            raise ConfigError(f"no version {number} in {args.corpus} (have {sorted(versions)})")
    if args.b <= args.a:
        raise ConfigError("diff A B needs A < B")
    between = [versions[n] for n in sorted(versions) if args.a < n <= args.b]
    print(json.dumps(diff(versions.get(args.a), versions[args.b], between), indent=2))
    return 0
