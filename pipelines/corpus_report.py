"""The corpus report, rewritten by every refresh: the corpus's current mixture ratios (documents
and tokens per source) and what each version added."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from pipelines.corpus import Corpus
from pipelines.report import HtmlReport
from transforms.core.files import write_bytes_atomic

REPORT = "report.html"


def _composition_figure(versions, sources: list[str]) -> Figure:
    figure = Figure(figsize=(9, 3.6))
    axes = figure.subplots()
    bottom = np.zeros(len(versions))
    labels = [str(v.version) for v in versions]
    for source in sources:
        tokens = np.array([v.sources.get(source, {}).get("tokens", 0) for v in versions], float)
        axes.bar(labels, tokens, bottom=bottom, label=source)
        bottom += tokens
    axes.set_xlabel("version")
    axes.set_ylabel("whitespace tokens added")
    axes.legend(fontsize=8, ncols=2)
    return figure


def write_corpus_report(corpus: Corpus) -> str:
    versions = corpus.versions()
    sources = sorted({s for v in versions for s in v.sources})
    totals = {s: sum(v.sources.get(s, {}).get("tokens", 0) for v in versions) for s in sources}
    docs = {s: sum(v.sources.get(s, {}).get("docs", 0) for v in versions) for s in sources}
    all_tokens = sum(totals.values()) or 1
    report = HtmlReport(f"Corpus {corpus.root}",
                        f"{len(versions)} version(s), {sum(v.docs for v in versions):,} documents, "
                        f"{sum(totals.values()):,} whitespace tokens")
    report.heading("Mixture ratios of the corpus")
    report.table(["source", "documents", "tokens", "share of tokens"],
                 [[s, docs[s], totals[s], totals[s] / all_tokens] for s in sources])
    if versions:
        report.heading("What each version added")
        report.figure(_composition_figure(versions, sources), "Tokens added per version and source")
        report.table(["version", "created", "documents", "tokens", "dropped", "failed", "config"],
                     [[v.version, v.created[:19], v.docs, v.tokens,
                       sum(v.stats.get("dropped", {}).values()), v.stats.get("failed", 0),
                       v.config_hash[:8]] for v in versions])
    return write_bytes_atomic(corpus.path(REPORT), report.render().encode("utf-8"))
