"""The `substring_dedup` stage: exact-substring deduplication (Lee et al. 2022, "Deduplicating
Training Data Makes Language Models Better"; used by Nemotron-CC) within shard groups.

Tokens are whitespace tokens (`\\S+`): spans are cut on word boundaries and the remaining text
keeps its own spacing, with no tokenizer dependency (Lee et al. count 50 GPT-2 BPE tokens, ~35-40
words of English; the default `min_tokens: 50` words is a little more conservative). Each distinct
token gets a dense id; the documents of a group, in id order, are
concatenated with a distinct separator id after each (so no match crosses documents), and
`pydivsufsort` (libdivsufsort, MIT) builds the suffix array, Kasai's algorithm the LCP array.

Adjacent suffixes with LCP >= k share their first k tokens, so runs of LCP >= k in suffix-array
order are the occurrences of one repeated k-gram. In each run the smallest position is the first
occurrence and is kept; every later occurrence marks its k tokens for removal, less any token
covered by a first occurrence (so a sequence repeated back to back keeps one copy). Documents are
split into `groups` shard groups by a hash of their id (Beam shuffle, pieces through files on the
local runner); each group is deduplicated in one worker's memory (bench/substring_dedup.py
measured ~54 bytes of peak memory per whitespace token, ~6 s per 3.2M tokens, on 2 cores). Documents left empty are dropped (`substring_dedup_empty`);
every document gets `substring_dedup_removed_tokens`.
"""
from __future__ import annotations

import re
import tempfile
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import xxhash
from apache_beam.io.filesystems import FileSystems

from transforms.core.accounting import Rejects, count
from transforms.core.config import ConfigError, config_dataclass, is_local
from transforms.core.documents import ID, SOURCE, TEXT, with_column
from transforms.core.extras import require
from transforms.core.progress import Progress
from transforms.core.stage import REJECTS, Contract, Stage, documents_and_rejects
from transforms.dedup.shuffle import Shuffle

EMPTY = "substring_dedup_empty"
REMOVED_TOKENS = "substring_dedup_removed_tokens"
_TOKEN = re.compile(r"\S+")


@config_dataclass
class SubstringDedupConfig:
    min_tokens: int = 50   # shortest repeated span removed, in whitespace tokens
    groups: int = 1        # shard groups (each one worker's suffix array): ~1 per GB of text

    def __post_init__(self):
        if self.min_tokens < 1 or self.groups < 1:
            raise ValueError("min_tokens and groups must be positive")


