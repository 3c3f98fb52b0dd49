"""The `line_dedup` stage: lines (or paragraphs) repeated across documents removed, as CCNet and
Dolma do, counted over the whole corpus in Beam.

1. Hash: every unit (`unit: line` splits on `\\n`; `paragraph` on blank lines) is normalised
   (lowercase, digits to 0, punctuation and symbols removed, whitespace collapsed, trimmed) and
   hashed with xxh3-64. Units that normalise to nothing (blank lines, `---`) are never touched.
   Each batch is spilled to a file; only (hash, id, batch, row) rows travel, one per distinct
   unit of a document.
2. Count: the rows are shuffled by hash (`transforms.dedup.shuffle`, pieces through files on the
   local runner), so each partition sees every document holding its hashes, however the input
   was split: a unit held by `min_count` (default 2) or more documents is a duplicate. It is
   removed from every document but the first (smallest id, then the batch/row of equal ids), or
   from all of them with `keep_first: false`. Memory per worker is its partition, not the corpus.
3. Apply: decisions go back to their spilled batch by key (CoGroupByKey); the batch's units are
   hashed again and the removed ones cut. A document's text is rebuilt only when something was
   removed (kept units joined by `\\n`, or `\\n\\n` for paragraphs); repeats inside one document
   are left alone. Documents left empty are dropped (`line_dedup_empty`); every document gets
   `line_dedup_removed_chars`.

Incremental (`index: DIR`): the hashes of a committed corpus, with the number of documents that
held each, count as held by earlier documents (so a line already in the corpus is removed from
every new document). `write_index: true` writes this run's counts to the job's
`line_index_update/` output; `commit_index(update, DIR)` adds them to the index atomically
(`transforms/dedup/index.py`'s shard-and-manifest layout). `sluice refresh` does not call it yet.
"""
from __future__ import annotations

import tempfile
import uuid
from typing import Literal, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from apache_beam.io.filesystems import FileSystems
from pydantic import model_validator

from transforms.core.accounting import Rejects, count
from transforms.core.config import ConfigError, config_dataclass, is_local, local_workers
from transforms.core.documents import ID, SOURCE, TEXT, with_column
from transforms.core.files import read_arrow, write_arrow_stream
from transforms.core.progress import Progress
from transforms.core.stage import REJECTS, Contract, Stage, documents_and_rejects
from transforms.dedup import index as shard_index
from transforms.dedup.shuffle import CoShuffle, column

EMPTY = "line_dedup_empty"
REMOVED_CHARS = "line_dedup_removed_chars"
INDEX_UPDATE = "line_index_update"
NORMALISATION = 1  # bump when `normalised` changes: an index is only valid for one version
_SPILLED = "spilled"
_INDEX = "index"
_PARAGRAPH_BREAK = r"\n[ \t\r]*\n[ \t\r\n]*"
INDEX_SCHEMA = pa.schema([("hash", pa.uint64()), ("count", pa.int64())])


@config_dataclass
class LineDedupConfig:
    unit: Literal["line", "paragraph"] = "line"
    min_count: int = 2             # documents holding a unit that make it a duplicate
    keep_first: bool = True        # keep it in the first document (smallest id); false: in none
    partitions: Optional[int] = None  # shuffle partitions; default as dedup's
    index: Optional[str] = None    # folder of committed unit hashes (a refresh's corpus)
    write_index: bool = False      # write this run's hashes to `line_index_update/`

    @model_validator(mode="after")
    def _check(self):
        if self.min_count < 2:
            raise ValueError(f"min_count must be at least 2, got {self.min_count}")
        if (self.partitions or 1) < 1:
            raise ValueError("partitions must be positive")
        if self.write_index and not self.index:
            raise ValueError("write_index needs index (the folder the update is for)")
        return self

    def index_params(self) -> dict:
        return {"kind": "line_dedup", "unit": self.unit, "hash": "xxh3_64",
                "normalisation": NORMALISATION}

    def shuffle_partitions(self, options) -> int:
        if self.partitions is not None:
            return self.partitions
        workers = local_workers(options)
        return 256 if workers is None else max(2, workers)


