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
import unicodedata
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
    `drop: false` only annotates (filter later with the `filter` stage); `profile` pins a
    reference's definitions (see PROFILES), the other keys still override it."""

    profile: Optional[Literal["fineweb", "gopher", "c4", "dclm", "refinedweb"]] = None
    rule_sets: Optional[list[RuleSet]] = None  # default: the profile's, else all four in this order
    drop: bool = True
    columns: bool = False
    thresholds: dict[str, Bounds] = field(default_factory=dict)
    disable: list[str] = field(default_factory=list)
    c4_clean_lines: Optional[bool] = None  # default: the profile's; without one, true
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
        self.config = config
        self.profile = PROFILES[config.profile] if config.profile else None
        available = dict(self.profile.rule_sets if self.profile else RULE_SETS)
        known = {r.name for rules in available.values() for r in rules}
        for name in [*config.thresholds, *config.disable]:
            if name not in known and name != C4_BAD_WORDS:
                raise ConfigError(f"heuristics: unknown rule '{name}' (known: "
                                  f"{', '.join(sorted([*known, C4_BAD_WORDS]))})")
        rule_sets = config.rule_sets if config.rule_sets is not None else (
            list(available) if self.profile else ["gopher_repetition", "gopher_quality", "c4",
                                                  "fineweb"])
        for name in rule_sets:
            if name not in available:
                raise ConfigError(f"heuristics: profile '{config.profile}' has no rule set "
                                  f"'{name}' (it has: {', '.join(available)})")
        if config.c4_bad_words and C4_BAD_WORDS not in config.disable:
            available["c4"] = [*available.get("c4", []),
                               Rule(C4_BAD_WORDS, BadWords(config.c4_bad_words), max=0)]
        self.rule_sets = [(name, [r for r in available[name] if r.name not in config.disable])
                          for name in rule_sets]
        self.bounds = {r.name: (r.min, r.max) for _, rules in self.rule_sets for r in rules}
        for name, override in config.thresholds.items():
            self.bounds[name] = (override.min, override.max)
        clean = config.c4_clean_lines
        self.rewrites = "c4" in rule_sets and (
            clean if clean is not None else (self.profile.c4_rewrites if self.profile else True))

    @property
    def rule_names(self) -> list[str]:
        return [r.name for _, rules in self.rule_sets for r in rules]

    def evaluate(self, text: str) -> tuple[str, dict[str, float], list[str]]:
        """(text after C4 line cleaning if configured, signal per rule, failed rule names)."""
        signals: dict[str, float] = {}
        failed: list[str] = []
        page = self.profile.page(text) if self.profile else Page(text)
        for name, rules in self.rule_sets:
            rule_page = page
            if name == "c4":
                if self.profile:  # the C4 rules read the page's own C4 pass
                    c4_page = page.c4_page if hasattr(page, "c4_page") else page
                else:
                    rule_page = c4_page = Page(c4_clean_lines(page.text))
                if self.rewrites:
                    page = c4_page
            for rule in rules:
                value = rule.signal(rule_page)
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
        if self.model.rewrites:
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


# === Reference profiles ============================================================================
# A profile pins the definitions, tokenisation, denominators, punctuation sets, order and thresholds
# of one reference implementation; `heuristics: {profile: NAME}` selects it and `rule_sets`,
# `thresholds` and `disable` still override. Without a profile the rules above run unchanged.

# datatrove 0.10.1 `datatrove.utils.text.PUNCTUATION` and `TERMINAL_PUNCTUATION`.
DT_PUNCTUATION = ("!/\u2014\u201d:\uff05\uff11\u3008&(\u3001\u2501\\\u3010#%\u300c\u300d\uff0c\u3011"
                  "\uff1b+^]~\u201c\u300a\u201e';\u2019{|\u2236\xb4[=-`*\uff0e\uff08\u2013\uff1f"
                  "\uff01\uff1a$\uff5e\xab\u3009,><\u300b)?\uff09\u3002\u2026@_.\"}\u25ba\xbb"
                  + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)])))
