"""Arrow shard sink: `<split>-NNNNN-of-MMMMM.arrow` (IPC file format, zstd record batches).

The shard count is derived from the total batch bytes (`shard_bytes`, default 256 MiB of
uncompressed Arrow), each batch is keyed to a shard by a hash of its first id, and one worker
writes each shard under a temporary name, renamed when complete. All shards of one output share
one schema (unified over every batch), so `pyarrow.dataset` and HF `datasets` read the folder.
Shards go to a staging folder; `finalize_output` moves them into place after the pipeline
succeeds, so a crashed run never leaves a half-written shard that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid
from typing import Literal, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from apache_beam.io.filesystems import FileSystems

from transforms.accounting import KEPT, count
from transforms.config import config_dataclass
from transforms.documents import ID, SOURCE, TEXT, conform, unify

SHARD_INDEX = "{split}.shards.json"


@config_dataclass
class SinkConfig:
    shard_bytes: int = 256 * 2**20
    compression: Literal["zstd", "lz4", "none"] = "zstd"


class UnifySchemas(beam.CombineFn):
    def create_accumulator(self):
        return None

    def add_input(self, accumulator, schema):
        return schema if accumulator is None else unify([accumulator, schema])

    def merge_accumulators(self, accumulators):
        return unify([a for a in accumulators if a is not None]) if any(
            a is not None for a in accumulators) else None

    def extract_output(self, accumulator):
        return accumulator


def shard_of(batch: pa.RecordBatch, num_shards: int) -> int:
    first = batch.column(ID)[0].as_py() if ID in batch.schema.names else ""
    return xxhash.xxh64_intdigest(f"{first}\0{batch.num_rows}".encode()) % num_shards


class _HashingFile:
    """A writable file that hashes and counts what passes through it."""

    def __init__(self, handle):
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.handle.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        if not self.closed:
            self.handle.close()
            self.closed = True


def shard_stats(table: pa.Table) -> dict:
    """Rows, characters, whitespace tokens and per-source docs/tokens of one shard's rows."""
    stats = {"rows": table.num_rows, "chars": 0, "tokens": 0, "sources": {}}
    if TEXT not in table.column_names or not table.num_rows:
        return stats
    text = table.column(TEXT)
    tokens = pc.count_substring_regex(text, r"\S+")
    stats["chars"] = int(pc.sum(pc.utf8_length(text)).as_py() or 0)
    stats["tokens"] = int(pc.sum(tokens).as_py() or 0)
    if SOURCE in table.column_names:
        grouped = pa.table({"source": table.column(SOURCE), "tokens": tokens}).group_by(
            "source").aggregate([("tokens", "sum"), ("tokens", "count")])
        for source, n_tokens, n_docs in zip(*(grouped.column(c).to_pylist() for c in
                                              ("source", "tokens_sum", "tokens_count"))):
            stats["sources"][str(source)] = {"docs": n_docs, "tokens": n_tokens}
    return stats


class WriteShardFn(beam.DoFn):
    def __init__(self, directory: str, split: str, config: SinkConfig, count_kept: bool):
        self.directory = directory
        self.split = split
        self.config = config
        self.count_kept = count_kept

    def process(self, element, num_shards, schema):
        shard, batches = element
        # Sorting batches by their first id makes a shard's content order reproducible.
        batches = sorted(batches, key=lambda b: (str(b.column(ID)[0]) if ID in b.schema.names
                                                 else "", b.num_rows))
        name = f"{self.split}-{shard:05d}-of-{num_shards:05d}.arrow"
        final = FileSystems.join(self.directory, name)
        temp = f"{final}.tmp-{uuid.uuid4().hex}"
        options = pa.ipc.IpcWriteOptions(
            compression=None if self.config.compression == "none" else self.config.compression)
        sink = _HashingFile(FileSystems.create(temp))
        conformed = [conform(b, schema) for b in batches]
        with pa.ipc.new_file(sink, schema, options=options) as writer:
            for batch in conformed:
                writer.write_batch(batch)
        sink.close()
        FileSystems.rename([temp], [final])
        stats = shard_stats(pa.Table.from_batches(conformed, schema=schema))
        if self.count_kept:
            count(KEPT, stats["rows"])
        yield {"name": name, "bytes": sink.size, "sha256": sink.sha256.hexdigest(), **stats}


