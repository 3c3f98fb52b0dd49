"""Arrow shard sink: `<split>-NNNNN-of-MMMMM.arrow` (IPC file format, zstd record batches).

Shards are written where the batches are, with no shuffle: each worker streams its bundle's
batches into a shard file until it holds `shard_bytes` (default 256 MiB of uncompressed Arrow),
under a unique staging name (temp name, then rename). Memory holds one batch, not a shard or the
corpus, and documents never wait in the runner for a total or a schema. `finalize_output`
runs after the pipeline succeeded: it unifies the shards' schemas (rewriting the rare shard
whose schema differs, so `pyarrow.dataset` and HF `datasets` read the folder), orders the shards
by their first id and moves them into place as `<split>-NNNNN-of-MMMMM.arrow`, so a crashed run
never leaves a half-written shard that looks complete.
"""
from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Literal, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms.core.accounting import KEPT, count
from transforms.core.config import config_dataclass
from transforms.core.documents import ID, SOURCE, TEXT, conform, unify

SHARD_INDEX = "shards.json"


@config_dataclass
class SinkConfig:
    shard_bytes: int = 256 * 2**20
    compression: Literal["zstd", "lz4", "none"] = "zstd"


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
    """Rows, characters, (ASCII) whitespace tokens and per-source docs/tokens of one shard's
    rows."""
    stats = {"rows": table.num_rows, "chars": 0, "tokens": 0, "sources": {}}
    if TEXT not in table.column_names or not table.num_rows:
        return stats
    text = table.column(TEXT)
    tokens = whitespace_tokens(text)
    stats["chars"] = int(pc.sum(pc.utf8_length(text)).as_py() or 0)
    stats["tokens"] = int(pc.sum(tokens).as_py() or 0)
    if SOURCE in table.column_names:
        grouped = pa.table({"source": table.column(SOURCE), "tokens": tokens}).group_by(
            "source").aggregate([("tokens", "sum"), ("tokens", "count")])
        for source, n_tokens, n_docs in zip(*(grouped.column(c).to_pylist() for c in
                                              ("source", "tokens_sum", "tokens_count"))):
            stats["sources"][str(source)] = {"docs": n_docs, "tokens": n_tokens}
    return stats


def whitespace_tokens(text):
    """Tokens separated by ASCII whitespace, per text: trim, split and count, several times the
    speed of counting `\S+` regex matches (`bench/kernels.py`)."""
    trimmed = pc.ascii_trim_whitespace(text)
    return pc.subtract(pc.list_value_length(pc.ascii_split_whitespace(trimmed)),
                       pc.cast(pc.equal(pc.binary_length(trimmed), 0), pa.int32()))


class WriteShardsFn(beam.DoFn):
    """Batches -> shards of about `shard_bytes` each, streamed to their file as they come;
    yields each shard's entry for the shard index (staging name, schema, sha256, counts)."""

    def __init__(self, directory: str, split: str, config: SinkConfig, count_kept: bool):
        self.directory = directory
        self.split = split
        self.config = config
        self.count_kept = count_kept

    def start_bundle(self):
        self.shard: Optional[ShardWriter] = None

    def process(self, batch):
        if not batch.num_rows:
            return
        if self.shard is not None and not self.shard.accepts(batch.schema):
            yield self._close()
        if self.shard is None:
            self.shard = ShardWriter(FileSystems.join(
                self.directory, f"{self.split}-part-{uuid.uuid4().hex}.arrow"),
                batch.schema, self.config)
        self.shard.write(batch)
        if self.shard.rows_bytes >= self.config.shard_bytes:
            yield self._close()

    def finish_bundle(self):
        if self.shard is not None:
            yield WindowedValue(self._close(), MIN_TIMESTAMP, [GlobalWindow()])

    def _close(self) -> dict:
        entry, self.shard = self.shard.close(), None
        if self.count_kept:
            count(KEPT, entry["rows"])
        return entry


class ShardWriter:
    """One shard being written: batches stream into an Arrow IPC file under a temp name, renamed
    on close, so memory holds a batch rather than a shard. A batch whose schema differs only by
    what the shard's schema can hold (a null column, a missing one) is conformed to it; any
    other difference starts a new shard, and `finalize_output` unifies the shards."""

    def __init__(self, path: str, schema: pa.Schema, config: SinkConfig):
        self.path = path
        self.schema = schema
        self.temp = f"{path}.tmp-{uuid.uuid4().hex}"
        self.sink = _HashingFile(FileSystems.create(self.temp))
        self.writer = pa.ipc.new_file(self.sink, schema, options=pa.ipc.IpcWriteOptions(
            compression=None if config.compression == "none" else config.compression))
        self.rows_bytes = 0
        self.first_id: Optional[str] = None
        self.stats = {"rows": 0, "chars": 0, "tokens": 0, "sources": {}}

    def accepts(self, schema: pa.Schema) -> bool:
        return schema.equals(self.schema) or unify([self.schema, schema]).equals(self.schema)

    def write(self, batch: pa.RecordBatch) -> None:
        batch = conform(batch, self.schema)
        self.writer.write_batch(batch)
        self.rows_bytes += batch.nbytes
        table = pa.Table.from_batches([batch])
        _add_stats(self.stats, shard_stats(table))
        if ID in self.schema.names:
            first = pc.min(table.column(ID)).as_py()
            if first is not None:
                first = str(first)
                self.first_id = first if self.first_id is None else min(self.first_id, first)

    def close(self) -> dict:
        self.writer.close()
        self.sink.close()
        FileSystems.rename([self.temp], [self.path])
        return {"name": self.path.rsplit("/", 1)[-1], "first_id": self.first_id or "",
                "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
                "bytes": self.sink.size, "sha256": self.sink.sha256.hexdigest(), **self.stats}