DT_TERMINAL_PUNCTUATION = tuple(
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964"
    "\u0965\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803"
    "\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c"
    "\u1c7e\u1c7f\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f"
    "\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb"
    "\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57"
    "\U00010f58\U00010f59\U00010f86\U00010f87\U00010f88\U00010f89\U00011047\U00011048\U000110be"
    "\U000110bf\U000110c0\U000110c1\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd"
    "\U000111de\U000111df\U00011238\U00011239\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c"
    "\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf"
    "\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641"
    "\U00011642\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b"
    "\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f"
    "\U00016af5\U00016b37\U00016b38\U00016b44\U00016e98\U0001bc9f\U0001da88")
DT_PUNCTUATION_SET = frozenset(DT_PUNCTUATION).union(DT_TERMINAL_PUNCTUATION)
_SENTENCE_ENDS = frozenset(DT_TERMINAL_PUNCTUATION)  # spaCy's sentencizer (a near-identical set)


# --- datatrove's English word tokens: spaCy's blank English tokenizer, as a pure function --------
# spaCy 3's algorithm (split on whitespace; strip prefixes / suffixes, stopping at a special case;
# split infixes; URLs whole) with its English affix rules and special cases. Character classes are
# Unicode categories instead of spaCy's script lists, which only differs outside common scripts.

_SCAN = (*range(0x3400), *range(0xA000, 0xAC00), *range(0xFB00, 0x10000),
         *range(0x1D000, 0x1FC00))  # the scripts and symbol blocks web text uses


