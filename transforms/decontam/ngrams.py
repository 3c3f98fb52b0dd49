"""Evaluation-set n-grams: loading eval items, hashing their n-grams, matching documents.

Normalisation (the same for eval items and documents, docs/decontamination.md):

1. lowercase (Arrow's `utf8_lower`);
2. every character that is not a Unicode letter, a Unicode digit or `_` (the complement of
   `[\\p{L}\\p{N}_]`) separates words: punctuation, symbols and whitespace are dropped;
3. words are the maximal runs left between separators.

This is the dedup stage's tokeniser (`transforms.dedup.minhash.Shingling.tokens`), so
`has_close_elements(numbers: List[float])` is the words `has_close_elements numbers list float`.

Each word is hashed with xxh3-64 of its UTF-8 bytes, and n consecutive word hashes are rolled into
one 64-bit n-gram hash (`transforms.dedup.minhash.unit_ngram_hashes`). An eval item is a set of (n-gram hash, position)
pairs; the index of all items is three numpy arrays sorted by hash (hash, item, position), so a
document's n-grams are looked up with one `searchsorted` per batch.

Rules, per (document, eval item):

- `any` (GPT-3, Brown et al. 2020, appendix C; 13-grams by default): the item is found in the
  document when one of the item's n-grams occurs in it.
- `fraction` (TULU 3 / open-instruct `decontamination/search.py`, 8-grams by default): the item is
  found when the fraction of the item's words covered by its n-grams that occur in the document
  is >= `threshold`. Word coverage, not the fraction of n-grams, is our reading of open-instruct's
  `ngram_match` (docs/decontamination.md).

Items with fewer than n words have no n-gram and are never found; they are counted as `too_short`
in the report.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import pyarrow as pa
import xxhash
from apache_beam.io.filesystems import FileSystems

from transforms.core.config import ConfigError
from transforms.dedup.minhash import Shingling, unit_ngram_hashes
from transforms.io.ingest import Failure, read_jsonl, read_parquet

ID_FIELDS = ("id", "task_id", "question_id", "idx")  # item ids, when id_field is not given
_WORD = re.compile(r"[^\W]+")  # Python's Unicode \w runs: the same words, with character offsets


def tokens(texts: pa.Array) -> pa.ListArray:
    """The normalised words of every text (module docstring)."""
    return Shingling(ngram=1).tokens(texts)


def ngram_hashes(texts: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n-gram hashes, per-text offsets into them, word counts) of every text. A text with fewer
    than n words gives no n-gram."""
    words = tokens(texts)
    hashes, offsets = Shingling(ngram=n).shingle_hashes(words)
    lengths = np.asarray(words.value_lengths().fill_null(0), dtype=np.int64)
    short = lengths < n  # the shingler gives such texts one shingle of all their words: not ours
    if short.any():
        keep = np.ones(len(hashes), dtype=bool)
        keep[offsets[:-1][short & (lengths > 0)]] = False
        counts = np.diff(offsets) - (short & (lengths > 0))
        hashes = hashes[keep]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return hashes, offsets, lengths


# --- eval items ----------------------------------------------------------------------------------

@dataclass
class EvalItems:
    """The items of one eval set: ids and texts, in file order."""

    name: str
    ids: list[str]
    texts: list[str]


class _Fields(dict):
    def __missing__(self, key):
        raise KeyError(key)


def item_text(record: dict, text_field: Optional[str], template: Optional[str]) -> str:
    """An eval record's text: its `text_field`, or `template` filled from its fields (lists
    joined by spaces, so `{choices}` of MMLU is the four choices)."""
    def flat(value) -> str:
        if value is None:
            return ""
        if isinstance(value, (list, tuple)):
            return " ".join(flat(v) for v in value)
        if isinstance(value, dict):
            return " ".join(flat(v) for v in value.values())
        return str(value)

    if template is not None:
        return string.Formatter().vformat(template, (), _Fields(
            {k: flat(v) for k, v in record.items()}))
    return flat(record[text_field])