def _add_stats(total: dict, stats: dict) -> None:
    for key in ("rows", "chars", "tokens"):
        total[key] += stats[key]
    _add_sources(total["sources"], stats["sources"])


def _add_sources(total: dict, sources: dict) -> None:
    for source, counts in sources.items():
        entry = total.setdefault(source, {"docs": 0, "tokens": 0})
        entry["docs"] += counts["docs"]
        entry["tokens"] += counts["tokens"]


def write_shard(batches: list[pa.RecordBatch], schema: pa.Schema, path: str,
                config: SinkConfig) -> dict:
    """One Arrow IPC file of `batches` (temp name, then rename) -> its shard index entry."""
    shard = ShardWriter(path, schema, config)
    for batch in batches:
        shard.write(batch)
    return shard.close()


def _schema_of(entry: dict) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(entry["schema"])))


class WriteArrowShards(beam.PTransform):
    """Write record batches as Arrow shards into `staging_dir`; returns their index entries."""

    def __init__(self, staging_dir: str, split: str, config: SinkConfig, count_kept: bool = False):
        super().__init__()
        self.staging_dir = staging_dir
        self.split = split
        self.config = config
        self.count_kept = count_kept

    def expand(self, batches):
        return batches | "WriteShards" >> beam.ParDo(
            WriteShardsFn(self.staging_dir, self.split, self.config, self.count_kept))


class WriteShardIndex(beam.PTransform):
    """(output name, shard entry) pairs -> one JSON index `{name: [entries]}` at `path`.

    Only entries of committed bundles reach it, so `finalize_output` never takes the shards of a
    retried bundle twice. One index serves every output of a job: one Beam step, not one each."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, named_entries):
        return (named_entries
                | "CollectShards" >> beam.combiners.ToList()
                | "WriteShardIndex" >> beam.Map(_write_shard_index, self.path))


def _write_shard_index(named_entries: list[tuple[str, dict]], path: str) -> None:
    index: dict[str, list] = {}
    for name, entry in named_entries:
        index.setdefault(name, []).append(entry)
    with FileSystems.create(path) as f:
        f.write(json.dumps({name: sorted(entries, key=lambda e: e["name"])
                            for name, entries in sorted(index.items())}).encode())


def read_shard_index(path: str) -> dict[str, list[dict]]:
    with FileSystems.open(path) as f:
        return json.loads(f.read())


def _ensure_dir(path: str) -> None:
    try:
        FileSystems.mkdirs(path)
    except IOError:
        pass  # already there


def finalize_output(entries: list[dict], staging_dir: str, final_dir: str, split: str,
                    config: Optional[SinkConfig] = None) -> dict:
    """Move a finished output's shards (their index `entries`) from `staging_dir` into
    `final_dir` under their final names, removing stale shards of `split`; shards whose schema
    differs from the output's are rewritten first.

    Returns the output's manifest section: shards, totals, per-source counts and schema.
    """
    shards = sorted(entries, key=lambda s: (s["first_id"], s["sha256"]))
    schema = unify(_schema_of(s) for s in shards) if shards else None
    shards = [_conformed(s, schema, staging_dir, config or SinkConfig()) for s in shards]
    staged = [FileSystems.join(staging_dir, s["name"]) for s in shards]
    for i, shard in enumerate(shards):
        shard["name"] = f"{split}-{i:05d}-of-{len(shards):05d}.arrow"
        del shard["first_id"], shard["schema"]
    _ensure_dir(final_dir)
    names = {s["name"] for s in shards}
    if shards:
        FileSystems.rename(staged, [FileSystems.join(final_dir, s["name"]) for s in shards])
    stale = [m.path for m in FileSystems.match([FileSystems.join(final_dir, f"{split}-*.arrow")])[0]
             .metadata_list if m.path.rsplit("/", 1)[-1] not in names]
    if stale:
        FileSystems.delete(stale)
    sources: dict[str, dict] = {}
    for shard in shards:
        _add_sources(sources, shard.pop("sources"))
    return {
        "path": final_dir,
        "split": split,
        "shards": shards,
        "totals": {key: sum(s[key] for s in shards) for key in ("rows", "bytes", "chars", "tokens")},
        "sources": dict(sorted(sources.items())),
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema] if schema else [],
    }


def _conformed(shard: dict, schema: pa.Schema, staging_dir: str, config: SinkConfig) -> dict:
    """The shard itself when it has the output's schema, else a conformed rewrite of it."""
    if _schema_of(shard).equals(schema):
        return shard
    path = FileSystems.join(staging_dir, shard["name"])
    with FileSystems.open(path) as f:
        reader = pa.ipc.open_file(pa.py_buffer(f.read()))
        batches = [conform(reader.get_batch(i), schema) for i in range(reader.num_record_batches)]
    entry = write_shard(batches, schema, path.removesuffix(".arrow") + "-conformed.arrow", config)
    FileSystems.delete([path])
    return entry


def read_output(directory: str, columns: Optional[list[str]] = None) -> pa.Table:
    """Read every shard of an output folder back as one table."""
    import pyarrow.dataset as ds

    return ds.dataset(directory, format="arrow").to_table(columns=columns)