def _char_class(predicate) -> str:
    """A regex character class body (ranges) of the scanned code points `predicate` accepts."""
    codes = [c for c in _SCAN if predicate(chr(c))]
    out, i = [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        first, end = re.escape(chr(codes[i])), re.escape(chr(codes[j]))
        out.append(first if i == j else f"{first}-{end}")
        i = j + 1
    return "".join(out)


def _escaped(items: str) -> list[str]:
    return [re.escape(x) for x in items.split()]


_SP_PUNCT = "… …… , : ; ! ? ¿ ؟ ¡ ( ) [ ] { } < > _ # * & 。 ？ ！ ， 、 ； ： ～ · । ، ۔ ؛ ٪"
_SP_QUOTES = "' \" ” “ ` ‘ ´ ’ ‚ , „ » « 「 」 『 』 （ ） 〔 〕 【 】 《 》 〈 〉 〈 〉 ⟦ ⟧"
_SP_CURRENCY = ("$ £ € ¥ ฿ US$ C$ A$ ₽ ﷼ ₴ ₠ ₡ ₢ ₣ ₤ ₥ ₦ ₧ ₨ ₩ ₪ ₫ € ₭ ₮ ₯ ₰ ₱ ₲ ₳ ₴ ₵ ₶ ₷ ₸ "
                "₹ ₺ ₻ ₼ ₽ ₾ ₿")
_SP_UNITS = ("km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t "
             "lb oz m/s km/h kmh mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K %")
_SP_HYPHENS = "- – — -- --- —— ~"
# special cases kept whole (spaCy English: abbreviations, emoticons, ...)
_SP_WHOLE = (
    "(._.) ._. 0.0 0.o <.< >.< >.> Adm. Ak. Ala. Apr. Ariz. Ark. Aug. Bros. Calif. Co. Colo. Conn. "
    "Corp. D.C. Dec. Del. Dr. E.G. E.g. Feb. Fla. Ga. Gen. Gov. I.E. I.e. Ia. Id. Ill. Inc. Ind. "
    "Jan. Jr. Jul. Jun. Kan. Kans. Ky. La. Ltd. Mar. Mass. Md. Messrs. Mich. Minn. Miss. Mo. Mont. "
    "Mr. Mrs. Ms. Mt. N.C. N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Nov. O.O O.o Oct. Okla. Ore. "
    "Pa. Ph.D. Prof. Rep. Rev. S.C. Sen. Sep. Sept. St. Tenn. V.V Va. Wash. Wis. a. a.m. b. c. co. "
    "d. e. e.g. f. g. h. i. i.e. j. k. l. m. n. o. o.0 o.O o.o p. p.m. q. r. s. t. u. v. v.s. v.v "
    "vs. w. x. y. z. ä. ö. ü. ' '' 'Cause 'Cos 'Coz 'Cuz 'S 'bout 'cause 'cos 'coz 'cuz 'd 'em 'll "
    "'nuff 're 's (*_*) (-8 (-: (-; (-_-) (: (; (= (>_<) (^_^) (o: (¬_¬) (ಠ_ಠ) )-: ): -_- -__- 0_0 "
    "0_o 8) 8-) 8-D 8D :'( :') :'-( :'-) :( :(( :((( :() :) :)) :))) :* :-( :-(( :-((( :-) :-)) "
    ":-))) :-* :-/ :-0 :-3 :-> :-D :-O :-P :-X :-] :-o :-p :-x :-| :-} :/ :0 :1 :3 :> :D :O :P :X "
    ":] :o :o) :p :x :| :} :’( :’) :’-( :’-) ;) ;-) ;-D ;D ;_; </3 <3 <33 <333 =( =) =/ =3 =D =[ =] "
    "=| >:( >:o ><(((*> @_@ C++ Ma'am Ma’am O'clock O_O O_o Ol' Ol’ O’clock V_V XD XDD [-: [: [= "
    "\\\") ]= ^_^ ^__^ ^___^ and/or ma'am ma’am o'clock o_0 o_O o_o ol' ol’ o’clock v_v w/o xD xDD "
    "¯\\(ツ)/¯ ಠ_ಠ ಠ︵ಠ ‘S ‘s ’ ’Cause ’Cos ’Coz ’Cuz ’S ’bout ’cause ’cos ’coz ’cuz ’d ’em ’ll "
    "’nuff ’re ’s ’’ Doin' Doin’ Goin' Goin’ Havin' Havin’ Lovin' Lovin’ Nothin' Nothin’ Nuthin' "
    "Nuthin’ Somethin' Somethin’ doin' doin’ goin' goin’ havin' havin’ lovin' lovin’ nothin' "
    "nothin’ nuthin' nuthin’ somethin' somethin’").split()


def _contractions() -> dict[str, tuple[str, ...]]:
    """spaCy English's split special cases (pronoun and verb contractions, times, a few more)."""
    exc: dict[str, tuple[str, ...]] = {}

    def add(base: str, clitics: str) -> None:
        """`clitics`: space-separated endings, their tokens joined by '+' ("'ll+'ve")."""
        for word in (base, base.title()):
            for clitic in clitics.split():
                for apostrophe in ("'", "’"):
                    parts = tuple(clitic.replace("'", apostrophe).split("+"))
                    exc[word + "".join(parts)] = (word, *parts)

    add("i", "'m m 'ma ma 'll ll 'll+'ve ll+ve 'd d 'd+'ve d+ve 've ve")
    for p in ("you", "we", "they"):
        add(p, "'ll ll 'll+'ve ll+ve 'd d 'd+'ve d+ve 've ve 're re")
    for p in ("he", "she", "it"):
        add(p, "'ll ll 'll+'ve ll+ve 'd d 'd+'ve d+ve 's s")
    for w in ("who", "what", "when", "where", "why", "how", "there"):
        add(w, "'s s 'll ll 'll+'ve ll+ve 're re 've ve 'd d 'd+'ve d+ve")
    for w in ("that", "this"):
        add(w, "'s s 'll ll 'll+'ve ll+ve 'd d 'd+'ve d+ve")
    for w in ("these", "those"):
        add(w, "'ll ll 'll+'ve ll+ve 're re 've ve 'd d 'd+'ve d+ve")
    for verb in ("ca can could do does did had may might must need ought sha should wo would "
                 "has have is are was were dare").split():
        add(verb, "n't nt n't+'ve nt+ve")
    for verb in ("could might must should would").split():
        add(verb, "'ve ve")
    add("ai", "n't nt")
    for key, parts in {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                       "let's": ("let", "'s"), "c'mon": ("c'm", "on"), "y'all": ("y'", "all"),
                       "yall": ("y", "all"), "not've": ("not", "'ve"), "notve": ("not", "ve")
                       }.items():
        for k, p in ((key, parts), (key.title(), (parts[0].title(), *parts[1:]))):
            exc[k] = p
            exc[k.replace("'", "’")] = tuple(x.replace("'", "’") for x in p)
    for h in range(1, 13):
        for period in ("a.m.", "am", "p.m.", "pm"):
            exc[f"{h}{period}"] = (str(h), period)
    for word in ("Ill ill Its its Hell hell Shell shell Shed shed were Were Well well Whore "
                 "whore").split():
        exc.pop(word, None)
    return exc


class _SpacyEnglish:
    """Built once, on first use (the Unicode classes take a moment)."""

    def __init__(self):
        lower = _char_class(str.islower)
        upper = _char_class(str.isupper)
        alpha = _char_class(str.isalpha)
        icons = "[" + _char_class(lambda c: unicodedata.category(c) == "So") + "]"
        punct, quotes = _escaped(_SP_PUNCT), _escaped(_SP_QUOTES)
        currency, hyphens = _escaped(_SP_CURRENCY), "|".join(_escaped(_SP_HYPHENS))
        q = "".join(re.escape(x) for x in _SP_QUOTES.split())
        p = "".join(re.escape(x) for x in _SP_PUNCT.split() if len(x) == 1)
        prefixes = (["§", "%", "=", "—", "–", r"\+(?![0-9])"] + punct + [r"\.\.+", "…"] + quotes
                    + currency + [icons])
        suffixes = (punct + [r"\.\.+", "…"] + quotes + [icons]
                    + ["'s", "'S", "’s", "’S", "—", "–", r"(?<=[0-9])\+", r"(?<=°[FfCcKk])\.",
                       rf"(?<=[0-9])(?:{'|'.join(currency)})",
                       rf"(?<=[0-9])(?:{'|'.join(_escaped(_SP_UNITS))})",
                       rf"(?<=[0-9{lower}%²\-\+{p}{q}])\.", rf"(?<=[{upper}][{upper}])\."])
        infixes = [r"\.\.+", "…", icons, r"(?<=[0-9])[+\-\*^](?=[0-9-])",
                   rf"(?<=[{lower}{q}])\.(?=[{upper}{q}])", rf"(?<=[{alpha}]),(?=[{alpha}])",
                   rf"(?<=[{alpha}0-9])(?:{hyphens})(?=[{alpha}])",
                   rf"(?<=[{alpha}0-9])[:<>=/](?=[{alpha}])"]
        self.prefix = re.compile("|".join("^" + x for x in prefixes)).search
        self.suffix = re.compile("|".join(x + "$" for x in suffixes)).search
        self.infix = re.compile("|".join(infixes)).finditer
        # spaCy's URL_MATCH, shortened: a scheme, or lowercase host labels and top-level domain
        self.url = re.compile(r"^(?:(?i:https?|ftp)://\S+|www\.\S+\.\S+|"
                              r"(?:[a-z0-9\u00a1-\uffff][a-z0-9\u00a1-\uffff_-]*\.)+"
                              r"[a-z\u00a1-\uffff]{2,63}(?::\d+)?(?:/\S*)?)$").match
        self.special: dict[str, tuple[str, ...]] = {w: (w,) for w in _SP_WHOLE}
        self.special.update(_contractions())
        self.cache: dict[str, tuple[str, ...]] = {}

    def chunk(self, chunk: str) -> tuple[str, ...]:
        """The tokens of one whitespace-free chunk (spaCy's `_split_affixes` + `_attach_tokens`)."""
        special = self.special
        if chunk in special:
            return special[chunk]
        prefixes: list[str] = []
        suffixes: list[str] = []
        s, last = chunk, -1
        while s and len(s) != last:
            if s in special:
                break
            last = len(s)
            m = self.prefix(s)
            pre = m.end() if m else 0
            if pre and s[pre:] in special:
                prefixes.append(s[:pre])
                s = s[pre:]
                break
            m = self.suffix(s[pre:])
            suf = (m.end() - m.start()) if m else 0
            if suf and s[:-suf] in special:
                suffixes.append(s[-suf:])
                s = s[:-suf]
                break
            if pre and suf and pre + suf <= len(s):
                prefixes.append(s[:pre])
                suffixes.append(s[-suf:])
                s = s[pre:-suf]
            elif pre:
                prefixes.append(s[:pre])
                s = s[pre:]
            elif suf:
                suffixes.append(s[-suf:])
                s = s[:-suf]
            if s and s in special:
                break
        middle: list[str] = []
        if s:
            if s in special:
                middle = list(special[s])
            elif self.url(s):
                middle = [s]
            else:
                start = 0
                for m in self.infix(s):
                    if m.start() == 0:
                        continue
                    if m.start() != start:
                        middle.append(s[start:m.start()])
                    if m.start() != m.end():
                        middle.append(s[m.start():m.end()])
                    start = m.end()
                if start < len(s):
                    middle.append(s[start:])
        return (*prefixes, *middle, *reversed(suffixes))

    def __call__(self, text: str) -> list[str]:
        cache, out = self.cache, []
        if len(cache) > 500_000:
            cache.clear()
        for chunk in text.split():
            tokens = cache.get(chunk)
            if tokens is None:
                tokens = cache[chunk] = self.chunk(chunk)
            out.extend(tokens)
        return out


@lru_cache(maxsize=1)
def _spacy_english() -> _SpacyEnglish:
    return _SpacyEnglish()


def spacy_english_words(text: str) -> list[str]:
    """datatrove's English `split_into_words` (spaCy's blank English tokenizer, whitespace tokens
    dropped), as a pure function."""
    return _spacy_english()(text)


def sentencizer_count(tokens: list[str]) -> int:
    """Sentences spaCy's `sentencizer` finds in these tokens: one, plus one per token that is not
    punctuation and follows a sentence-final mark."""
    count, seen_end = 1 if tokens else 0, False
    for token in tokens:
        if token in _SENTENCE_ENDS:
            seen_end = True
        elif seen_end and not all(unicodedata.category(c).startswith("P") for c in token):
            count += 1
            seen_end = False
    return count


# --- datatrove 0.10.1 definitions ------------------------------------------------------------------

_DT_LINES = re.compile("\n+")
_DT_PARAGRAPHS = re.compile(r"\n{2,}")
DT_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
DT_C4_LINE_ENDS = (".", "?", "!", '"', "'")


def _dt_duplicates(items: list[str]) -> tuple[int, int]:
    """datatrove's `find_duplicates`: (items repeating an earlier one, their characters)."""
    seen: set[str] = set()
    items_dup = chars_dup = 0
    for item in items:
        if item in seen:
            items_dup += 1
            chars_dup += len(item)
        else:
            seen.add(item)
    return items_dup, chars_dup


def dt_c4(text: str, terminal_punct: bool) -> tuple[str, int, int, int]:
    """datatrove's `C4QualityFilter` (TFDS c4_utils): (kept lines joined, sentences in them, line of
    the first "lorem ipsum" or -1, line of the first curly brace or -1); the page rules only look
    at lines that survived the line rules before them, as in the reference."""
    kept, sentences, lorem, curly = [], 0, -1, -1
    for i, line in enumerate(text.splitlines()):
        line = line.strip()
        words = line.split()
        if any(len(w) > 1000 for w in words):
            continue
        line = DT_CITATION.sub("", line)
        if terminal_punct and (not line.endswith(DT_C4_LINE_ENDS) or line.endswith("...")):
            continue
        if len(words) < 3:
            continue
        lower = line.lower()
        if "lorem ipsum" in lower:
            lorem = i if lorem < 0 else lorem
        if "javascript" in lower:
            continue
        if "{" in line:
            curly = i if curly < 0 else curly
        if any(p in lower for p in C4_POLICY):
            continue
        sentences += sentencizer_count(spacy_english_words(line))
        kept.append(line)
    return "\n".join(kept).strip(), sentences, lorem, curly


class DatatrovePage(Page):
    """A page in datatrove's units: spaCy English word tokens (punctuation tokens included),
    character fractions over the whole text."""

    c4_terminal_punct = False

    @cached_property
    def words(self) -> list[str]:
        return spacy_english_words(self.text)

    @cached_property
    def non_symbol_word_lengths(self) -> np.ndarray:
        keep = self.per_word(lambda w: any(c not in DT_PUNCTUATION_SET for c in w)) > 0
        return self.word_lengths[keep]

    @cached_property
    def c4(self) -> tuple[str, int, int, int]:
        return dt_c4(self.text, self.c4_terminal_punct)

    @cached_property
    def c4_page(self) -> "DatatrovePage":
        return type(self)(self.c4[0])

    @cached_property
    def fineweb_lines(self) -> list[str]:
        return [line for line in self.text.split("\n") if line.strip() != ""]


class C4Page(DatatrovePage):
    c4_terminal_punct = True


def _per_text(page: Page, n: int) -> float:
    return n / max(len(page.text), 1)


def dt_duplicate_paragraph_fraction(page: Page) -> float:
    paragraphs = _DT_PARAGRAPHS.split(page.text.strip())
    return _dt_duplicates(paragraphs)[0] / len(paragraphs)


def dt_duplicate_paragraph_char_fraction(page: Page) -> float:
    return _per_text(page, _dt_duplicates(_DT_PARAGRAPHS.split(page.text.strip()))[1])


def dt_duplicate_line_fraction(page: Page) -> float:
    lines = _DT_LINES.split(page.text)
    return _dt_duplicates(lines)[0] / len(lines)


def dt_duplicate_line_char_fraction(page: Page) -> float:
    return _per_text(page, _dt_duplicates(_DT_LINES.split(page.text))[1])


def dt_top_ngram_char_fraction(page: Page, n: int) -> float:
    """The most frequent n-gram (the first seen among ties), space-joined, times its count, over
    all characters of the text (count 1 counts too)."""
    keys = page.ngram_keys(n)
    if not len(keys):
        return 0.0
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True,
                                          return_counts=True)
    top = counts.max()
    start = int(first[counts == top].min())
    chars = page.word_lengths[start: start + n].sum() + n - 1
    return _per_text(page, int(top * chars))


