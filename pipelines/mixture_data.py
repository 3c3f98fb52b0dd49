"""The data half of the mixture report: the schedule, tokens by licence, effective tokens.

Read from what `sluice mixture apply` wrote (`OUTPUT/manifest.json`, or `OUTPUT/schedule.json`
and `OUTPUT/phase-<k>/` for a scheduled mixture) and drawn into an `HtmlReport`
(`pipelines/report.py`).

Effective tokens. Repeated tokens are worth less than new ones: Muennighoff et al. 2023
("Scaling Data-Constrained Language Models", arXiv:2305.16264) fit the effective data of U unique
tokens seen 1 + R times as D' = U + U R* (1 - exp(-R / R*)), with R* ~ 15 (`R_STAR` = 15.4,
repetitions after which a repeated token has lost 1 - 1/e of its value). Per domain, U is the
tokens of the distinct documents written (first occurrence of each id: `mixture_copy` 0, and a
document written again by a later phase of a schedule counts once) and R = D / U - 1 for the D
tokens written. Chang et al. 2024 ("Scaling Parameter-Constrained Language Models with Quality
Data", arXiv:2410.03083) make effective training tokens depend on text quality too: text
diversity (a compression ratio) and syntheticity (measured with a teacher model). Their
combination's functional form and fitted constants are not reproduced here; the report shows
the two indicators beside the repetition-discounted tokens instead of folding them in:
diversity as the DEFLATE (zlib, gzip's codec) compression ratio of the distinct documents' text
(raw bytes / compressed bytes over the first `DIVERSITY_SAMPLE_BYTES` of each domain: higher is
more redundant, less diverse), and, in place of a teacher model, the share of tokens in synthetic
documents (rows with the `rephrase` stage's `parent_id`, or a true `rephrased` column) and the
mean `perplexity` of the distinct documents when that column is there.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from typing import Optional

import matplotlib
import numpy as np
import pyarrow as pa
import xxhash
from apache_beam.io.filesystems import FileSystems
from matplotlib.figure import Figure

from transforms.core.columns import PERPLEXITY
from transforms.core.config import ConfigError
from transforms.core.documents import ID, SOURCE, TEXT
from transforms.core.files import read_arrow_batches
from transforms.io.sink import whitespace_tokens
from transforms.mixture.licenses import TIERS, license_tier

SCHEDULE_FILE, MANIFEST = "schedule.json", "manifest.json"
R_STAR = 15.4
DIVERSITY_SAMPLE_BYTES = 32 * 2**20
SYNTHETIC_COLUMNS = ("parent_id", "rephrased")


def effective_tokens(unique: float, written: float, r_star: float = R_STAR) -> float:
    """Muennighoff et al. 2023: D' = U + U R* (1 - exp(-R/R*)), R = D/U - 1 repetitions."""
    if unique <= 0:
        return 0.0
    repetitions = max(0.0, written / unique - 1.0)
    return unique + unique * r_star * (1.0 - math.exp(-repetitions / r_star))


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def applied_runs(applied: str) -> tuple[Optional[dict], list[str]]:
    """(the schedule summary or None, the run folders) of an apply output."""
    summary_path = os.path.join(applied, SCHEDULE_FILE)
    if os.path.exists(summary_path):
        summary = _read_json(summary_path)
        return summary, [os.path.join(applied, p["output"]) for p in summary["phases"]]
    if not os.path.exists(os.path.join(applied, MANIFEST)):
        raise ConfigError(f"'{applied}' has neither {MANIFEST} nor {SCHEDULE_FILE}: "
                          "not an apply output")
    return None, [applied]


# --- the schedule -------------------------------------------------------------------------------

