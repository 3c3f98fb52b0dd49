"""Key-partitioned shuffles of Arrow tables: Beam's GroupByKey with batches as elements.

Beam costs ~60 us per element, so dedup never shuffles one element per document or per edge.
Each batch is split by `hash(key) mod partitions` into at most `partitions` sub-tables; a
GroupByKey then brings every row of one partition to one worker, where numpy/Arrow group the
rows by their actual key. Memory per worker is the partition's size, so large corpora need more
partitions (the `partitions` setting).

With a spill folder (what dedup gives on the local runner), each piece is written to an Arrow
file and only its path travels: the FnApiRunner keeps every shuffled element in its own process,
so shuffling the tables themselves makes its memory grow with the corpus. Dataflow, Flink and
Spark shuffle outside the workers' memory, so there the tables travel as elements.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.core.files import read_arrow, write_arrow_stream
from transforms.dedup.minhash import fmix64


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    return (fmix64(np.asarray(keys, dtype=np.uint64)) % np.uint64(partitions)).astype(np.int64)


def scatter(table: pa.Table | pa.RecordBatch, keys: np.ndarray,
            partitions: int) -> Iterator[tuple[int, pa.Table]]:
    """(partition, rows of `table` whose key falls in it) for every non-empty partition."""
    if not table.num_rows:
        return
    parts = partition_of(keys, partitions)
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(partitions + 1))
    for partition in range(partitions):
        lo, hi = bounds[partition], bounds[partition + 1]
        if hi > lo:
            yield partition, _as_table(table.take(pa.array(order[lo:hi])))


def _as_table(data: pa.Table | pa.RecordBatch) -> pa.Table:
    return data if isinstance(data, pa.Table) else pa.Table.from_batches([data])


def gather(pieces: Iterable) -> pa.Table:
    """One table from a partition's pieces, stashed or not (all share one schema)."""
    return pa.concat_tables([unstash(piece) for piece in pieces]).combine_chunks()


@dataclass(frozen=True)
class Stashed:
    """A shuffle piece written to a file; the path travels instead of the rows."""

    path: str


def stash(piece: pa.Table, spill_dir: Optional[str]):
    """The piece as it travels: itself, or with a spill folder, a `Stashed` file."""
    if spill_dir is None:
        return piece
    return Stashed(write_arrow_stream(piece, FileSystems.join(spill_dir, f"{uuid.uuid4().hex}.arrow")))


def unstash(piece) -> pa.Table:
    return read_arrow(piece.path) if isinstance(piece, Stashed) else piece


class Shuffle(beam.PTransform):
    """Tables -> `then(table)` for one table per partition, rows partitioned by `key_fn(table)`
    (uint64 keys) after `prepare(table)`; three Beam transforms, whatever the functions.
    Pieces go through `spill_dir` when given (see the module docstring)."""

    def __init__(self, key_fn, partitions: int, prepare=None, then=None,
                 spill_dir: Optional[str] = None):
        super().__init__()
        self.key_fn = key_fn
        self.partitions = partitions
        self.prepare = prepare or _identity
        self.then = then or _identity
        self.spill_dir = spill_dir

    def expand(self, tables):
        key_fn, partitions, prepare, then = self.key_fn, self.partitions, self.prepare, self.then
        spill_dir = self.spill_dir

        def scatter_prepared(table):
            table = prepare(table)
            return ((p, stash(piece, spill_dir))
                    for p, piece in scatter(table, key_fn(table), partitions))

        return (tables
                | "Scatter" >> beam.FlatMap(scatter_prepared)
                | "Group" >> beam.GroupByKey()
                | "Gather" >> beam.MapTuple(lambda partition, pieces: then(gather(pieces))))


def _identity(value):
    return value


def column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


class CoShuffle(beam.PTransform):
    """Several named table PCollections partitioned alike: -> {name: table or None} per
    partition, for joins. `key_fns` maps each input name to its key function."""

    def __init__(self, key_fns: dict, partitions: int, spill_dir: Optional[str] = None):
        super().__init__()
        self.key_fns = key_fns
        self.partitions = partitions
        self.spill_dir = spill_dir

    def expand(self, named):
        partitions, spill_dir = self.partitions, self.spill_dir
        scattered = []
        for name, tables in named.items():
            key_fn = self.key_fns[name]
            scattered.append(tables | f"Scatter{name}" >> beam.FlatMap(
                lambda t, name=name, key_fn=key_fn: (
                    (p, (name, stash(piece, spill_dir)))
                    for p, piece in scatter(t, key_fn(t), partitions))))
        names = list(named)
        return (scattered
                | "Merge" >> beam.Flatten()
                | "Group" >> beam.GroupByKey()
                | "Gather" >> beam.MapTuple(lambda partition, items: _by_name(items, names)))


def _by_name(items, names) -> dict:
    pieces: dict[str, list] = {name: [] for name in names}
    for name, piece in items:
        pieces[name].append(piece)
    return {name: gather(p) if p else None for name, p in pieces.items()}