def dt_duplicate_ngram_char_fraction(page: Page, n: int) -> float:
    """datatrove's `find_all_duplicate`: scanning left to right, an n-gram seen before adds its
    characters (no spaces) and the scan jumps past it; over all characters of the text."""
    keys = page.ngram_keys(n)
    if not len(keys) or len(np.unique(keys)) == len(keys):
        return 0.0
    lengths = np.convolve(page.word_lengths, np.ones(n))[n - 1: len(page.words)]
    seen: set[int] = set()
    repeated, i, keys_list = 0.0, 0, keys.tolist()
    while i < len(keys_list):
        key = keys_list[i]
        if key in seen:
            repeated += lengths[i]
            i += n
        else:
            seen.add(key)
            i += 1
    return _per_text(page, int(round(repeated)))


def dt_non_symbol_word_count(page: DatatrovePage) -> float:
    return float(len(page.non_symbol_word_lengths))


def dt_mean_word_length(page: DatatrovePage) -> float:
    lengths = page.non_symbol_word_lengths
    return float(lengths.mean()) if len(lengths) else float("nan")


def hash_word_ratio(page: Page) -> float:
    return page.text.count("#") / max(len(page.words), 1)


def ellipsis_word_ratio(page: Page) -> float:
    return (page.text.count("...") + page.text.count("…")) / max(len(page.words), 1)


