"""`sluice refresh` and `sluice corpus log|diff`: fold a new crawl snapshot into a versioned corpus.

A refresh runs the config's stages on the new input only, with its `dedup` stage reading the
corpus's dedup index (so new documents that duplicate any committed version are dropped as
`duplicate_of_index`), writes the survivors to its own attempt folder, commits them as version
N+1, then adds the survivors' keys to the index and regenerates the corpus report. Steps, and what
a crash at each leaves (pipelines/corpus.py describes the layout and the commit):

1. the job writes `versions/<attempt>/`   crash: named by no commit, so invisible; the next
                                          local refresh deletes it and redoes the work
2. `commits/N+1.json` is created only if  crash after: the re-run sees the same refresh key
   absent (the commit), corpus.json       and rolls 2-4 forward; a loser (N+1 exists) deletes
   rebuilt from commits/                  its own attempt folder and fails (CorpusLocked)
3. index entries of N+1 are added         (idempotent, keyed by version)
4. the report is rewritten
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import sys
from dataclasses import dataclass
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from pipelines.corpus import INDEX, VERSIONS, Corpus, CorpusLocked, Version, diff, new_attempt_id
from pipelines.job import config_hash, load_config, run_job
from transforms.cleaning.line_dedup import INDEX_UPDATE as LINE_INDEX_UPDATE
from transforms.cleaning.line_dedup import LineDedupConfig
from transforms.cleaning.line_dedup import commit_index as commit_line_index
from transforms.core.config import ConfigError, parse
from transforms.core.extras import require
from transforms.core.files import check_exclusive_create
from transforms.dedup.index import commit as commit_index
from transforms.dedup.stage import DedupConfig

INDEX_UPDATE = "index_update"
LINE_INDEX = "line_index"  # the line_dedup index of committed versions


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


def _with_corpus_index(data: dict, corpus: Corpus
                       ) -> tuple[dict, DedupConfig, Optional[LineDedupConfig]]:
    """The config with the corpus's indexes: documents (`dedup`) and, with a `line_dedup`
    stage, lines, so lines already in the committed corpus count as seen."""
    data = copy.deepcopy(data)
    position, params = _dedup_entry(data["stages"])
    params = dict(params, index=corpus.path(INDEX), write_index=True)
    data["stages"][position] = {"dedup": params}
    dedup = parse(DedupConfig, params, where=f"stages.{position}.dedup")
    lines = None
    for position, entry in enumerate(data["stages"]):
        if isinstance(entry, dict) and "line_dedup" in entry:
            line_params = dict(entry["line_dedup"] or {}, index=corpus.path(LINE_INDEX),
                               write_index=True)
            data["stages"][position] = {"line_dedup": line_params}
            lines = parse(LineDedupConfig, line_params, where=f"stages.{position}.line_dedup")
    return data, dedup, lines


def _finish(corpus: Corpus, version: Version, dedup: DedupConfig,
            lines: Optional[LineDedupConfig], mixture: MixtureReport, log) -> None:
    """Steps 4-5 for a committed version; safe to repeat."""
    # the reports need the `mixture` extra (matplotlib), checked by `refresh` before it starts
    from pipelines.corpus_report import write_corpus_report

    corpus.sync()  # corpus.json lists every commit, also after a crash right after one
    update = FileSystems.join(corpus.version_dir(version), INDEX_UPDATE)
    if FileSystems.exists(update):
        commit_index(update, corpus.path(INDEX), dedup.sketch_params(),
                     update_id=f"version-{version.name}")
    update = FileSystems.join(corpus.version_dir(version), LINE_INDEX_UPDATE)
    if lines is not None and FileSystems.exists(update):
        commit_line_index(update, corpus.path(LINE_INDEX), lines,
                          update_id=f"version-{version.name}")
    log(f"sluice: report {write_corpus_report(corpus)}")
    if mixture.model:
        from pipelines.report import write_mixture_report

        manifests = [FileSystems.join(corpus.version_dir(v), "manifest.json")
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
    # the reports of step 5: checked first, so a missing extra stops nothing half-way
    require("mixture", "matplotlib", *(["lightgbm"] if mixture.model else []),
            by="command 'refresh' (its reports)")
    corpus = Corpus(root)
    check_exclusive_create(root)
    data = load_config(config_path, inputs=inputs, sets=sets)
    key, user_config_hash = refresh_key(data), config_hash({k: v for k, v in data.items()
                                                           if k != "output"})
    data, dedup, lines = _with_corpus_index(data, corpus)
    with corpus.lock() as alone:
        if alone:  # local, lock held: what killed refreshes left is nobody's
            corpus.remove_orphans()
        head = corpus.head()
        if head:
            _finish(corpus, head, dedup, lines, mixture, log)  # roll forward a refresh that crashed after commit
            if head.refresh_key == key:
                log(f"sluice: these inputs and config are already version {head.version}")
                return head
        number = (head.version if head else 0) + 1
        attempt = new_attempt_id()  # the version's folder: no other attempt can write it
        data["output"] = corpus.attempt_dir(attempt)
        committing = False
        try:
            stats = run_job(data, beam_args or [], log=log)
            with FileSystems.open(FileSystems.join(data["output"], "manifest.json")) as f:
                manifest = json.loads(f.read())
            version = Version(
                version=number, docs=stats["kept"], tokens=manifest["totals"]["tokens"],
                created=dt.datetime.now(dt.timezone.utc).isoformat(), inputs=list(inputs),
                config_hash=user_config_hash,
                refresh_key=key, sources=manifest["sources"], stats=stats,
                folder=f"{VERSIONS}/{attempt}")
            committing = True
            corpus.commit(version, head.version if head else 0)
        except CorpusLocked as exc:  # another attempt committed version `number`: ours is void
            corpus.remove_attempt(attempt)
            raise CorpusLocked(f"{exc} (its folder {data['output']} is removed)") from None
        except BaseException:
            if not committing:  # once the commit was tried, a folder it may name is kept
                corpus.remove_attempt(attempt)
            raise
        log(f"sluice: committed version {number} ({version.docs:,} documents)")
        _finish(corpus, version, dedup, lines, mixture, log)
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
