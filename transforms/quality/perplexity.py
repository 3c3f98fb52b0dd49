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
"""
from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Optional

import numpy as np
from apache_beam.io.filesystems import FileSystems

from classifiers import kenlm_model
from classifiers.fasttext_quality import local_copy, require_file
from transforms.core.columns import PERPLEXITY, PERPLEXITY_BUCKET
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import TEXT
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract

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
        if self.processor is None:
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
    cutoffs: Optional[str] = None          # default: cc_net's table, shipped with Sluice
    head_percentile: int = 30
    tail_percentile: int = 60
    column: str = PERPLEXITY
    bucket_column: str = PERPLEXITY_BUCKET


@dataclass
class PerplexityModel:
    """What a perplexity worker loads once per process: the KenLM model and its tokenizer."""

    lm: object
    tokenizer: LineTokenizer


class PerplexityFn(ScoreBatchFn):
    stage = "perplexity"

    def load_model(self) -> "PerplexityModel":
        return PerplexityModel(kenlm_model.load(self.config.model),
                               LineTokenizer(self.config.sentencepiece))

    def setup(self):
        super().setup()
        self.cutoffs = load_cutoffs(self.config.cutoffs, self.config.head_percentile,
                                    self.config.tail_percentile).get(self.config.language)

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
            lines = self.model.tokenizer.lines(text)
            values.append(perplexity(kenlm_model.line_log10(self.model.lm, lines), lines))
        buckets = [bucket(v, self.cutoffs) for v in values]
        return Scored(columns={self.config.column: [None if v != v else v for v in values],
                               self.config.bucket_column: buckets})


class PerplexityStage(ScoringStage):
    """CCNet perplexity and head/middle/tail buckets (see the module docstring)."""

    Config = PerplexityConfig

    def __init__(self, config: PerplexityConfig, context=None):
        super().__init__(config, context)
        require_file(config.model, "KenLM model")
        LineTokenizer(config.sentencepiece)
        if config.language not in load_cutoffs(config.cutoffs, config.head_percentile,
                                               config.tail_percentile):
            raise ConfigError(f"perplexity: no cutoffs for language '{config.language}'")

    def contract(self) -> Contract:
        language = (self.config.language_column,) if self.config.language_column else ()
        return Contract(optional=language, writes=(self.config.column, self.config.bucket_column))

    def score_fn(self) -> PerplexityFn:
        return PerplexityFn(self.config)
