"""CCNet perplexity: normalise, optionally SentencePiece-tokenise, score with a KenLM model, and
bucket into head/middle/tail by per-language cutoffs.

Wenzek et al. 2020, "CCNet: Extracting High Quality Monolingual Datasets from Web Crawl Data":
each line is normalised (lowercase, accents stripped, digits to 0, unicode punctuation to
ASCII, control characters removed), tokenised with the language's SentencePiece model and scored
by a 5-gram KenLM model trained on Wikipedia; the document's perplexity is
`10 ** (-sum(log10 p) / (n_tokens + n_lines))` (each line also predicts its end). Documents below
the 30th percentile of the language's perplexity distribution are `head`, below the 60th
`middle`, else `tail` (English: 340 / 520). The cutoff table is cc_net's `cutoff.csv` (MIT),
shipped in `transforms/quality/data/`.

Two ways to cut text into what the LM scores (`mode`):

- `lines` (default): each non-empty line normalised and scored on its own.
- `cc_net`: what cc_net's `mine` pipeline does (`MultiSentencePiece(normalize=True)` on
  `raw_content`, then `DocLM(field="tokenized", normalize=False)`): the whole document is
  normalised at once, and since normalisation deletes control characters, newlines included,
  the lines are glued into one line (the last word of a line runs into the first of the next),
  which is tokenised and scored as one sentence.

cc_net's cutoffs only mean head/middle/tail for cc_net's own models (a 5-gram KenLM
`<lang>.arpa.bin` with its SentencePiece `<lang>.sp.model`, trained on that language's
Wikipedia) scored in `cc_net` mode. Rule: a model counts as cc_net's when its file is named
`<language>.arpa.bin` and `sentencepiece` is named `<language>.sp.model` (or `cc_net_model:
true` says so); in any other case the stage prints one warning when it would use cc_net's table.
For the user's own LM, `table: PATH` cuts at the model's own percentiles on the corpus: the
`head_percentile`/`tail_percentile` (and every 5th) percentile of the documents' perplexities
(unweighted, over a bottom-k sample by id hash as in `buckets`), computed by a Beam combine when
the file does not exist, saved as JSON, and reused by later runs (`recompute: true` redoes it).
"""
from __future__ import annotations

import csv
import io
import os
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Literal, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from classifiers import kenlm_model
from classifiers.fasttext_quality import local_copy, require_file
from transforms.core.columns import PERPLEXITY, PERPLEXITY_BUCKET
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import TEXT
from transforms.core.files import read_json, write_json_atomic
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract, documents_and_rejects
from transforms.quality.buckets import ReferenceSample, weighted_percentiles

CUTOFFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cc_net_cutoff.csv")
HEAD, MIDDLE, TAIL, UNSCORED = "head", "middle", "tail", "all"

UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'",
    "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
}
# Unicode punctuation to ASCII, control characters deleted: one `str.translate` table.
TRANSLATION: dict[int, Optional[str]] = {
    **{ord(k): v for k, v in UNICODE_PUNCT.items()},
    **{code: None for code in [*range(0, 32), *range(127, 160)]}}
DIGIT = re.compile(r"\d")


def strip_accents(line: str) -> str:
    """NFD, then drop the combining marks (category Mn); ASCII lines have none."""
    if line.isascii():
        return line
    return "".join(c for c in unicodedata.normalize("NFD", line)
                   if c.isascii() or unicodedata.category(c) != "Mn")


def normalize_line(line: str) -> str:
    """CCNet's text normalisation of one line: lowercase, strip accents, digits to 0, unicode
    punctuation to ASCII, drop control characters."""
    line = line.strip()
    if not line:
        return line
    return DIGIT.sub("0", strip_accents(line.lower())).translate(TRANSLATION)


class LineTokenizer:
    """Normalised lines, as space-separated SentencePiece pieces (or words without a model)."""

    def __init__(self, sentencepiece: Optional[str] = None):
        self.processor = None
        if sentencepiece:
            try:
                import sentencepiece as spm
            except ImportError:
                raise ConfigError("a SentencePiece model was given but the `sentencepiece` "
                                  "package is not installed (pip install sentencepiece)") from None
            require_file(sentencepiece, "SentencePiece model")
            self.processor = spm.SentencePieceProcessor(model_file=local_copy(sentencepiece))

    def lines(self, text: str) -> list[str]:
        lines = [line for line in map(normalize_line, text.split("\n")) if line]
        return self._pieces(lines)

    def document(self, text: str) -> list[str]:
        """cc_net's way: the whole text normalised as one line (newlines deleted), as a list of
        one line (none if nothing is left)."""
        line = normalize_line(text)
        return self._pieces([line] if line else [])

    def _pieces(self, lines: list[str]) -> list[str]:
        if self.processor is None or not lines:
            return lines
        return [" ".join(pieces) for pieces in self.processor.encode(lines, out_type=str)]