def dt_bullet_line_fraction(page: Page) -> float:
    lines = page.text.splitlines()
    return sum(s.lstrip().startswith(("•", "-")) for s in lines) / max(len(lines), 1)


def dt_ellipsis_line_fraction(page: Page) -> float:
    lines = page.text.splitlines()
    return sum(s.rstrip().endswith(("...", "…")) for s in lines) / max(len(lines), 1)


def _has_alpha(word: str) -> bool:
    return any(c.isalpha() for c in word)


def dt_alphabetic_word_fraction(page: Page) -> float:
    return float(page.per_word(_has_alpha).mean()) if page.words else 0.0


def distinct_stop_words(page: Page) -> float:
    """How many of the stop words occur (each once), as exact tokens (datatrove)."""
    return float(len(GOPHER_STOP_WORDS.intersection(page._vocabulary[1])))


def gopher_distinct_stop_words(page: Page) -> float:
    """How many of the stop words occur, lowercased with punctuation stripped (each once)."""
    words = {w.lower().strip(_PUNCT_STRIP) for w in page._vocabulary[1]}
    return float(len(GOPHER_STOP_WORDS.intersection(words)))


def c4_has_lorem_ipsum(page: DatatrovePage) -> float:
    return float(page.c4[2] >= 0)


def c4_has_curly_brace(page: DatatrovePage) -> float:
    return float(page.c4[3] >= 0)