# --- per-batch unit hashing (pure) ---------------------------------------------------------------

def split_units(texts: pa.Array, unit: str) -> pa.ListArray:
    texts = texts.fill_null("")
    if unit == "paragraph":
        return pc.split_pattern_regex(texts, _PARAGRAPH_BREAK)
    return pc.split_pattern(texts, "\n")


def normalised(units: pa.Array) -> pa.Array:
    """CCNet-style normalisation: lowercase, digits -> 0, punctuation and symbols removed,
    whitespace collapsed and trimmed."""
    # RE2 classes: \p{..} are Unicode-aware, unlike \w and \d (ASCII only in RE2)
    units = pc.utf8_lower(units)
    units = pc.replace_substring_regex(units, r"\p{Nd}", "0")
    units = pc.replace_substring_regex(units, r"[\p{P}\p{S}]", "")
    units = pc.replace_substring_regex(units, r"[\s\p{Z}]+", " ")
    return pc.utf8_trim_whitespace(units)


def hash_units(units: pa.ListArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, row, unit position) of every unit whose normalised form is not empty."""
    flat = units.flatten()
    rows = pc.list_parent_indices(units).to_numpy()
    offsets = units.offsets.to_numpy()
    positions = np.arange(len(flat)) - (offsets[rows] - offsets[0]) if len(flat) else \
        np.zeros(0, np.int64)
    norm = normalised(flat)
    keep = pc.greater(pc.binary_length(norm), 0).to_numpy(zero_copy_only=False)
    values = norm.filter(pa.array(keep)).cast(pa.binary()).to_pylist()
    hashes = np.fromiter((xxhash.xxh3_64_intdigest(v) for v in values), dtype=np.uint64,
                         count=len(values))
    return hashes, rows[keep].astype(np.int32), positions[keep].astype(np.int32)


def hash_rows(batch: pa.RecordBatch, unit: str, batch_key: int) -> pa.Table:
    """One row per distinct unit of each document: hash, id, batch key, row."""
    hashes, rows, _ = hash_units(split_units(batch.column(TEXT), unit))
    table = pa.table({"hash": pa.array(hashes, pa.uint64()), "row": pa.array(rows, pa.int32())})
    table = table.group_by(["hash", "row"], use_threads=False).aggregate([])
    rows = column(table, "row")
    return pa.table({
        "hash": table.column("hash"),
        ID: batch.column(ID).take(pa.array(rows)).cast(pa.string()),
        "batch": pa.array(np.full(len(rows), batch_key, np.uint64)),
        "row": table.column("row"),
    })


# --- 2. count and decide (one hash partition) ------------------------------------------------------

def decide(parts: dict, min_count: int, keep_first: bool):
    """{new: rows of this run, index: committed (hash, count)} -> decisions (batch, row, hash)
    for removed units; `index` output: this run's (hash, count)."""
    new, old = parts.get("new"), parts.get(_INDEX)
    if new is None or not new.num_rows:
        return
    table = new.sort_by([("hash", "ascending"), (ID, "ascending"), ("batch", "ascending"),
                         ("row", "ascending")])
    hashes = column(table, "hash")
    starts = np.r_[True, hashes[1:] != hashes[:-1]]
    group = np.cumsum(starts) - 1
    first_rows = np.flatnonzero(starts)
    counts = np.diff(np.r_[first_rows, len(hashes)])
    old_counts = np.zeros(len(first_rows), np.int64)
    if old is not None and old.num_rows:
        old = old.group_by("hash", use_threads=False).aggregate([("count", "sum")])
        old_hash, old_count = column(old, "hash"), column(old, "count_sum")
        order = np.argsort(old_hash)
        old_hash, old_count = old_hash[order], old_count[order]
        at = np.searchsorted(old_hash, hashes[first_rows])
        found = (at < len(old_hash)) & (old_hash[np.minimum(at, len(old_hash) - 1)]
                                        == hashes[first_rows])
        old_counts[found] = old_count[at[found]]
    duplicate = (counts + old_counts) >= min_count
    spare = ~starts if keep_first else np.zeros(len(hashes), bool)
    removed = duplicate[group] & (spare | (old_counts[group] > 0))
    count("line_dedup.duplicate_units", int(duplicate.sum()))
    yield beam.pvalue.TaggedOutput(_INDEX, pa.table(
        {"hash": pa.array(hashes[first_rows], pa.uint64()), "count": pa.array(counts, pa.int64())},
        schema=INDEX_SCHEMA))
    if removed.any():
        mask = pa.array(removed)
        yield pa.table({"batch": table.column("batch").filter(mask),
                        "row": table.column("row").filter(mask),
                        "hash": table.column("hash").filter(mask)})