def perplexity(log10_per_line: np.ndarray, lines: list[str]) -> float:
    """CCNet document perplexity from per-line log10 probabilities (NaN for no lines)."""
    if not lines:
        return float("nan")
    length = sum(len(line.split()) + 1 for line in lines)
    return float(10.0 ** (-log10_per_line.sum() / length))


def load_cutoffs(path: Optional[str] = None, head: int = 30,
                 tail: int = 60) -> dict[str, tuple[float, float]]:
    """language -> (head cutoff, tail cutoff) from a cc_net cutoff table (rows = percentiles)."""
    with FileSystems.open(path or CUTOFFS) as f:
        table = list(csv.reader(io.TextIOWrapper(f, encoding="utf-8")))
    languages = table[0][1:]
    by_percentile = {int(row[0]): row[1:] for row in table[1:]}
    if head not in by_percentile or tail not in by_percentile:
        raise ConfigError(f"cutoff table has no percentile {head} or {tail}")
    return {lang: (float(by_percentile[head][i]), float(by_percentile[tail][i]))
            for i, lang in enumerate(languages)}


def bucket(value: float, cutoffs: Optional[tuple[float, float]]) -> str:
    """head / middle / tail for a perplexity, `all` when unscored or the language is unknown."""
    if cutoffs is None or value != value:
        return UNSCORED
    head, tail = cutoffs
    return HEAD if value < head else MIDDLE if value < tail else TAIL


@config_dataclass
class PerplexityConfig:
    """`model`: KenLM model (ARPA or binary) of `language`; `sentencepiece`: its tokenizer, if it
    was trained on pieces. With `language_column`, documents in another language are not scored
    (perplexity null, bucket `all`)."""

    model: str
    sentencepiece: Optional[str] = None
    language: str = "en"
    language_column: Optional[str] = None
    mode: Literal["lines", "cc_net"] = "lines"   # cc_net: the document as one normalised line
    cutoffs: Optional[str] = None          # default: cc_net's table, shipped with Sluice
    table: Optional[str] = None            # own cutoffs: JSON percentile table, computed if absent
    recompute: bool = False                # recompute and overwrite an existing `table`
    max_sample: int = 1_000_000            # documents in the sample the table is computed from
    cc_net_model: Optional[bool] = None    # None: decide by file names (see the module docstring)
    head_percentile: int = 30
    tail_percentile: int = 60
    column: str = PERPLEXITY
    bucket_column: str = PERPLEXITY_BUCKET


def is_cc_net_model(config: PerplexityConfig) -> bool:
    """Whether the model is one of cc_net's: `<language>.arpa.bin` with `<language>.sp.model`,
    unless `cc_net_model` says."""
    if config.cc_net_model is not None:
        return config.cc_net_model
    return (os.path.basename(config.model) == f"{config.language}.arpa.bin"
            and config.sentencepiece is not None
            and os.path.basename(config.sentencepiece) == f"{config.language}.sp.model")


def cc_net_cutoffs_warning(config: PerplexityConfig) -> Optional[str]:
    """The one-line warning when cc_net's cutoffs meet another model or another mode."""
    if config.table is not None or config.cutoffs is not None:
        return None
    cc_net_model = is_cc_net_model(config)
    if cc_net_model and config.mode == "cc_net":
        return None
    head, tail = load_cutoffs(None, config.head_percentile, config.tail_percentile).get(
        config.language, (float("nan"), float("nan")))
    why = (f"model '{os.path.basename(config.model)}' is not one of cc_net's "
           f"({config.language}.arpa.bin with {config.language}.sp.model)"
           if not cc_net_model else "mode is 'lines', not 'cc_net'")
    return (f"sluice: warning: perplexity: cc_net's cutoffs ({config.language}: head < {head:g}, "
            f"tail >= {tail:g}) hold for cc_net's own models in mode cc_net, but {why}, so "
            f"these buckets are not cc_net's; set `table: PATH` to cut at this model's own "
            f"percentiles")


def cutoff_table(sample, config: PerplexityConfig) -> dict:
    """The model's own percentile table from a sample of scored documents."""
    if sample is None or not np.any(~np.isnan(sample[config.column])):
        raise ValueError("perplexity: no scored documents to compute the cutoff table from")
    values = sample[config.column]
    percentiles = sorted({*range(5, 100, 5), config.head_percentile, config.tail_percentile})
    cuts = weighted_percentiles(values, np.ones_like(values), percentiles)
    return {"method": "document percentiles of perplexity (unweighted), bottom-k sample by id "
                      "hash",
            "model": os.path.basename(config.model),
            "sentencepiece": (os.path.basename(config.sentencepiece)
                              if config.sentencepiece else None),
            "mode": config.mode, "language": config.language,
            "documents": int(np.count_nonzero(~np.isnan(values))),
            "percentiles": {str(p): float(v) for p, v in zip(percentiles, cuts)}}