def c4_line_sentences(page: DatatrovePage) -> float:
    return float(page.c4[1])


def fw_punctuation_line_fraction(page: DatatrovePage) -> float:
    lines = page.fineweb_lines
    return sum(line.endswith(DT_TERMINAL_PUNCTUATION) for line in lines) / max(len(lines), 1)


def fw_short_line_fraction(page: DatatrovePage) -> float:
    lines = page.fineweb_lines
    return sum(len(line) <= 30 for line in lines) / max(len(lines), 1)


def fw_duplicate_line_char_fraction(page: DatatrovePage) -> float:
    return _dt_duplicates(page.fineweb_lines)[1] / max(len(page.text) - page.text.count("\n"), 1)


def fw_newline_word_ratio(page: DatatrovePage) -> float:
    return page.text.count("\n") / max(len(page.words), 1)


# --- DCLM's RefinedWeb reproduction (baselines/mappers/filters/content_filters.py) ---------------

_DCLM_WORD = re.compile(r"\w+(?:['’.\-]\w+)*")


class DclmPage(Page):
    """Whitespace words for the quality rules; words without punctuation for length and
    repetition (DCLM: uniseg word segmentation, punctuation ignored; approximated by a regex)."""

    @cached_property
    def segmented(self) -> Page:
        page = Page(self.text)
        page.words = _DCLM_WORD.findall(self.text)
        return page

    @cached_property
    def lines(self) -> tuple[str, ...]:
        return tuple(line for line in self.text.split("\n") if line)

    @cached_property
    def paragraphs(self) -> tuple[str, ...]:
        return tuple(p for p in self.text.split("\n\n") if p)