def read_eval_items(name: str, path: str, text_field: Optional[str] = None,
                    template: Optional[str] = None, id_field: Optional[str] = None,
                    format: str = "auto") -> EvalItems:
    """Every record of the eval files `path` (a glob; JSONL, .gz/.zst, or Parquet) as an item.
    Raises ConfigError for a missing file or field: a job-level problem."""
    if (text_field is None) == (template is None):
        raise ConfigError(f"eval set '{name}': give text_field or template (one of them)")
    try:
        files = sorted(m.path for m in FileSystems.match([path])[0].metadata_list)
    except Exception as exc:  # noqa: BLE001  Beam raises its own error types per filesystem
        raise ConfigError(f"eval set '{name}': cannot list '{path}': {exc}") from None
    if not files:
        raise ConfigError(f"eval set '{name}': no file matches '{path}'")
    ids, texts = [], []
    for file in files:
        kind = format if format != "auto" else (
            "parquet" if file.lower().endswith((".parquet", ".pq")) else "jsonl")
        reader = read_parquet if kind == "parquet" else read_jsonl
        for record in reader(file):
            if isinstance(record, Failure):
                raise ConfigError(f"eval set '{name}': {file}: unreadable record "
                                  f"({record.reason})")
            try:
                text = item_text(record, text_field, template)
            except KeyError as exc:
                raise ConfigError(f"eval set '{name}': {file}: no field {exc} (fields: "
                                  f"{', '.join(sorted(record))})") from None
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"eval set '{name}': template {template!r}: {exc}") from None
            field = id_field or next((f for f in ID_FIELDS if f in record), None)
            if id_field is not None and id_field not in record:
                raise ConfigError(f"eval set '{name}': {file}: no id field '{id_field}'")
            ids.append(str(record[field]) if field else str(len(ids)))
            texts.append(text)
    return EvalItems(name, ids, texts)


# --- the index -----------------------------------------------------------------------------------