def table_cutoffs(table: dict, config: PerplexityConfig) -> tuple[float, float]:
    """(head, tail) cutoffs of an own percentile table, for the configured percentiles."""
    by_percentile = table.get("percentiles", {})
    head, tail = str(config.head_percentile), str(config.tail_percentile)
    if head not in by_percentile or tail not in by_percentile:
        raise ConfigError(f"perplexity: table '{config.table}' has no percentile {head} or "
                          f"{tail}; set recompute: true")
    return float(by_percentile[head]), float(by_percentile[tail])


@dataclass
class PerplexityModel:
    """What a perplexity worker loads once per process: the KenLM model and its tokenizer."""

    lm: object
    tokenizer: LineTokenizer


class PerplexityFn(ScoreBatchFn):
    """Scores documents; buckets them by cc_net's (or the given CSV) cutoffs unless the stage
    has an own `table`, in which case `PerplexityBucketFn` buckets afterwards."""

    stage = "perplexity"

    def load_model(self) -> "PerplexityModel":
        return PerplexityModel(kenlm_model.load(self.config.model),
                               LineTokenizer(self.config.sentencepiece))

    def setup(self):
        super().setup()
        self.cutoffs = (None if self.config.table else
                        load_cutoffs(self.config.cutoffs, self.config.head_percentile,
                                     self.config.tail_percentile).get(self.config.language))

    def score(self, batch) -> Scored:
        texts = batch.column(TEXT).to_pylist()
        languages = (batch.column(self.config.language_column).to_pylist()
                     if self.config.language_column in batch.schema.names
                     else [self.config.language] * len(texts))
        values = []
        for text, language in zip(texts, languages):
            if language != self.config.language:
                values.append(float("nan"))
                continue
            tokenizer = self.model.tokenizer
            lines = (tokenizer.document(text) if self.config.mode == "cc_net"
                     else tokenizer.lines(text))
            values.append(perplexity(kenlm_model.line_log10(self.model.lm, lines), lines))
        columns = {self.config.column: [None if v != v else v for v in values]}
        if not self.config.table:
            columns[self.config.bucket_column] = [bucket(v, self.cutoffs) for v in values]
        return Scored(columns=columns)


class PerplexityBucketFn(ScoreBatchFn):
    """head/middle/tail from the model's own percentile table (a side input)."""

    stage = "perplexity"

    def score(self, batch, table) -> Scored:
        cutoffs = table_cutoffs(table, self.config)
        values = batch.column(self.config.column).to_pylist()
        return Scored(columns={self.config.bucket_column: [
            bucket(float("nan") if v is None else v, cutoffs) for v in values]})


class PerplexityStage(ScoringStage):
    """CCNet perplexity and head/middle/tail buckets (see the module docstring)."""

    Config = PerplexityConfig

    def __init__(self, config: PerplexityConfig, context=None):
        super().__init__(config, context)
        require_file(config.model, "KenLM model")
        LineTokenizer(config.sentencepiece)
        if config.table and config.cutoffs:
            raise ConfigError("perplexity: give `cutoffs` (a cc_net-style CSV) or `table` (own "
                              "percentiles), not both")
        if not config.table and config.language not in load_cutoffs(
                config.cutoffs, config.head_percentile, config.tail_percentile):
            raise ConfigError(f"perplexity: no cutoffs for language '{config.language}'")
        if not 0 < config.head_percentile < config.tail_percentile < 100:
            raise ConfigError("perplexity: need 0 < head_percentile < tail_percentile < 100")

    def contract(self) -> Contract:
        language = (self.config.language_column,) if self.config.language_column else ()
        return Contract(optional=language, writes=(self.config.column, self.config.bucket_column))

    def score_fn(self) -> PerplexityFn:
        return PerplexityFn(self.config)

    def expand(self, documents):
        config = self.config
        if not config.table:
            # here, not in __init__: a job builds its stages twice (checks, then the graph)
            warning = cc_net_cutoffs_warning(config)
            if warning:
                print(warning, file=sys.stderr, flush=True)
            return super().expand(documents)
        scored, rejects = documents_and_rejects(documents, "Score", self.score_fn())
        if FileSystems.exists(config.table) and not config.recompute:
            table = read_json(config.table)
            table_cutoffs(table, config)  # a table without the percentiles fails here, at once
            table_input = documents.pipeline | "Table" >> beam.Create([table])
        else:
            table_input = (scored
                           | "Sample" >> beam.CombineGlobally(
                               ReferenceSample([config.column], config.max_sample))
                           | "Percentiles" >> beam.Map(cutoff_table, config))
            table_input | "SaveTable" >> beam.Map(lambda t, path: write_json_atomic(path, t),
                                                  config.table)
        bucketed, bucket_rejects = documents_and_rejects(
            scored, "Bucket", PerplexityBucketFn(config), beam.pvalue.AsSingleton(table_input))
        return bucketed, (rejects, bucket_rejects) | "Rejects" >> beam.Flatten()