def dclm_word_count(page: DclmPage) -> float:
    return float(len(page.segmented.words))


def dclm_symbol_word_ratio(page: Page) -> float:
    text = page.text
    symbols = sum(text.count(s) for s in ("#", "...", ". . .", "…"))
    return symbols / len(page.words) if page.words else float("inf")


def dclm_bullet_line_fraction(page: Page) -> float:
    return sum(line.startswith(("●", "•", "*", "-")) for line in page.lines) / max(len(page.lines), 1)


def dclm_ellipsis_line_fraction(page: Page) -> float:
    return (sum(line.endswith(("...", ". . .", "…")) for line in page.lines)
            / max(len(page.lines), 1))


def dclm_stop_word_count(page: Page) -> float:
    return float(page.per_word(lambda w: w.lower() in GOPHER_STOP_WORDS).sum())


def _dclm_repeated(items: tuple[str, ...]) -> tuple[float, float]:
    """(items in segments that occur more than once, all their occurrences / items; same in
    characters / all characters): DCLM counts first occurrences too."""
    if len(items) <= 1:
        return 0.0, 0.0
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    repeated = [(s, c) for s, c in counts.items() if c > 1]
    return (sum(c for _, c in repeated) / len(items),
            sum(len(s) * c for s, c in repeated) / max(sum(map(len, items)), 1))


def dclm_top_ngram_char_fraction(page: DclmPage, n: int) -> float:
    words = page.segmented
    keys = words.ngram_keys(n)
    if not len(keys):
        return 0.0
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    top = counts.max()
    if top < 2:
        return 0.0
    cum = np.concatenate([[0.0], np.cumsum(words.word_lengths)])
    longest = max(cum[s + n] - cum[s] for s in first[counts == top])  # the longest of the ties
    return float(top * longest / words.word_lengths.sum())


def dclm_duplicate_ngram_char_fraction(page: DclmPage, n: int) -> float:
    return duplicate_ngram_char_fraction(page.segmented, n)


@dataclass(frozen=True)
class Profile:
    """A reference's rule sets (in its order), its page units, and whether the C4 step's kept
    lines replace the text for the rule sets after it (and in the output)."""

    name: str
    rule_sets: dict[str, list[Rule]]
    page: type
    c4_rewrites: bool = False


def _rules(prefix: str, signal, limits) -> list[Rule]:
    return [_ngram_rule(prefix, signal, n, limit) for n, limit in limits]


_TOP = ((2, 0.20), (3, 0.18), (4, 0.16))
_DUP = tuple(zip(range(5, 11), (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)))
_DT_C4 = [Rule("c4_lorem_ipsum", c4_has_lorem_ipsum, max=0),
          Rule("c4_curly_brace", c4_has_curly_brace, max=0),
          Rule("c4_sentences", c4_line_sentences, min=5)]