def _stacked_phases(ax, widths: list[float], shares: list[dict[str, float]],
                    domains: list[str], colors: dict) -> None:
    """Stacked steps: phase k spans its width of the x axis, each domain's share stacked."""
    left = np.concatenate([[0.0], np.cumsum(widths)[:-1]])
    bottom = np.zeros(len(widths))
    for domain in domains:
        height = np.array([s.get(domain, 0.0) for s in shares])
        ax.bar(left, height, widths, bottom=bottom, align="edge", color=colors[domain],
               edgecolor="white", linewidth=0.5, label=domain)
        bottom += height
    for edge in np.cumsum(widths)[:-1]:
        ax.axvline(edge, color="#333", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, sum(widths))
    ax.set_ylim(0, 1)


def schedule_figure(planned: list[dict], written: Optional[list[dict[str, float]]] = None
                    ) -> Figure:
    """Each domain's weight over the fraction of training tokens (planned), and beside it what
    each phase wrote (tokens per domain over the tokens written)."""
    domains = sorted({d for p in planned for d in p["weights"]})
    cmap = matplotlib.colormaps["tab20"]
    colors = {d: cmap(k % 20) for k, d in enumerate(domains)}
    panels = 2 if written else 1
    figure = Figure(figsize=(6.2 * panels + 1.6, 3.8))
    ax = figure.add_subplot(1, panels, 1)
    _stacked_phases(ax, [p["fraction"] for p in planned], [p["weights"] for p in planned],
                    domains, colors)
    ax.set_title("planned: weight per domain", fontsize=10)
    ax.set_xlabel("fraction of the training tokens")
    ax.set_ylabel("share of the phase's tokens")
    if written:
        totals = [sum(w.values()) for w in written]
        ax2 = figure.add_subplot(1, panels, 2)
        _stacked_phases(ax2, [t / sum(totals) for t in totals],
                        [{d: v / t for d, v in w.items()} if t else {} for w, t in
                         zip(written, totals)], domains, colors)
        ax2.set_title("written by the apply run", fontsize=10)
        ax2.set_xlabel("fraction of the tokens written")
    figure.axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.tight_layout()
    return figure


def schedule_section(report, planned: list[dict], summary: Optional[dict] = None) -> None:
    """Heading, figure and per-phase table of a schedule (`load_schedule` phases), with what
    each phase wrote when `summary` (an apply's schedule.json) is given."""
    report.heading("Schedule")
    report.paragraph(f"{len(planned)} phases; a phase's width is its fraction of the token "
                     "budget, its bands the weight of each domain within it.")
    written = None
    if summary:
        written = [{d: float(e.get("written_tokens", 0)) for d, e in p["domains"].items()}
                   for p in summary["phases"]]
    report.figure(schedule_figure(planned, written),
                  "Mixture schedule: weight per domain by phase"
                  + (" (left: planned; right: written)" if written else ""))
    domains = sorted({d for p in planned for d in p["weights"]})
    header = ["phase", "fraction", *(f"weight · {d}" for d in domains)]
    if summary:
        header += ["budget tokens", "written tokens", *(f"written · {d}" for d in domains)]
    rows = []
    for k, phase in enumerate(planned):
        row = [k, phase["fraction"], *(phase["weights"].get(d, 0.0) for d in domains)]
        if summary:
            done = summary["phases"][k]
            row += [float(done["tokens"]), float(done["written_tokens"]),
                    *(written[k].get(d, 0.0) for d in domains)]
        rows.append(row)
    report.table(header, rows)


def planned_from_summary(summary: dict) -> list[dict]:
    return [{"fraction": p["fraction"],
             "weights": {d: e["weight"] for d, e in p["domains"].items()}}
            for p in summary["phases"]]


# --- licences -----------------------------------------------------------------------------------

def tokens_by_license(manifests: list[dict]) -> dict[str, dict]:
    """{licence: {"docs", "tokens"}} summed over runs (manifest `outputs.documents.licenses`)."""
    total: dict[str, dict] = {}
    for manifest in manifests:
        licenses = manifest.get("outputs", {}).get("documents", {}).get("licenses", {})
        for license_id, entry in licenses.items():
            into = total.setdefault(license_id, {"docs": 0, "tokens": 0})
            into["docs"] += entry["docs"]
            into["tokens"] += entry["tokens"]
    return dict(sorted(total.items(), key=lambda kv: -kv[1]["tokens"]))


