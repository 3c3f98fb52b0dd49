"""`sluice profile OUTPUT_DIR [--output DIR] [--no-html]`: what a committed run's output holds.

Reads the output folder of a run (`documents/`, `dead_letter/`, `clusters/`, `manifest.json`,
`stats.json`, `decontamination.json`) shard by shard and record batch by record batch, so memory
holds one batch and fixed-size histograms, never a shard's column or the corpus (the exception:
8 bytes per clustered document, to count cluster sizes). Writes `profile.json` always and
`profile.html` (a self-contained page like the mixture report: CSS inline, matplotlib figures as
base64 PNG) when matplotlib is installed (the `mixture` extra); see docs/profile.md.

- documents, characters and tokens (ASCII-whitespace tokens, as in manifests) per source;
- length histograms (tokens and characters per document, power-of-two bins) overall and per source;
- language distribution (the `language` column, when present);
- score distributions: every numeric column (min, max, mean, nulls, a 30-bin histogram; a
  second pass reads only those columns);
- drops and failures by stage and reason, in documents, and in tokens where the dead-letter
  payload holds the whole document (`payload_truncated` false and a JSON object with `text`);
- dedup cluster sizes (`clusters/`: this run's documents that have a duplicate);
- contamination (`decontamination.json`, when the run had a `decontaminate` stage).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterator, Optional

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from apache_beam.io.filesystems import FileSystems

from transforms.core.columns import LANGUAGE
from transforms.core.config import ConfigError
from transforms.core.documents import ID, SOURCE, TEXT
from transforms.core.extras import missing
from transforms.core.files import read_arrow_batches, read_json, write_json_atomic
from transforms.io.sink import whitespace_tokens

PROFILE_JSON, PROFILE_HTML = "profile.json", "profile.html"
LENGTH_EDGES = np.array([0] + [2 ** k for k in range(0, 32)], dtype=np.int64)  # [0,1) [1,2) [2,4)
SCORE_BINS = 30
TOP_LANGUAGES = 50


# --- reading the output folder --------------------------------------------------------------------

def _files(folder: str) -> list[str]:
    try:
        found = FileSystems.match([FileSystems.join(folder, "*.arrow")])[0].metadata_list
    except Exception:  # noqa: BLE001  a missing folder on some filesystems
        return []
    return sorted(m.path for m in found)


def _batches(path: str, columns: Optional[list[str]] = None) -> Iterator[pa.RecordBatch]:
    """One shard's record batches, only `columns` (those present); local files are memory-mapped
    and only the wanted columns decompressed."""
    if "://" not in path:
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_file(source)
            names = reader.schema.names
            wanted = [names.index(c) for c in columns if c in names] if columns else None
            if wanted is not None:
                reader = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(
                    included_fields=wanted))
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
        return
    for batch in read_arrow_batches(path):
        if columns:
            batch = batch.select([c for c in columns if c in batch.schema.names])
        yield batch


def _schema(files: list[str]) -> pa.Schema:
    if not files:
        return pa.schema([])
    if "://" not in files[0]:
        with pa.memory_map(files[0]) as source:
            return pa.ipc.open_file(source).schema
    return next(read_arrow_batches(files[0])).schema


def _read_json(folder: str, name: str):
    path = FileSystems.join(folder, name)
    return read_json(path) if FileSystems.exists(path) else None


def _numeric(field: pa.Field) -> bool:
    return (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)) and \
        field.name not in (ID,)


def _length_histogram(values: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(LENGTH_EDGES, values, side="right") - 1,
                       minlength=len(LENGTH_EDGES))[: len(LENGTH_EDGES)]


# --- the profile ----------------------------------------------------------------------------------

def profile(folder: str) -> dict:
    """The profile of a committed output folder (module docstring); raises ConfigError when it
    is not one."""
    manifest, stats = _read_json(folder, "manifest.json"), _read_json(folder, "stats.json")
    documents = _files(FileSystems.join(folder, "documents"))
    if manifest is None and not documents:
        raise ConfigError(f"'{folder}' is not the output of a Sluice run (no manifest.json, no "
                          "documents/*.arrow)")
    result = {"output": folder, "stats": stats,
              "config": (manifest or {}).get("config"),
              "finished": (manifest or {}).get("finished")}
    result.update(_documents(documents))
    result["drops"] = _dead_letter(_files(FileSystems.join(folder, "dead_letter")))
    result["clusters"] = _clusters(_files(FileSystems.join(folder, "clusters")))
    result["contamination"] = _read_json(folder, "decontamination.json")
    return result


def _documents(files: list[str]) -> dict:
    schema = _schema(files)
    numeric = [f.name for f in schema if _numeric(f)]
    has_language = LANGUAGE in schema.names and not _numeric(schema.field(LANGUAGE))
    sources: dict[str, dict] = defaultdict(lambda: {
        "documents": 0, "tokens": 0, "chars": 0,
        "token_histogram": np.zeros(len(LENGTH_EDGES), np.int64),
        "char_histogram": np.zeros(len(LENGTH_EDGES), np.int64)})
    languages: Counter = Counter()
    scores = {c: {"count": 0, "nulls": 0, "sum": 0.0, "min": np.inf, "max": -np.inf}
              for c in numeric}
    columns = [TEXT, SOURCE] + ([LANGUAGE] if has_language else []) + numeric
    for path in files:
        for batch in _batches(path, columns):
            names = batch.schema.names
            n = batch.num_rows
            if TEXT in names:
                text = batch.column(TEXT)
                tokens = np.asarray(whitespace_tokens(text).fill_null(0), dtype=np.int64)
                chars = np.asarray(pc.utf8_length(text).fill_null(0), dtype=np.int64)
            else:
                tokens = chars = np.zeros(n, np.int64)
            source = (np.asarray(batch.column(SOURCE).fill_null("").to_pylist(), dtype=object)
                      if SOURCE in names else np.full(n, "", dtype=object))
            for name in np.unique(source.astype(str)) if n else []:
                rows = source == name
                entry = sources[str(name)]
                entry["documents"] += int(rows.sum())
                entry["tokens"] += int(tokens[rows].sum())
                entry["chars"] += int(chars[rows].sum())
                entry["token_histogram"] += _length_histogram(tokens[rows])
                entry["char_histogram"] += _length_histogram(chars[rows])
            if has_language and LANGUAGE in names:
                counts = pc.value_counts(batch.column(LANGUAGE).fill_null("(none)").cast(
                    pa.string()))
                languages.update(dict(zip(counts.field("values").to_pylist(),
                                          counts.field("counts").to_pylist())))
            for column in numeric:
                if column not in names:
                    scores[column]["nulls"] += n
                    continue
                values = batch.column(column)
                entry = scores[column]
                entry["nulls"] += values.null_count
                valid = np.asarray(values.drop_null(), dtype=np.float64)
                valid = valid[np.isfinite(valid)]
                if len(valid):
                    entry["count"] += len(valid)
                    entry["sum"] += float(valid.sum())
                    entry["min"] = min(entry["min"], float(valid.min()))
                    entry["max"] = max(entry["max"], float(valid.max()))
    # second pass, score columns only: histograms between each column's min and max
    edges = {c: np.linspace(s["min"], s["max"] if s["max"] > s["min"] else s["min"] + 1.0,
                            SCORE_BINS + 1) for c, s in scores.items() if s["count"]}
    histograms = {c: np.zeros(SCORE_BINS, np.int64) for c in edges}
    if edges:
        for path in files:
            for batch in _batches(path, list(edges)):
                for column in edges:
                    if column in batch.schema.names:
                        valid = np.asarray(batch.column(column).drop_null(), dtype=np.float64)
                        histograms[column] += np.histogram(valid[np.isfinite(valid)],
                                                           bins=edges[column])[0]
    total = {"documents": sum(s["documents"] for s in sources.values()),
             "tokens": sum(s["tokens"] for s in sources.values()),
             "chars": sum(s["chars"] for s in sources.values())}
    token_hist = sum((s["token_histogram"] for s in sources.values()),
                     np.zeros(len(LENGTH_EDGES), np.int64))
    char_hist = sum((s["char_histogram"] for s in sources.values()),
                    np.zeros(len(LENGTH_EDGES), np.int64))
    top = languages.most_common(TOP_LANGUAGES)
    rest = sum(languages.values()) - sum(n for _, n in top)
    return {
        "documents": total,
        "columns": schema.names,
        "sources": {name: {"documents": s["documents"], "tokens": s["tokens"],
                           "chars": s["chars"],
                           "token_histogram": s["token_histogram"].tolist(),
                           "char_histogram": s["char_histogram"].tolist()}
                    for name, s in sorted(sources.items())},
        "length_bins": LENGTH_EDGES.tolist(),
        "token_histogram": token_hist.tolist(),
        "char_histogram": char_hist.tolist(),
        "languages": (dict(top) | ({"(other)": rest} if rest else {})) if has_language else None,
        "scores": {c: {"count": s["count"], "nulls": s["nulls"],
                       "mean": s["sum"] / s["count"] if s["count"] else None,
                       "min": s["min"] if s["count"] else None,
                       "max": s["max"] if s["count"] else None,
                       "bin_edges": edges[c].tolist() if c in edges else [],
                       "histogram": histograms[c].tolist() if c in edges else []}
                   for c, s in scores.items()},
    }


def _dead_letter(files: list[str]) -> dict:
    """{stage: {reason: {kind, documents, tokens, tokens_unknown}}}: tokens of the rejects whose
    payload is the whole document as a JSON object with `text`; `tokens_unknown` counts the
    others (truncated payloads, unreadable records)."""
    drops: dict = defaultdict(dict)
    columns = ["stage", "kind", "reason", "payload", "payload_truncated"]
    for path in files:
        for batch in _batches(path, columns):
            rows = batch.to_pydict()
            texts, keys, unknown = [], [], []
            for stage, kind, reason, payload, truncated in zip(
                    *(rows.get(c, [None] * batch.num_rows) for c in columns)):
                key = (stage or "ingest", reason or "", kind or "")
                text = None
                if not truncated and payload and kind == "dropped":
                    try:
                        doc = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        doc = None
                    text = doc.get(TEXT) if isinstance(doc, dict) else None
                if isinstance(text, str):
                    texts.append(text)
                    keys.append(key)
                else:
                    unknown.append(key)
            tokens = (np.asarray(whitespace_tokens(pa.array(texts, pa.large_string())),
                                 dtype=np.int64) if texts else [])
            for key, n in zip(keys, tokens):
                _drop_entry(drops, key)["tokens"] += int(n)
                _drop_entry(drops, key)["documents"] += 1
            for key in unknown:
                _drop_entry(drops, key)["tokens_unknown"] += 1
                _drop_entry(drops, key)["documents"] += 1
    return {stage: dict(sorted(reasons.items())) for stage, reasons in sorted(drops.items())}


def _drop_entry(drops: dict, key: tuple) -> dict:
    stage, reason, kind = key
    return drops[stage].setdefault(reason, {"kind": kind, "documents": 0, "tokens": 0,
                                            "tokens_unknown": 0})


def _clusters(files: list[str]) -> Optional[dict]:
    """Cluster sizes of `clusters/` (rows `id`, `cluster_id`, `kept`): {size: clusters}."""
    if not files:
        return None
    keys, kept = [], 0
    for path in files:
        for batch in _batches(path, ["cluster_id", "kept"]):
            keys.append(np.fromiter((xxhash.xxh3_64_intdigest(c.encode("utf-8")) for c in
                                     batch.column("cluster_id").to_pylist()),
                                    dtype=np.uint64, count=batch.num_rows))
            if "kept" in batch.schema.names:
                kept += int(pc.sum(batch.column("kept").cast(pa.int64())).as_py() or 0)
    hashes = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    _, sizes = np.unique(hashes, return_counts=True)
    size, clusters = np.unique(sizes, return_counts=True)
    return {"clusters": int(len(sizes)), "documents": int(len(hashes)), "kept": kept,
            "largest": int(sizes.max()) if len(sizes) else 0,
            "sizes": {str(s): int(c) for s, c in zip(size.tolist(), clusters.tolist())}}


# --- writing ------------------------------------------------------------------------------------

def write_profile(folder: str, output: Optional[str] = None, html: Optional[bool] = None,
                  log=print) -> dict:
    """`profile.json` (always) and `profile.html` (when `html`, or by default when matplotlib is
    installed) into `output` (default: the output folder itself). Returns the profile."""
    output = output or folder
    data = profile(folder)
    write_json_atomic(FileSystems.join(output, PROFILE_JSON), data)
    written = [PROFILE_JSON]
    can_plot = not missing("matplotlib")
    if html is None:
        html = can_plot
        if not can_plot:
            log('sluice: profile.html needs matplotlib: pip install "sluice[mixture]"')
    if html:
        if not can_plot:
            raise ConfigError('profile.html needs matplotlib: pip install "sluice[mixture]"')
        render(data).write(FileSystems.join(output, PROFILE_HTML))
        written.append(PROFILE_HTML)
    log(f"sluice: profile of {data['documents']['documents']:,} documents -> "
        f"{', '.join(FileSystems.join(output, w) for w in written)}")
    return data


# --- the HTML page (matplotlib: the `mixture` extra) --------------------------------------------

def _bin_label(k: int) -> str:
    low = int(LENGTH_EDGES[k])
    return "0" if low == 0 else (f"{low:,}" if low < 1024 else f"{low // 1024:,}k"
                                 if low < 2**20 else f"{low // 2**20:,}M")


def _length_figure(data: dict, key: str, xlabel: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3.8))
    ax = figure.add_subplot(1, 1, 1)
    series = {"all": np.asarray(data[key])} | {
        name: np.asarray(s[key]) for name, s in data["sources"].items()}
    used = np.flatnonzero(sum(series.values()))
    low, high = (int(used.min()), int(used.max()) + 1) if len(used) else (0, 1)
    x = np.arange(low, high)
    for name, counts in series.items():
        ax.step(x, counts[low:high], where="mid", label=name,
                linewidth=2.0 if name == "all" else 1.2)
    ax.set_xticks(x)
    ax.set_xticklabels([_bin_label(k) for k in x], rotation=45, fontsize=7)
    ax.set_xlabel(xlabel + " (bin start; each bin doubles)")
    ax.set_ylabel("documents")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _bar_figure(labels: list[str], values: list[float], xlabel: str, color: str = "#2f6db5"):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 0.32 * len(labels) + 1.2))
    ax = figure.add_subplot(1, 1, 1)
    ax.barh(range(len(labels)), values, color=color)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def _scores_figure(scores: dict):
    from matplotlib.figure import Figure

    columns = min(3, len(scores))
    rows = -(-len(scores) // columns)
    figure = Figure(figsize=(3.7 * columns, 2.8 * rows))
    for k, (name, s) in enumerate(scores.items()):
        ax = figure.add_subplot(rows, columns, k + 1)
        edges = np.asarray(s["bin_edges"])
        ax.bar(edges[:-1], s["histogram"], width=np.diff(edges), align="edge",
               color="#2f6db5", edgecolor="white", linewidth=0.3)
        ax.set_title(f"{name} (mean {s['mean']:.4g})", fontsize=9)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    return figure


def render(data: dict):
    """The profile as an `HtmlReport` (pipelines/report.py)."""
    from pipelines.report import HtmlReport

    docs = data["documents"]
    report = HtmlReport("Sluice corpus profile", f"{data['output']} · {docs['documents']:,} "
                        f"documents · {docs['tokens']:,} tokens · {docs['chars']:,} characters"
                        + (f" · finished {data['finished']}" if data.get("finished") else ""))
    stats = data.get("stats")
    report.heading("Accounting")
    if stats:
        dropped = sum(stats["dropped"].values())
        report.paragraph(f"input {stats['input']:,} = kept {stats['kept']:,} + dropped "
                         f"{dropped:,} + failed {stats['failed']:,}"
                         + ("" if stats.get("balanced", True) else " (does not balance)"))
    else:
        report.note("No stats.json in this folder.")
    stages = [next(iter(s)) for s in ((data.get("config") or {}).get("stages") or [])]
    report.paragraph("Stages: " + (", ".join(stages) if stages else "none (ingest only)") + ".")

    report.heading("Sources")
    rows = [[name, s["documents"], s["tokens"], s["chars"],
             s["tokens"] / s["documents"] if s["documents"] else 0.0,
             s["tokens"] / docs["tokens"] if docs["tokens"] else 0.0]
            for name, s in data["sources"].items()]
    report.table(["source", "documents", "tokens", "characters", "tokens / document",
                  "token share"], rows)
    if rows:
        report.figure(_bar_figure([r[0] for r in rows], [r[2] for r in rows], "tokens"),
                      "Tokens per source (ASCII-whitespace tokens, as in manifest.json).")

    report.heading("Document lengths")
    if docs["documents"]:
        report.figure(_length_figure(data, "token_histogram", "tokens per document"),
                      "Tokens per document, overall and per source (power-of-two bins).")
        report.figure(_length_figure(data, "char_histogram", "characters per document"),
                      "Characters per document, overall and per source.")
    else:
        report.note("No documents were kept.")

    report.heading("Languages")
    if data.get("languages"):
        langs = data["languages"]
        total = sum(langs.values())
        report.table(["language", "documents", "share"],
                     [[k, v, v / total] for k, v in langs.items()])
        top = list(langs.items())[:20]
        report.figure(_bar_figure([k for k, _ in top], [v for _, v in top], "documents"),
                      "Documents per language (the langid stage's `language`).")
    else:
        report.paragraph("No `language` column (run the `langid` stage to get one).")

    report.heading("Scores")
    scores = {c: s for c, s in data["scores"].items() if s["count"]}
    if scores:
        report.table(["column", "values", "nulls", "min", "mean", "max"],
                     [[c, s["count"], s["nulls"], float(s["min"]), float(s["mean"]),
                       float(s["max"])] for c, s in data["scores"].items() if s["count"]])
        report.figure(_scores_figure(scores), "Distribution of every numeric column "
                      "(30 bins between its min and max).")
    else:
        report.paragraph("No numeric column.")

    report.heading("Drops and failures by stage and reason")
    drop_rows = [[stage, reason, e["kind"], e["documents"], e["tokens"], e["tokens_unknown"]]
                 for stage, reasons in data["drops"].items() for reason, e in reasons.items()]
    if drop_rows:
        report.table(["stage", "reason", "kind", "documents", "tokens (whole payloads)",
                      "documents without token count"], drop_rows)
        report.figure(_bar_figure([f"{r[0]}: {r[1]}" for r in drop_rows],
                                  [r[3] for r in drop_rows], "documents", "#d62728"),
                      "Rejected documents by stage and reason (dead_letter/).")
    else:
        report.paragraph("Nothing was dropped or failed.")

    report.heading("Dedup clusters")
    clusters = data.get("clusters")
    if clusters:
        report.paragraph(f"{clusters['clusters']:,} clusters hold {clusters['documents']:,} "
                         f"documents of this run ({clusters['kept']:,} kept, one per cluster "
                         f"unless it holds an index document); the largest has "
                         f"{clusters['largest']:,}.")
        sizes = list(clusters["sizes"].items())
        report.table(["cluster size", "clusters"], [[s, n] for s, n in sizes])
        report.figure(_bar_figure([s for s, _ in sizes[:30]], [n for _, n in sizes[:30]],
                                  "clusters", "#7a5195"), "Clusters by size (clusters/).")
    else:
        report.paragraph("No clusters/ output (no dedup stage, or no duplicates).")

    report.heading("Contamination")
    contamination = data.get("contamination")
    if contamination:
        c = contamination["config"]
        report.paragraph(f"Rule {c['rule']}, {c['ngram']}-grams"
                         + (f", coverage >= {c['threshold']}" if c.get("threshold") else "")
                         + f", action {c['action']}. Normalisation: {c['normalisation']}.")
        rows = []
        for name, e in contamination["eval_sets"].items():
            rows.append([name, e["items"], e["items_found"], e["documents_affected"],
                         ", ".join(f"{s}: {v['documents_affected']}"
                                   for s, v in e["by_source"].items()) or "-"])
        report.table(["eval set", "items", "items found", "documents affected",
                      "documents by source"], rows)
    else:
        report.paragraph("No decontamination.json (no decontaminate stage in this run).")
    return report


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="profile a run's output: sources, lengths, "
                              "languages, scores, drops, clusters, contamination (JSON + HTML)")
    p.add_argument("folder", metavar="OUTPUT_DIR", help="a committed run's output folder")
    p.add_argument("--output", metavar="DIR", help="where profile.json/.html go (default: "
                   "OUTPUT_DIR)")
    p.add_argument("--no-html", action="store_true", help="profile.json only")
    p.set_defaults(func=_run)


def _run(args) -> int:
    write_profile(args.folder, args.output, False if args.no_html else None)
    return 0

