"""Arrow shard sink: `<split>-NNNNN-of-MMMMM.arrow` (IPC file format, zstd record batches).

Shards are written where the batches are, with no shuffle: each worker streams its bundle's
batches into a shard file until it holds `shard_bytes` (default 256 MiB of uncompressed Arrow),
under a unique staging name (temp name, then rename). Memory holds one batch, not a shard or the
corpus, and documents never wait in the runner for a total or a schema. `finalize_output`
runs after the pipeline succeeded: it unifies the shards' schemas (rewriting the rare shard
whose schema differs, so `pyarrow.dataset` and HF `datasets` read the folder), rewrites the
pieces smaller than `shard_bytes` (each worker bundle's tail) into shards of about
`shard_bytes`, orders the shards by their first id and moves them into place as
`<split>-NNNNN-of-MMMMM.arrow`, so a crashed run never leaves a half-written shard that looks
complete. The job stages the whole output folder and commits it at once (`pipelines/job.py`).
"""
from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Annotated, Literal, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from pydantic import Field

from transforms.core.accounting import KEPT, count
from transforms.core.columns import LICENSE
from transforms.core.config import config_dataclass
from transforms.core.documents import ID, SOURCE, TEXT, conform, unify
from transforms.core.files import read_arrow_batches

SHARD_INDEX = "shards.json"


@config_dataclass
class SinkConfig:
    shard_bytes: Annotated[int, Field(ge=2**20)] = 256 * 2**20  # at least 1 MiB
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
    """Rows, characters, (ASCII) whitespace tokens, and docs/tokens per source and per licence
    (the `license` column, when the rows have one; `NO_LICENSE` for a null) of one shard's rows."""
    stats = {"rows": table.num_rows, "chars": 0, "tokens": 0, "sources": {}, "licenses": {}}
    if TEXT not in table.column_names or not table.num_rows:
        return stats
    text = table.column(TEXT)
    tokens = whitespace_tokens(text)
    stats["chars"] = int(pc.sum(pc.utf8_length(text)).as_py() or 0)
    stats["tokens"] = int(pc.sum(tokens).as_py() or 0)
    for column, key, null in ((SOURCE, "sources", "None"), (LICENSE, "licenses", NO_LICENSE)):
        if column in table.column_names:
            stats[key] = _by_value(table.column(column), tokens, null)
    return stats


NO_LICENSE = "(none)"  # the licence key of rows whose `license` is null