def license_section(report, manifests: list[dict]) -> None:
    report.heading("Tokens by licence")
    licenses = tokens_by_license(manifests)
    if not licenses:
        report.paragraph("The documents carry no `license` column: give inputs a `license:` "
                         "setting, or records a `license` field.")
        return
    total = sum(e["tokens"] for e in licenses.values()) or 1
    report.paragraph("Whitespace tokens written per licence id and per tier "
                     "(`transforms/mixture/licenses.py`: public_domain, permissive, copyleft, "
                     "restricted, unknown).")
    report.table(["licence", "tier", "documents", "tokens", "share"],
                 [[lic, license_tier(None if lic == "(none)" else lic), e["docs"],
                   float(e["tokens"]), e["tokens"] / total] for lic, e in licenses.items()])
    tiers = {t: 0 for t in TIERS}
    for lic, e in licenses.items():
        tiers[license_tier(None if lic == "(none)" else lic)] += e["tokens"]
    report.table(["tier", "tokens", "share"],
                 [[t, float(n), n / total] for t, n in tiers.items() if n])
    figure = Figure(figsize=(7, 2.6))
    ax = figure.add_subplot(1, 1, 1)
    shown = [t for t in TIERS if tiers[t]]
    ax.barh(shown, [tiers[t] for t in shown], color="#2f6db5")
    ax.set_xlabel("tokens")
    figure.tight_layout()
    report.figure(figure, "Tokens by licence tier.")


# --- effective tokens ---------------------------------------------------------------------------

def _new_domain() -> dict:
    return {"tokens": 0, "unique_tokens": 0, "synthetic_tokens": 0, "raw_bytes": 0,
            "compressed_bytes": 0, "perplexity_sum": 0.0, "perplexity_docs": 0,
            "_seen": set(), "_zlib": zlib.compressobj(6)}


def _synthetic_mask(batch: pa.RecordBatch) -> np.ndarray:
    mask = np.zeros(batch.num_rows, dtype=bool)
    names = batch.schema.names
    if "parent_id" in names:
        mask |= np.asarray(batch.column("parent_id").is_valid().to_numpy(zero_copy_only=False))
    if "rephrased" in names:
        mask |= np.array([bool(v) for v in batch.column("rephrased").to_pylist()], dtype=bool)
    return mask


def _add_batch(domains: dict, batch: pa.RecordBatch) -> None:
    tokens = whitespace_tokens(batch.column(TEXT)).to_numpy(zero_copy_only=False)
    sources = batch.column(SOURCE).to_pylist()
    ids = batch.column(ID).to_pylist()
    texts = batch.column(TEXT).to_pylist()
    synthetic = _synthetic_mask(batch)
    perplexity = (batch.column(PERPLEXITY).to_pylist() if PERPLEXITY in batch.schema.names
                  else None)
    for i, source in enumerate(sources):
        entry = domains.setdefault(str(source), _new_domain())
        entry["tokens"] += int(tokens[i])
        entry["synthetic_tokens"] += int(tokens[i]) * bool(synthetic[i])
        key = xxhash.xxh64_intdigest(str(ids[i]).encode("utf-8", "surrogatepass"))
        if key in entry["_seen"]:
            continue
        entry["_seen"].add(key)
        entry["unique_tokens"] += int(tokens[i])
        if perplexity is not None and isinstance(perplexity[i], (int, float)):
            entry["perplexity_sum"] += float(perplexity[i])
            entry["perplexity_docs"] += 1
        if entry["raw_bytes"] < DIVERSITY_SAMPLE_BYTES:
            data = texts[i].encode("utf-8", "surrogatepass") + b"\n"
            entry["raw_bytes"] += len(data)
            entry["compressed_bytes"] += len(entry["_zlib"].compress(data))