def repeated_mask(ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of `ids` (int32; separators unique) inside later occurrences of a k-gram that
    occurred earlier, less the positions of first occurrences."""
    from pydivsufsort import divsufsort, kasai

    n = len(ids)
    if n < 2 * k:
        return np.zeros(n, bool)
    sa = divsufsort(ids)  # int32
    link = kasai(ids, sa)[:-1] >= k  # lcp[i] = LCP(sa[i], sa[i + 1])
    if not link.any():
        return np.zeros(n, bool)
    # only suffixes in runs of 2+ joined by links matter; a run starts where no link precedes
    member = np.zeros(n, bool)
    member[:-1] |= link
    member[1:] |= link
    idx = np.flatnonzero(member)
    linked_before = np.zeros(len(idx), bool)
    inner = idx > 0
    linked_before[inner] = link[idx[inner] - 1]
    del member, link
    starts = np.flatnonzero(~linked_before)
    positions = sa[idx]
    del sa
    first = np.minimum.reduceat(positions, starts)
    run_of = np.repeat(np.arange(len(starts), dtype=np.int32), np.diff(np.r_[starts, len(idx)]))
    is_first = positions == first[run_of]
    return _cover(positions[~is_first], k, n) & ~_cover(positions[is_first], k, n)


def _cover(starts: np.ndarray, k: int, n: int) -> np.ndarray:
    diff = np.zeros(n + 1, np.int32)
    np.add.at(diff, starts, 1)
    np.add.at(diff, np.minimum(starts.astype(np.int64) + k, n), -1)
    return np.cumsum(diff[:-1]) > 0


def dedup_texts(texts: list[str], min_tokens: int = 50) -> tuple[list[str], list[int]]:
    """Texts in keep-first order -> (texts with later repeated spans cut, tokens removed)."""
    vocab: dict[str, int] = {}
    lengths = np.zeros(len(texts), np.int64)
    parts = []
    for d, text in enumerate(texts):
        tokens = (text or "").split()
        lengths[d] = len(tokens)
        parts.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), np.int32,
                                 count=len(tokens)))
        parts.append(np.array([-1], np.int32))  # separator, numbered below
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    del parts
    ends = np.cumsum(lengths + 1) - 1  # separator positions: one distinct id per document
    ids[ends] = len(vocab) + np.arange(len(texts), dtype=np.int32)
    removed = repeated_mask(ids, min_tokens)
    out, removed_counts = [], []
    for d, text in enumerate(texts):
        mask = removed[ends[d] - lengths[d]:ends[d]]
        n_removed = int(mask.sum())
        removed_counts.append(n_removed)
        out.append(text if not n_removed else
                   _cut(text, [m.span() for m in _TOKEN.finditer(text)], mask))
    return out, removed_counts


def _cut(text: str, spans: list[tuple[int, int]], mask: np.ndarray) -> str:
    """The text without its masked tokens (each removed run takes the whitespace after it)."""
    pieces, position, i, n = [], 0, 0, len(spans)
    while i < n:
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < n and mask[j]:
            j += 1
        start = spans[i][0]
        end = spans[j][0] if j < n else len(text)
        pieces.append(text[position:start])
        position = end
        i = j
    pieces.append(text[position:])
    result = "".join(pieces)
    return result.rstrip() if mask[-1] else result


class GroupDedupFn(beam.DoFn):
    """One shard group's documents (a table) -> deduplicated batches; emptied ones dead-letter."""

    def __init__(self, config: SubstringDedupConfig):
        self.config = config

    def setup(self):
        self.progress = Progress("substring_dedup")

    def process(self, table: pa.Table):
        table = table.sort_by([(ID, "ascending")])
        texts = table.column(TEXT).to_pylist()
        new, removed = dedup_texts(texts, self.config.min_tokens)
        count("substring_dedup.tokens_removed", sum(removed))
        batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
        if batch is None:
            return
        batch = with_column(batch, TEXT, pa.array(new, batch.schema.field(TEXT).type))
        batch = with_column(batch, REMOVED_TOKENS, pa.array(removed, pa.int64()))
        empty = [i for i, t in enumerate(new) if not (t or "").strip() and (texts[i] or "").strip()]
        if empty:
            rejects = Rejects("substring_dedup")
            ids = batch.column(ID).to_pylist()
            sources = (batch.column(SOURCE).to_pylist() if SOURCE in batch.schema.names
                       else [None] * batch.num_rows)
            for i in empty:
                rejects.drop(EMPTY, ids[i], sources[i], {ID: ids[i], TEXT: texts[i]},
                             "every token is in a repeated span")
            keep = np.ones(batch.num_rows, bool)
            keep[empty] = False
            batch = batch.filter(pa.array(keep))
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())
        self.progress.add(table.num_rows)
        # batches of at most 1000 rows, as ingest makes them
        for lo in range(0, batch.num_rows, 1000):
            yield batch.slice(lo, 1000)


def _id_keys(table: pa.Table) -> np.ndarray:
    ids = table.column(ID).cast(pa.string()).to_pylist()
    return np.fromiter((xxhash.xxh3_64_intdigest((i or "").encode("utf-8", "surrogatepass")) for i in ids), np.uint64, count=len(ids))


class SubstringDedup(Stage):
    """Exact-substring dedup within shard groups (module docstring)."""

    Config = SubstringDedupConfig

    def __init__(self, config: SubstringDedupConfig, context=None):
        super().__init__(config, context)
        require("cleaning", "pydivsufsort", by="stage 'substring_dedup'")

    def contract(self) -> Contract:
        return Contract(writes=(REMOVED_TOKENS,))

    def expand(self, documents):
        options = documents.pipeline.options
        spill_dir = None
        if is_local(options):
            if self.context is not None:
                spill_dir = FileSystems.join(self.context.staging_dir,
                                             f"spill-{uuid.uuid4().hex}")
            else:
                self._spill_folder = tempfile.TemporaryDirectory(prefix="sluice-substring-")
                spill_dir = self._spill_folder.name
        elif self.context is None:
            raise ConfigError("substring_dedup on a remote runner: run it in a Sluice job")
        grouped = documents | "Group" >> Shuffle(_id_keys, self.config.groups,
                                                 spill_dir=spill_dir)
        return documents_and_rejects(grouped, "Dedup", GroupDedupFn(self.config))