PROFILES: dict[str, Profile] = {
    # datatrove 0.10.1: GopherRepetitionFilter, GopherQualityFilter,
    # C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter; defaults, English
    "fineweb": Profile("fineweb", {
        "gopher_repetition": [
            Rule("gopher_duplicate_paragraphs", dt_duplicate_paragraph_fraction, max=0.3),
            Rule("gopher_duplicate_paragraph_chars", dt_duplicate_paragraph_char_fraction,
                 max=0.2),
            Rule("gopher_duplicate_lines", dt_duplicate_line_fraction, max=0.3),
            Rule("gopher_duplicate_line_chars", dt_duplicate_line_char_fraction, max=0.2),
            *_rules("gopher_top", dt_top_ngram_char_fraction, _TOP),
            *_rules("gopher_duplicate", dt_duplicate_ngram_char_fraction, _DUP),
        ],
        "gopher_quality": [
            Rule("gopher_word_count", dt_non_symbol_word_count, min=50, max=100_000),
            Rule("gopher_mean_word_length", dt_mean_word_length, min=3, max=10),
            Rule("gopher_hash_ratio", hash_word_ratio, max=0.1),
            Rule("gopher_ellipsis_ratio", ellipsis_word_ratio, max=0.1),
            Rule("gopher_bullet_lines", dt_bullet_line_fraction, max=0.9),
            Rule("gopher_ellipsis_lines", dt_ellipsis_line_fraction, max=0.3),
            Rule("gopher_alphabetic_words", dt_alphabetic_word_fraction, min=0.8),
            Rule("gopher_stop_words", distinct_stop_words, min=2),
        ],
        "c4": _DT_C4,
        "fineweb": [
            Rule("fineweb_punctuation_lines", fw_punctuation_line_fraction, min=0.12),
            Rule("fineweb_short_lines", fw_short_line_fraction, max=0.67),
            Rule("fineweb_duplicate_line_chars", fw_duplicate_line_char_fraction, max=0.01),
            Rule("fineweb_list_ratio", fw_newline_word_ratio, max=0.3),
        ],
    }, DatatrovePage, c4_rewrites=True),
    # Rae et al. 2021, Table A1 and Sec. A.1.1: whitespace words; hash and ellipsis ratios apart;
    # "at least two of" the stop words (distinct)
    "gopher": Profile("gopher", {
        "gopher_quality": [
            Rule("gopher_word_count", word_count, min=50, max=100_000),
            Rule("gopher_mean_word_length", mean_word_length, min=3, max=10),
            Rule("gopher_hash_ratio", hash_word_ratio, max=0.1),
            Rule("gopher_ellipsis_ratio", ellipsis_word_ratio, max=0.1),
            Rule("gopher_bullet_lines", bullet_line_fraction, max=0.9),
            Rule("gopher_ellipsis_lines", ellipsis_line_fraction, max=0.3),
            Rule("gopher_alphabetic_words", alphabetic_word_fraction, min=0.8),
            Rule("gopher_stop_words", gopher_distinct_stop_words, min=2),
        ],
        "gopher_repetition": RULE_SETS["gopher_repetition"],
    }, Page),
    # Raffel et al. 2020 / TFDS c4_utils (as datatrove ports it, terminal punctuation on)
    "c4": Profile("c4", {"c4": _DT_C4}, C4Page, c4_rewrites=True),
    # DCLM's RefinedWeb reproduction (baselines_configs/refinedweb.yaml, the document rules)
    "dclm": Profile("dclm", {
        "gopher_quality": [
            Rule("gopher_word_count", dclm_word_count, min=50, max=100_000),
            Rule("gopher_mean_word_length", mean_word_length, min=3, max=10),
            Rule("gopher_symbol_word_ratio", dclm_symbol_word_ratio, max=0.1),
            Rule("gopher_bullet_lines", dclm_bullet_line_fraction, max=0.9),
            Rule("gopher_ellipsis_lines", dclm_ellipsis_line_fraction, max=0.3),
            Rule("gopher_alphabetic_words", alphabetic_word_fraction, min=0.8),
            Rule("gopher_stop_words", dclm_stop_word_count, min=2),
        ],
        "gopher_repetition": [
            Rule("gopher_duplicate_lines", lambda p: _dclm_repeated(p.lines)[0], max=0.3),
            Rule("gopher_duplicate_paragraphs", lambda p: _dclm_repeated(p.paragraphs)[0],
                 max=0.3),
            Rule("gopher_duplicate_line_chars", lambda p: _dclm_repeated(p.lines)[1], max=0.2),
            Rule("gopher_duplicate_paragraph_chars", lambda p: _dclm_repeated(p.paragraphs)[1],
                 max=0.2),
            *_rules("gopher_top", dclm_top_ngram_char_fraction, _TOP),
            *_rules("gopher_duplicate", dclm_duplicate_ngram_char_fraction, _DUP),
        ],
    }, DclmPage),
}
PROFILES["refinedweb"] = PROFILES["dclm"]