def by_batch(decisions: pa.Table):
    """(batch key, that batch's decisions as a compact table)."""
    batches = column(decisions, "batch")
    order = np.argsort(batches, kind="stable")
    sorted_batches = batches[order]
    starts = np.flatnonzero(np.r_[True, sorted_batches[1:] != sorted_batches[:-1]])
    ends = np.r_[starts[1:], len(sorted_batches)]
    table = decisions.select(["row", "hash"])
    for lo, hi in zip(starts, ends):
        yield int(sorted_batches[lo]), table.take(pa.array(order[lo:hi]))


# --- 3. apply ----------------------------------------------------------------------------------------

def apply_removals(batch: pa.RecordBatch, decisions: Optional[pa.Table], unit: str):
    """(batch with units removed and `line_dedup_removed_chars`, indices of emptied rows)."""
    n = batch.num_rows
    removed_chars = np.zeros(n, np.int64)
    if decisions is None or not decisions.num_rows:
        return with_column(batch, REMOVED_CHARS, pa.array(removed_chars)), []
    units = split_units(batch.column(TEXT), unit)
    hashes, rows, positions = hash_units(units)
    wanted = {(int(r), int(h)) for r, h in zip(column(decisions, "row"), column(decisions, "hash"))}
    cut: dict[int, set[int]] = {}
    for h, r, p in zip(hashes.tolist(), rows.tolist(), positions.tolist()):
        if (r, h) in wanted:
            cut.setdefault(r, set()).add(p)
    texts = batch.column(TEXT).to_pylist()
    separator = "\n\n" if unit == "paragraph" else "\n"
    emptied = []
    for r, positions_cut in cut.items():
        pieces = units[r].as_py()
        kept = [piece for i, piece in enumerate(pieces) if i not in positions_cut]
        text = separator.join(kept)
        if unit == "paragraph" or not text.strip():
            text = text.strip("\n") if text.strip() else ""
        removed_chars[r] = len(texts[r]) - len(text)
        texts[r] = text
        if not text.strip():
            emptied.append(r)
    count("line_dedup.units_removed", sum(len(p) for p in cut.values()))
    count("line_dedup.chars_removed", int(removed_chars.sum()))
    batch = with_column(batch, TEXT, pa.array(texts, batch.schema.field(TEXT).type))
    return with_column(batch, REMOVED_CHARS, pa.array(removed_chars)), emptied


class HashFn(beam.DoFn):
    """documents -> hash rows; the batch is spilled and leaves as (key, path) on `spilled`."""

    def __init__(self, config: LineDedupConfig, spill_dir: str):
        self.config, self.spill_dir = config, spill_dir

    def setup(self):
        self.progress = Progress("line_dedup")

    def process(self, batch):
        key = uuid.uuid4().int & 0xFFFFFFFFFFFFFFFF
        path = write_arrow_stream(batch, FileSystems.join(self.spill_dir, f"{key:016x}.arrow"))
        yield beam.pvalue.TaggedOutput(_SPILLED, (key, path))
        self.progress.add(batch.num_rows)
        yield hash_rows(batch, self.config.unit, key)


