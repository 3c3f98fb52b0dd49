"""Heuristic quality filters: Gopher quality and repetition, C4, FineWeb.

Each rule is a small pure function `Page -> float` (the signal) with its published bounds:
- Gopher (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
  Gopher", Appendix A1): document length, mean word length, symbol ratios, bullet/ellipsis lines,
  alphabetic words, stop words; duplicate lines/paragraphs and n-gram repetition.
- C4 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", Sec. 2.2): keep only lines
  that end in terminal punctuation, have at least 3 words and do not mention javascript or a
  cookie/terms policy; drop pages with "lorem ipsum", a curly brace, fewer than 5 sentences or a
  word from a bad-words list.
- FineWeb (Penedo et al. 2024, "The FineWeb Datasets"): lines ending in punctuation >= 0.12,
  duplicated-line characters <= 0.1, lines shorter than 30 characters <= 0.67.

The `heuristics` stage evaluates the configured rule sets in order, optionally writes every
signal as a column, and drops a failing document under the name of the first rule it fails
(every failing rule is listed in the dead-letter detail).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable, Literal, Optional

import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import TEXT
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract

GOPHER_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
BULLETS = ("•", "-", "*", "‣", "◦", "●", "▪", "–", "·")
ELLIPSES = ("...", "…")
# Line ends counted as punctuation by FineWeb's line rule (Latin and CJK full stops, quotes).
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", "…", "。", "！", "？", "．", ")", ";", ":")
C4_LINE_ENDS = (".", "!", "?", '"')
C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
             "use cookies")
CITATION = re.compile(r"\[\d+\]|\[citation needed\]|\[edit\]", re.IGNORECASE)
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_PUNCT_STRIP = "\"'“”‘’()[]{}.,;:!?-«»…"


class Page:
    """A text split into the units the rules measure, each computed once on first use."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def lines(self) -> tuple[str, ...]:
        """Non-empty lines, stripped."""
        return tuple(line.strip() for line in self.text.split("\n") if line.strip())

    @cached_property
    def paragraphs(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in re.split(r"\n{2,}", self.text) if p.strip())

    @cached_property
    def _vocabulary(self) -> tuple[np.ndarray, list[str]]:
        """(word id per word, the distinct words): per-word properties are computed per
        distinct word, then gathered, which keeps the per-word Python work to one dict lookup."""
        vocabulary: dict[str, int] = {}
        ids = np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for w in self.words),
                          dtype=np.int64, count=len(self.words))
        return ids, list(vocabulary)

    def per_word(self, prop: Callable[[str], float]) -> np.ndarray:
        """`prop` of every word, evaluated once per distinct word."""
        ids, distinct = self._vocabulary
        values = np.fromiter(map(prop, distinct), dtype=np.float64, count=len(distinct))
        return values[ids]

    @cached_property
    def word_lengths(self) -> np.ndarray:
        return self.per_word(len)

    @cached_property
    def _ngram_keys(self) -> dict[int, np.ndarray]:
        return {}

    def ngram_keys(self, n: int) -> np.ndarray:
        """A 64-bit hash of every word n-gram (position i covers words i..i+n-1)."""
        cache = self._ngram_keys
        if n not in cache:
            ids = self._vocabulary[0].astype(np.uint64) + np.uint64(1)
            if len(ids) < n:
                cache[n] = np.empty(0, dtype=np.uint64)
            elif n == 1:
                cache[n] = ids
            else:
                with np.errstate(over="ignore"):
                    cache[n] = self.ngram_keys(n - 1)[:-1] * np.uint64(1_000_003) + ids[n - 1:]
        return cache[n]


# --- signals: Page -> float -------------------------------------------------------------------

def word_count(page: Page) -> float:
    return float(len(page.words))


def mean_word_length(page: Page) -> float:
    return float(page.word_lengths.mean()) if len(page.words) else 0.0


