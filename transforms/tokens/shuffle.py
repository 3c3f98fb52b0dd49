"""A seeded global shuffle of documents across `shards` output shards, in bounded memory.

Each document gets a random 64-bit key, `xxh3_64(id, seed)`: the same id and seed give the same
key on any worker, so the shuffle does not depend on the runner, the worker count or the batch
size. The key's range is cut into `shards` equal parts: a document goes to shard
`key * shards >> 64`. Batches are split by shard and grouped by shard through Beam's
GroupByKey, and each shard is written in key order (ties by id):

    sorted runs: a shard's batches are buffered up to `run_bytes`, sorted by key and spilled as
    an Arrow IPC stream; when the shard had more than one run, the runs are merged (a heap over
    one batch of each run) and streamed to the writer. A shard that fits in one run is sorted
    in memory and never spilled.

Memory per shard writer: one run (`run_bytes`) while spilling, then one batch per run while
merging. The documents end up uniformly spread over shards and in a random order within each.
"""
from __future__ import annotations

import heapq
import uuid
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import xxhash
from apache_beam.io.filesystems import FileSystems

from transforms.core.documents import ID
from transforms.core.files import RAW

KEY = "shuffle_key"
_OUT_ROWS = 1024


def shuffle_key(doc_id: str, seed: int) -> int:
    """The document's random key: uniform over 64 bits, fixed by id and seed."""
    return xxhash.xxh3_64_intdigest(doc_id.encode("utf-8", "surrogatepass"), seed=seed)


def shard_of(key: int, shards: int) -> int:
    return (key * shards) >> 64


class KeyByShardFn(beam.DoFn):
    """A batch -> (shard, the batch's rows of that shard, with their `shuffle_key`)."""

    def __init__(self, seed: int, shards: int):
        self.seed = seed
        self.shards = shards

    def process(self, batch: pa.RecordBatch):
        keys = [shuffle_key(str(i), self.seed) for i in batch.column(ID).to_pylist()]
        shard = np.array([shard_of(k, self.shards) for k in keys], dtype=np.int64)
        batch = batch.append_column(KEY, pa.array(keys, type=pa.uint64()))
        for s in np.unique(shard):
            yield int(s), batch.filter(pa.array(shard == s))


def _sorted(batches: list[pa.RecordBatch]) -> pa.Table:
    return pa.Table.from_batches(batches).sort_by([(KEY, "ascending"), (ID, "ascending")])


def sorted_batches(batches: Iterable[pa.RecordBatch], run_bytes: int,
                   spill_dir: str) -> Iterator[pa.RecordBatch]:
    """`batches` in (key, id) order, in memory bounded by `run_bytes` (see the module doc)."""
    buffer: list[pa.RecordBatch] = []
    size = 0
    runs: list[str] = []
    try:
        for batch in batches:
            buffer.append(batch)
            size += batch.nbytes
            if size >= run_bytes:
                runs.append(_spill(_sorted(buffer), spill_dir))
                buffer, size = [], 0
        if not runs:
            if buffer:
                yield from _sorted(buffer).to_batches(max_chunksize=_OUT_ROWS)
            return
        if buffer:
            runs.append(_spill(_sorted(buffer), spill_dir))
        buffer = []
        yield from _merge(runs)
    finally:
        if runs:
            try:
                FileSystems.delete(runs)
            except Exception:  # pylint: disable=broad-except
                pass


def _spill(table: pa.Table, spill_dir: str) -> str:
    path = FileSystems.join(spill_dir, f"run-{uuid.uuid4().hex}.arrow")
    with FileSystems.create(path, compression_type=RAW) as handle:
        with pa.ipc.new_stream(handle, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=_OUT_ROWS):
                writer.write_batch(batch)
    return path


def _rows(path: str) -> Iterator[tuple[int, str, pa.RecordBatch, int]]:
    with FileSystems.open(path, compression_type=RAW) as handle:
        for batch in pa.ipc.open_stream(handle):
            keys, ids = batch.column(KEY).to_pylist(), batch.column(ID).to_pylist()
            for row in range(batch.num_rows):
                yield keys[row], ids[row], batch, row


def _merge(runs: list[str]) -> Iterator[pa.RecordBatch]:
    """The sorted runs merged: a heap over one row iterator per run (one batch of each in
    memory); output in batches of up to `_OUT_ROWS` rows, taken as slices of run batches."""
    picks: list[pa.RecordBatch] = []
    for _, _, batch, row in heapq.merge(*(_rows(p) for p in runs), key=lambda r: (r[0], r[1])):
        picks.append(batch.slice(row, 1))
        if len(picks) == _OUT_ROWS:
            yield pa.Table.from_batches(picks).combine_chunks().to_batches()[0]
            picks = []
    if picks:
        yield pa.Table.from_batches(picks).combine_chunks().to_batches()[0]