def _write_shard_index(shards: list[dict], path: str) -> None:
    with FileSystems.create(path) as f:
        f.write(json.dumps(sorted(shards, key=lambda s: s["name"])).encode())


class WriteArrowShards(beam.PTransform):
    """Write record batches as Arrow shards into `staging_dir`; see `finalize_output`."""

    def __init__(self, staging_dir: str, split: str, config: SinkConfig, count_kept: bool = False):
        super().__init__()
        self.staging_dir = staging_dir
        self.split = split
        self.config = config
        self.count_kept = count_kept

    def expand(self, batches):
        batches = batches | "NonEmpty" >> beam.Filter(lambda b: b.num_rows > 0)
        shard_bytes = self.config.shard_bytes
        num_shards = (batches
                      | "BatchBytes" >> beam.Map(lambda b: b.nbytes)
                      | "TotalBytes" >> beam.CombineGlobally(sum)
                      | "ShardCount" >> beam.Map(lambda n: max(1, math.ceil(n / shard_bytes))))
        schema = (batches
                  | "Schemas" >> beam.Map(lambda b: b.schema)
                  | "UnifySchemas" >> beam.CombineGlobally(UnifySchemas()))
        shards = (batches
                  | "KeyByShard" >> beam.Map(lambda b, n: (shard_of(b, n), b),
                                             beam.pvalue.AsSingleton(num_shards))
                  | "GroupShards" >> beam.GroupByKey()
                  | "WriteShards" >> beam.ParDo(
                      WriteShardFn(self.staging_dir, self.split, self.config, self.count_kept),
                      beam.pvalue.AsSingleton(num_shards), beam.pvalue.AsSingleton(schema)))
        index_path = FileSystems.join(self.staging_dir, SHARD_INDEX.format(split=self.split))
        return (shards
                | "CollectShards" >> beam.combiners.ToList()
                | "WriteShardIndex" >> beam.Map(_write_shard_index, index_path))


def _ensure_dir(path: str) -> None:
    try:
        FileSystems.mkdirs(path)
    except IOError:
        pass  # already there


def finalize_output(staging_dir: str, final_dir: str, split: str) -> dict:
    """Move a finished output's shards into `final_dir`, removing stale shards of `split`.

    Returns the output's manifest section: shards, totals, per-source counts and schema.
    """
    with FileSystems.open(FileSystems.join(staging_dir, SHARD_INDEX.format(split=split))) as f:
        shards = json.loads(f.read())
    _ensure_dir(final_dir)
    names = {s["name"] for s in shards}
    if shards:
        FileSystems.rename([FileSystems.join(staging_dir, s["name"]) for s in shards],
                           [FileSystems.join(final_dir, s["name"]) for s in shards])
    stale = [m.path for m in FileSystems.match([FileSystems.join(final_dir, f"{split}-*.arrow")])[0]
             .metadata_list if m.path.rsplit("/", 1)[-1] not in names]
    if stale:
        FileSystems.delete(stale)
    sources: dict[str, dict] = {}
    for shard in shards:
        for source, counts in shard.pop("sources").items():
            entry = sources.setdefault(source, {"docs": 0, "tokens": 0})
            entry["docs"] += counts["docs"]
            entry["tokens"] += counts["tokens"]
    schema = None
    if shards:
        with FileSystems.open(FileSystems.join(final_dir, shards[0]["name"])) as f:
            schema = pa.ipc.open_file(f).schema  # reads the footer only
    return {
        "path": final_dir,
        "split": split,
        "shards": shards,
        "totals": {key: sum(s[key] for s in shards) for key in ("rows", "bytes", "chars", "tokens")},
        "sources": dict(sorted(sources.items())),
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema] if schema else [],
    }


def read_output(directory: str, columns: Optional[list[str]] = None) -> pa.Table:
    """Read every shard of an output folder back as one table."""
    import pyarrow.dataset as ds

    return ds.dataset(directory, format="arrow").to_table(columns=columns)