def symbol_word_ratio(page: Page) -> float:
    """Hash symbols and ellipses per word (Gopher)."""
    symbols = page.text.count("#") + page.text.count("...") + page.text.count("…")
    return symbols / max(len(page.words), 1)


def bullet_line_fraction(page: Page) -> float:
    return sum(line.startswith(BULLETS) for line in page.lines) / max(len(page.lines), 1)


def ellipsis_line_fraction(page: Page) -> float:
    return sum(line.endswith(ELLIPSES) for line in page.lines) / max(len(page.lines), 1)


_LETTER = re.compile(r"[^\W\d_]")


def _has_letter(word: str) -> bool:
    return _LETTER.search(word) is not None


def _is_stop_word(word: str) -> bool:
    return word.lower().strip(_PUNCT_STRIP) in GOPHER_STOP_WORDS


def alphabetic_word_fraction(page: Page) -> float:
    return float(page.per_word(_has_letter).mean()) if page.words else 0.0


def stop_word_count(page: Page) -> float:
    return float(page.per_word(_is_stop_word).sum())


@lru_cache(maxsize=8)
def _duplicates(items: tuple[str, ...]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of characters in them)."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        seen.add(item)
    total_chars = sum(map(len, items))
    return dup_items / max(len(items), 1), dup_chars / max(total_chars, 1)


def duplicate_line_fraction(page: Page) -> float:
    return _duplicates(page.lines)[0]


def duplicate_line_char_fraction(page: Page) -> float:
    return _duplicates(page.lines)[1]


def duplicate_paragraph_fraction(page: Page) -> float:
    return _duplicates(page.paragraphs)[0]


def duplicate_paragraph_char_fraction(page: Page) -> float:
    return _duplicates(page.paragraphs)[1]