class EvalIndex:
    """Every eval item's n-grams, for lookups: `hashes` sorted, with `items` (global item index)
    and `positions` (word position of the n-gram in its item) in the same order."""

    def __init__(self, sets: Iterable[EvalItems], n: int):
        self.n = n
        self.set_names: list[str] = []
        self.item_set: list[int] = []       # global item -> set index
        self.item_ids: list[str] = []
        parts_hash, parts_item, parts_pos, words = [], [], [], []
        base = 0
        for k, items in enumerate(sets):
            self.set_names.append(items.name)
            hashes, offsets, lengths = ngram_hashes(pa.array(items.texts, pa.large_string()), n)
            counts = np.diff(offsets)
            item = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
            parts_hash.append(hashes)
            parts_item.append(item + base)
            parts_pos.append(np.arange(len(hashes), dtype=np.int64) - offsets[:-1][item])
            words.append(lengths)
            self.item_set += [k] * len(items.ids)
            self.item_ids += items.ids
            base += len(items.ids)
        hashes = np.concatenate(parts_hash) if parts_hash else np.zeros(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.items = np.concatenate(parts_item)[order].astype(np.int32) if parts_hash else \
            np.zeros(0, np.int32)
        self.positions = np.concatenate(parts_pos)[order].astype(np.int32) if parts_hash else \
            np.zeros(0, np.int32)
        self.item_words = np.concatenate(words) if words else np.zeros(0, np.int64)
        self.item_set_array = np.asarray(self.item_set, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.item_ids)

    def too_short(self) -> list[int]:
        """Per set, the items with fewer than n words (never found)."""
        short = self.item_words < self.n
        return [int(short[self.item_set_array == k].sum()) for k in range(len(self.set_names))]

    def hits(self, hashes: np.ndarray, doc_of: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
        """(document, item, position) of every index entry whose n-gram occurs in a document,
        each once. `doc_of[i]` is the document of `hashes[i]`."""
        if not len(self.hashes) or not len(hashes):
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        left = np.searchsorted(self.hashes, hashes, side="left")
        found = self.hashes[np.minimum(left, len(self.hashes) - 1)] == hashes
        if not found.any():
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        hashes, doc_of, left = hashes[found], doc_of[found], left[found]
        right = np.searchsorted(self.hashes, hashes, side="right")
        width = right - left
        entry = np.repeat(left - np.cumsum(width) + width, width) + np.arange(int(width.sum()))
        docs = np.repeat(doc_of, width)
        triples = np.unique(np.stack([docs, self.items[entry].astype(np.int64),
                                      self.positions[entry].astype(np.int64)]), axis=1)
        return triples[0], triples[1], triples[2]

    def found(self, docs: np.ndarray, items: np.ndarray, positions: np.ndarray,
              threshold: Optional[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document, item, word coverage) of the items found in documents: every item with a hit
        when `threshold` is None (rule `any`), else those whose coverage is >= threshold.
        Triples must be unique and sorted by (document, item, position), as `hits` gives them."""
        if not len(docs):
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0)
        same = (docs[1:] == docs[:-1]) & (items[1:] == items[:-1])
        starts = np.r_[True, ~same]
        # the words an n-gram at `p` covers, less the overlap with the next n-gram of the group
        step = np.where(np.r_[same, False], np.r_[positions[1:] - positions[:-1], 0], self.n)
        covered = np.minimum(step, self.n)
        group = np.cumsum(starts) - 1
        words = np.bincount(group, weights=covered)
        g_docs, g_items = docs[starts], items[starts]
        coverage = words / np.maximum(self.item_words[g_items], 1)
        keep = np.ones(len(g_docs), dtype=bool) if threshold is None else (
            coverage >= threshold - 1e-12)
        return g_docs[keep], g_items[keep], coverage[keep]


def word_spans(text: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n-gram hashes, start offsets, end offsets) of one text's n-grams in characters of
    `text`: the word of position p spans [start[p], end[p + n - 1]). Words are Python's `\\w`
    runs, which equal the normalisation's words (module docstring) for the texts we redact."""
    matches = list(_WORD.finditer(text))
    if len(matches) < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    units = np.fromiter((xxhash.xxh3_64_intdigest(m.group().lower().encode("utf-8"))
                         for m in matches), dtype=np.uint64, count=len(matches))
    hashes, _ = unit_ngram_hashes(units, np.array([0, len(units)], dtype=np.int64), n)
    starts = np.fromiter((m.start() for m in matches), dtype=np.int64, count=len(matches))
    ends = np.fromiter((m.end() for m in matches), dtype=np.int64, count=len(matches))
    return hashes, starts[: len(hashes)], ends[n - 1:]


def redact(text: str, n: int, wanted: np.ndarray, replacement: str = "") -> tuple[str, int]:
    """`text` with the character spans of its n-grams whose hash is in `wanted` (sorted) merged
    and replaced; returns (text, characters removed)."""
    hashes, starts, ends = word_spans(text, n)
    if not len(hashes) or not len(wanted):
        return text, 0
    at = np.searchsorted(wanted, hashes)
    hit = wanted[np.minimum(at, len(wanted) - 1)] == hashes
    if not hit.any():
        return text, 0
    pieces, last, removed = [], 0, 0
    span_start, span_end = None, None
    for s, e in zip(starts[hit].tolist(), ends[hit].tolist()):
        if span_end is not None and s <= span_end:
            span_end = max(span_end, e)
            continue
        if span_end is not None:
            pieces += [text[last:span_start], replacement]
            removed += span_end - span_start
            last = span_end
        span_start, span_end = s, e
    pieces += [text[last:span_start], replacement, text[span_end:]]
    removed += span_end - span_start
    return "".join(pieces), removed