class ApplyFn(beam.DoFn):
    def __init__(self, config: LineDedupConfig):
        self.config = config

    def process(self, element):
        _, grouped = element
        decisions = [d for d in grouped["decisions"] if d.num_rows]
        table = pa.concat_tables(decisions) if decisions else None
        for path in grouped["spilled"]:
            for batch in read_arrow(path).to_batches():
                out, emptied = apply_removals(batch, table, self.config.unit)
                if emptied:
                    rejects = Rejects("line_dedup")
                    ids = out.column(ID).to_pylist()
                    sources = (out.column(SOURCE).to_pylist() if SOURCE in out.schema.names
                               else [None] * out.num_rows)
                    original = batch.column(TEXT).to_pylist()
                    for r in emptied:
                        payload = dict(batch.slice(r, 1).to_pylist()[0], text=original[r])
                        rejects.drop(EMPTY, ids[r], sources[r], payload,
                                     "every unit is repeated in other documents")
                    keep = np.ones(out.num_rows, bool)
                    keep[emptied] = False
                    out = out.filter(pa.array(keep))
                    yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())
                if out.num_rows:
                    yield out


class LineDedup(Stage):
    """Remove units repeated across documents (module docstring)."""

    Config = LineDedupConfig

    def contract(self) -> Contract:
        return Contract(writes=(REMOVED_CHARS,))

    def expand(self, documents):
        config, options = self.config, documents.pipeline.options
        partitions = config.shuffle_partitions(options)
        spill_dir = self._spill_dir(options)
        shuffle_dir = spill_dir if is_local(options) else None
        hashed = documents | "Hash" >> beam.ParDo(HashFn(config, spill_dir)).with_outputs(
            _SPILLED, main="rows")
        named = {"new": hashed.rows}
        key = {"new": _hash_key, _INDEX: _hash_key}
        if config.index:
            shards = shard_index.open_index(config.index, config.index_params(),
                                            create=config.write_index)
            named[_INDEX] = (documents.pipeline | "IndexShards" >> beam.Create(shards)
                             | "ReadIndex" >> shard_index.ReadIndex())
        decided = (named
                   | "CountGroup" >> CoShuffle({k: key[k] for k in named}, partitions,
                                               shuffle_dir)
                   | "Decide" >> beam.FlatMap(decide, config.min_count,
                                              config.keep_first).with_outputs(
                       _INDEX, main="decisions"))
        if config.write_index and self.context is not None:
            (decided[_INDEX]
             | "IndexBatches" >> beam.FlatMap(lambda t: t.combine_chunks().to_batches())
             | "WriteIndexUpdate" >> self.context.sink(INDEX_UPDATE, "index"))
        decisions = decided.decisions | "ByBatch" >> beam.FlatMap(by_batch)
        joined = ({"spilled": hashed[_SPILLED], "decisions": decisions}
                  | "JoinDecisions" >> beam.CoGroupByKey())
        return documents_and_rejects(joined, "Apply", ApplyFn(config))

    def _spill_dir(self, options) -> str:
        if self.context is not None:
            return FileSystems.join(self.context.staging_dir, f"spill-{uuid.uuid4().hex}")
        if is_local(options):
            self._spill_folder = tempfile.TemporaryDirectory(prefix="sluice-line-dedup-")
            return self._spill_folder.name
        raise ConfigError("line_dedup on a remote runner needs a job's staging folder: run it "
                          "in a Sluice job (JobContext)")


def _hash_key(table: pa.Table) -> np.ndarray:
    return column(table, "hash")


def commit_index(update_dir: str, directory: str, config: LineDedupConfig,
                 update_id: Optional[str] = None) -> dict:
    """Add a run's `line_index_update/` shards to the index in `directory`, atomically."""
    return shard_index.commit(update_dir, directory, config.index_params(), update_id)