def _by_value(values, tokens, null: str) -> dict:
    """{str(value): {"docs", "tokens"}} over the rows, `null` standing for a null value."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pa.array([None if v is None else str(v) for v in values.to_pylist()],
                          pa.string())
    grouped = pa.table({"value": values, "tokens": tokens}).group_by("value").aggregate(
        [("tokens", "sum"), ("tokens", "count")])
    return {null if value is None else str(value): {"docs": n_docs, "tokens": n_tokens}
            for value, n_tokens, n_docs in zip(*(grouped.column(c).to_pylist() for c in
                                                 ("value", "tokens_sum", "tokens_count")))}


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
        try:
            if self.shard is not None and not self.shard.accepts(batch.schema):
                yield self._close()
            if self.shard is None:
                self.shard = ShardWriter(FileSystems.join(
                    self.directory, f"{self.split}-part-{uuid.uuid4().hex}.arrow"),
                    batch.schema, self.config)
            self.shard.write(batch)
            if self.shard.rows_bytes >= self.config.shard_bytes:
                yield self._close()
        except BaseException:
            # a failed write (a full disk, say) must not keep its file open: a deleted file that
            # is still open keeps its space until the worker exits
            if self.shard is not None:
                self.shard, shard = None, self.shard
                shard.abort()
            raise

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
        self.stats = {"rows": 0, "chars": 0, "tokens": 0, "sources": {}, "licenses": {}}

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

    def abort(self) -> None:
        """Close and delete the unfinished file, quietly: this runs on the way out of an error."""
        for close in (self.writer.close, self.sink.close):
            try:
                close()
            except Exception:  # pylint: disable=broad-except
                pass
        try:
            FileSystems.delete([self.temp])
        except Exception:  # pylint: disable=broad-except
            pass

    def close(self) -> dict:
        try:
            self.writer.close()
            self.sink.close()
        except BaseException:
            self.abort()
            raise
        FileSystems.rename([self.temp], [self.path])
        return {"name": self.path.rsplit("/", 1)[-1], "first_id": self.first_id or "",
                "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
                "rows_bytes": self.rows_bytes, "bytes": self.sink.size, "sha256": self.sink.sha256.hexdigest(), **self.stats}


def _add_stats(total: dict, stats: dict) -> None:
    for key in ("rows", "chars", "tokens"):
        total[key] += stats[key]
    _add_sources(total["sources"], stats["sources"])
    _add_sources(total["licenses"], stats.get("licenses", {}))


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
    `final_dir` under their final names, removing stale shards of `split`. Pieces of at least
    `shard_bytes` move as they are (rewritten first if their schema differs from the output's);
    the smaller ones, in first-id order, are rewritten into shards of about `shard_bytes` with
    equal row counts, so the layout does not depend on how the runner cut bundles.

    Returns the output's manifest section: shards, totals, per-source counts and schema.
    """
    config = config or SinkConfig()
    pieces = sorted(entries, key=lambda s: (s["first_id"], s["sha256"]))
    schema = unify(_schema_of(s) for s in pieces) if pieces else None
    full = [s for s in pieces if s["rows_bytes"] >= config.shard_bytes]
    shards = [_conformed(s, schema, staging_dir, config) for s in full]
    shards += _merged([s for s in pieces if s["rows_bytes"] < config.shard_bytes], schema,
                      staging_dir, config)
    shards.sort(key=lambda s: (s["first_id"], s["sha256"]))
    staged = [FileSystems.join(staging_dir, s["name"]) for s in shards]
    for i, shard in enumerate(shards):
        shard["name"] = f"{split}-{i:05d}-of-{len(shards):05d}.arrow"
        del shard["first_id"], shard["schema"], shard["rows_bytes"]
    _ensure_dir(final_dir)
    names = {s["name"] for s in shards}
    if shards:
        FileSystems.rename(staged, [FileSystems.join(final_dir, s["name"]) for s in shards])
    stale = [m.path for m in FileSystems.match([FileSystems.join(final_dir, f"{split}-*.arrow")])[0]
             .metadata_list if m.path.rsplit("/", 1)[-1] not in names]
    if stale:
        FileSystems.delete(stale)
    sources: dict[str, dict] = {}
    licenses: dict[str, dict] = {}
    for shard in shards:
        _add_sources(sources, shard.pop("sources"))
        _add_sources(licenses, shard.pop("licenses", {}))
    return {
        "path": final_dir,
        "split": split,
        "shards": shards,
        "totals": {key: sum(s[key] for s in shards) for key in ("rows", "bytes", "chars", "tokens")},
        "sources": dict(sorted(sources.items())),
        **({"licenses": dict(sorted(licenses.items()))} if licenses else {}),
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema] if schema else [],
    }


def _merged(pieces: list[dict], schema: pa.Schema, staging_dir: str,
            config: SinkConfig) -> list[dict]:
    """Small pieces, in order, rewritten into ceil(their bytes / shard_bytes) shards of equal row
    counts (to one row): batch by batch, each piece deleted once read, so memory holds one piece
    and the disk one extra piece."""
    rows = sum(p["rows"] for p in pieces)
    n_shards = max(1, -(-sum(p["rows_bytes"] for p in pieces) // config.shard_bytes))
    counts = [rows // n_shards + (i < rows % n_shards) for i in range(n_shards)] if rows else []
    shards: list[dict] = []
    writer: Optional[ShardWriter] = None
    left = 0
    try:
        for piece in pieces:
            path = FileSystems.join(staging_dir, piece["name"])
            for batch in read_arrow_batches(path):
                batch = conform(batch, schema)
                while batch.num_rows:
                    if writer is None:
                        writer = ShardWriter(FileSystems.join(
                            staging_dir, f"merged-{len(shards):05d}.arrow"), schema, config)
                        left = counts[len(shards)]
                    take = min(left, batch.num_rows)
                    writer.write(batch.slice(0, take))
                    batch, left = batch.slice(take), left - take
                    if not left:
                        writer, done = None, writer
                        shards.append(done.close())
            FileSystems.delete([path])
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    assert writer is None and len(shards) == len(counts), "shard index rows do not match pieces"
    return shards


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