def measure_domains(run_dirs: list[str]) -> dict[str, dict]:
    """Per domain over the `documents/` of every run: tokens written, tokens of distinct
    documents, synthetic tokens, compression of the distinct documents' text. Streams the
    shards batch by batch; memory holds 8 bytes per distinct document (its id's hash)."""
    domains: dict[str, dict] = {}
    wanted = [ID, TEXT, SOURCE, PERPLEXITY, *SYNTHETIC_COLUMNS]
    for run in run_dirs:
        found = FileSystems.match([FileSystems.join(run, "documents", "*.arrow")])[0]
        for path in sorted(m.path for m in found.metadata_list):
            for batch in read_arrow_batches(path):
                _add_batch(domains, batch.select([c for c in wanted
                                                  if c in batch.schema.names]))
    for entry in domains.values():
        entry["compressed_bytes"] += len(entry.pop("_zlib").flush())
        del entry["_seen"]
        entry["effective_tokens"] = effective_tokens(entry["unique_tokens"], entry["tokens"])
    return dict(sorted(domains.items()))


def effective_section(report, domains: dict[str, dict]) -> None:
    report.heading("Effective training tokens")
    report.paragraph(
        "Repeated tokens count with diminishing value (Muennighoff et al. 2023): D' = U + U R* "
        f"(1 - exp(-R/R*)), R* = {R_STAR:g}, U the tokens of distinct documents, R = D/U - 1. "
        "Chang et al. 2024 also weigh effective tokens by text diversity and syntheticity "
        "(a teacher model); their fitted combination is not applied here. Shown instead: "
        "diversity as the zlib compression ratio of the distinct documents (raw/compressed "
        "bytes; higher is more redundant) and, in place of a teacher model, the share of "
        "tokens in synthetic (rephrased) documents.")
    with_ppl = any(e["perplexity_docs"] for e in domains.values())
    header = ["domain", "tokens written", "distinct-document tokens", "repetitions R",
              "effective tokens D'", "D'/D", "compression ratio", "synthetic share"]
    header += ["mean perplexity"] if with_ppl else []
    rows = []
    total = {k: sum(e[k] for e in domains.values()) for k in
             ("tokens", "unique_tokens", "effective_tokens", "raw_bytes", "compressed_bytes",
              "synthetic_tokens", "perplexity_sum", "perplexity_docs")}
    for name, e in [*domains.items(), ("overall", total)]:
        row = [name, float(e["tokens"]), float(e["unique_tokens"]),
               e["tokens"] / e["unique_tokens"] - 1 if e["unique_tokens"] else 0.0,
               float(e["effective_tokens"]),
               e["effective_tokens"] / e["tokens"] if e["tokens"] else 0.0,
               e["raw_bytes"] / e["compressed_bytes"] if e["compressed_bytes"] else 0.0,
               e["synthetic_tokens"] / e["tokens"] if e["tokens"] else 0.0]
        if with_ppl:
            row.append(e["perplexity_sum"] / e["perplexity_docs"] if e["perplexity_docs"]
                       else "")
        rows.append(row)
    report.table(header, rows)


def data_sections(report, applied: str) -> None:
    """The schedule (when there is one), tokens by licence and effective tokens of an apply."""
    summary, runs = applied_runs(applied)
    if summary:
        schedule_section(report, planned_from_summary(summary), summary)
    manifests = [_read_json(os.path.join(run, MANIFEST)) for run in runs]
    license_section(report, manifests)
    effective_section(report, measure_domains(runs))


def applied_plan(applied: str) -> Optional[dict]:
    """The mixture plan of an unscheduled apply (manifest `mixture`), None for a schedule."""
    summary, runs = applied_runs(applied)
    if summary:
        return None
    plan = _read_json(os.path.join(runs[0], MANIFEST)).get("mixture")
    if plan is None:
        raise ConfigError(f"'{applied}/{MANIFEST}' has no mixture section: not an apply run")
    return plan