def top_ngram_char_fraction(page: Page, n: int) -> float:
    """Characters in the most frequent word n-gram (all its occurrences) / all word characters."""
    keys = page.ngram_keys(n)
    if not len(keys):
        return 0.0
    unique, first, counts = np.unique(keys, return_index=True, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < 2:
        return 0.0
    start = first[top]
    ngram_chars = page.word_lengths[start: start + n].sum()
    return float(counts[top] * ngram_chars / page.word_lengths.sum())


def duplicate_ngram_char_fraction(page: Page, n: int) -> float:
    """Characters covered by word n-grams that occur more than once / all word characters."""
    keys = page.ngram_keys(n)
    if not len(keys):
        return 0.0
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    starts = np.flatnonzero(counts[inverse] > 1)
    if not len(starts):
        return 0.0
    cover = np.zeros(len(page.words) + 1, dtype=np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return float(page.word_lengths[covered].sum() / page.word_lengths.sum())


def punctuation_line_fraction(page: Page) -> float:
    return sum(line.endswith(TERMINAL_PUNCTUATION) for line in page.lines) / max(len(page.lines), 1)


def short_line_fraction(page: Page, max_chars: int = 30) -> float:
    return sum(len(line) <= max_chars for line in page.lines) / max(len(page.lines), 1)


def c4_clean_lines(text: str) -> str:
    """C4's line filter: keep lines ending in terminal punctuation (not an ellipsis) with >= 3
    words, without "javascript" or a policy notice and with no word over 1000 characters;
    citation markers are removed first."""
    kept = []
    for line in text.split("\n"):
        line = CITATION.sub("", line).strip()
        lower = line.lower()
        if (not line.endswith(C4_LINE_ENDS) or line.endswith("...") or len(line.split()) < 3
                or "javascript" in lower or any(p in lower for p in C4_POLICY)
                or any(len(w) > 1000 for w in line.split())):
            continue
        kept.append(line)
    return "\n".join(kept)


def sentence_count(page: Page) -> float:
    return float(len(SENTENCE_END.findall(page.text)))


def has_lorem_ipsum(page: Page) -> float:
    return float("lorem ipsum" in page.text.lower())


def has_curly_brace(page: Page) -> float:
    return float("{" in page.text or "}" in page.text)


# --- rules: a signal with its bounds ------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    name: str
    signal: Callable[[Page], float]
    min: Optional[float] = None
    max: Optional[float] = None

    def fails(self, value: float, bounds: tuple[Optional[float], Optional[float]]) -> bool:
        low, high = bounds
        return (low is not None and value < low) or (high is not None and value > high)


def _ngram_rule(prefix: str, signal, n: int, limit: float) -> Rule:
    return Rule(f"{prefix}_{n}gram_char_fraction", lambda page: signal(page, n), max=limit)


RULE_SETS: dict[str, list[Rule]] = {
    "gopher_quality": [
        Rule("gopher_word_count", word_count, min=50, max=100_000),
        Rule("gopher_mean_word_length", mean_word_length, min=3, max=10),
        Rule("gopher_symbol_word_ratio", symbol_word_ratio, max=0.1),
        Rule("gopher_bullet_lines", bullet_line_fraction, max=0.9),
        Rule("gopher_ellipsis_lines", ellipsis_line_fraction, max=0.3),
        Rule("gopher_alphabetic_words", alphabetic_word_fraction, min=0.8),
        Rule("gopher_stop_words", stop_word_count, min=2),
    ],
    "gopher_repetition": [
        Rule("gopher_duplicate_lines", duplicate_line_fraction, max=0.3),
        Rule("gopher_duplicate_paragraphs", duplicate_paragraph_fraction, max=0.3),
        Rule("gopher_duplicate_line_chars", duplicate_line_char_fraction, max=0.2),
        Rule("gopher_duplicate_paragraph_chars", duplicate_paragraph_char_fraction, max=0.2),
        *(_ngram_rule("gopher_top", top_ngram_char_fraction, n, limit)
          for n, limit in ((2, 0.20), (3, 0.18), (4, 0.16))),
        *(_ngram_rule("gopher_duplicate", duplicate_ngram_char_fraction, n, limit)
          for n, limit in zip(range(5, 11), (0.15, 0.14, 0.13, 0.12, 0.11, 0.10))),
    ],
    "c4": [
        Rule("c4_lorem_ipsum", has_lorem_ipsum, max=0),
        Rule("c4_curly_brace", has_curly_brace, max=0),
        Rule("c4_sentences", sentence_count, min=5),
    ],
    "fineweb": [
        Rule("fineweb_punctuation_lines", punctuation_line_fraction, min=0.12),
        Rule("fineweb_duplicate_line_chars", duplicate_line_char_fraction, max=0.1),
        Rule("fineweb_short_lines", short_line_fraction, max=0.67),
    ],
}
C4_BAD_WORDS = "c4_bad_words"
ALL_RULES = {rule.name: rule for rules in RULE_SETS.values() for rule in rules}
RuleSet = Literal["gopher_quality", "gopher_repetition", "c4", "fineweb"]


@config_dataclass
class Bounds:
    min: Optional[float] = None
    max: Optional[float] = None


@config_dataclass
class HeuristicsConfig:
    """`rule_sets` run in order; `thresholds` overrides a rule's published bounds by name;
    `disable` skips rules; `columns` writes each signal as a float column named for its rule;
    `drop: false` only annotates (filter later with the `filter` stage)."""

    rule_sets: list[RuleSet] = field(
        default_factory=lambda: ["gopher_repetition", "gopher_quality", "c4", "fineweb"])
    drop: bool = True
    columns: bool = False
    thresholds: dict[str, Bounds] = field(default_factory=dict)
    disable: list[str] = field(default_factory=list)
    c4_clean_lines: bool = True
    c4_bad_words: Optional[str] = None  # a word list file, one word or phrase per line


class BadWords:
    """C4's bad-words rule: the number of listed words (and multi-word phrases) on the page."""

    def __init__(self, path: str):
        with FileSystems.open(path) as f:
            entries = {w.strip().lower() for w in f.read().decode("utf-8").splitlines()
                       if w.strip()}
        self.words = frozenset(w for w in entries if " " not in w)
        self.phrases = tuple(w for w in entries if " " in w)

    def __call__(self, page: Page) -> float:
        lower = page.text.lower()
        found = len(self.words.intersection(re.findall(r"\w+", lower)))
        return float(found + sum(phrase in lower for phrase in self.phrases))


class Heuristics:
    """The configured rules, ready to evaluate one text at a time."""

    def __init__(self, config: HeuristicsConfig):
        for name in [*config.thresholds, *config.disable]:
            if name not in ALL_RULES and name != C4_BAD_WORDS:
                raise ConfigError(f"heuristics: unknown rule '{name}' (known: "
                                  f"{', '.join(sorted([*ALL_RULES, C4_BAD_WORDS]))})")
        self.config = config
        available = dict(RULE_SETS)
        if config.c4_bad_words and C4_BAD_WORDS not in config.disable:
            available["c4"] = [*available["c4"], Rule(C4_BAD_WORDS, BadWords(config.c4_bad_words),
                                                      max=0)]
        self.rule_sets = [(name, [r for r in available[name] if r.name not in config.disable])
                          for name in config.rule_sets]
        self.bounds = {r.name: (r.min, r.max) for _, rules in self.rule_sets for r in rules}
        for name, override in config.thresholds.items():
            self.bounds[name] = (override.min, override.max)

    @property
    def rule_names(self) -> list[str]:
        return [r.name for _, rules in self.rule_sets for r in rules]

    def evaluate(self, text: str) -> tuple[str, dict[str, float], list[str]]:
        """(text after C4 line cleaning if configured, signal per rule, failed rule names)."""
        signals: dict[str, float] = {}
        failed: list[str] = []
        page = Page(text)
        for name, rules in self.rule_sets:
            if name == "c4":
                cleaned = c4_clean_lines(page.text)
                c4_page = Page(cleaned)
                if self.config.c4_clean_lines:
                    page = c4_page
            for rule in rules:
                value = rule.signal(c4_page if name == "c4" else page)
                signals[rule.name] = value
                if rule.fails(value, self.bounds[rule.name]):
                    failed.append(rule.name)
        return page.text, signals, failed

    def describe(self, failed: list[str], signals: dict[str, float]) -> str:
        return "; ".join(f"{name}={signals[name]:.4g} (min {self.bounds[name][0]}, "
                         f"max {self.bounds[name][1]})" for name in failed)


class HeuristicsFn(ScoreBatchFn):
    stage = "heuristics"

    def load_model(self) -> Heuristics:
        return Heuristics(self.config)

    def score(self, batch) -> Scored:
        names = self.model.rule_names
        texts = batch.column(TEXT).to_pylist()
        columns: dict[str, list] = {name: [] for name in names}
        new_texts, drops, details = [], [], []
        for text in texts:  # a text that raises fails alone (the base's row-by-row retry)
            new_text, signals, failed = self.model.evaluate(text)
            new_texts.append(new_text)
            drops.append(failed[0] if failed and self.config.drop else None)
            details.append(self.model.describe(failed, signals))
            for name in names:
                columns[name].append(signals.get(name))
        scored = Scored(drop_reasons=drops, details=details)
        if self.config.columns:
            scored.columns = dict(columns)
        if self.config.c4_clean_lines and "c4" in self.config.rule_sets:
            scored.columns[TEXT] = new_texts
        return scored


class HeuristicsStage(ScoringStage):
    """Gopher / C4 / FineWeb rules as a stage (see the module docstring)."""

    Config = HeuristicsConfig

    def __init__(self, config: HeuristicsConfig, context=None):
        super().__init__(config, context)
        # unknown rule names and a missing word list fail before the run
        self.rule_names = Heuristics(config).rule_names

    def contract(self) -> Contract:
        signals = tuple(self.rule_names) if self.config.columns else ()
        return Contract(writes=signals)

    def score_fn(self) -> HeuristicsFn:
        return HeuristicsFn(self.config)
