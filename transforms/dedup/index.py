"""The persisted dedup index: the kept corpus's band keys, b-bit signatures and ids, as Arrow
shards (~500 bytes per document at 256 permutations and 25 bands).

A folder holds `index.json` (the sketch parameters and the list of shard files) and the shards.
A later run reads it (`dedup` with `index: DIR`), so new documents that duplicate the old corpus
are dropped as `duplicate_of_index` (datatrove's `index_folder` and Dolma's persisted Bloom
filter do the same job). `commit` adds a finished run's survivors: new shards are copied under
temporary names and renamed, then `index.json` is replaced in one write (temporary name, then
rename), so a reader sees the old index or the new one, never a half-updated one.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.core.config import ConfigError
from transforms.core.documents import ID
from transforms.core.files import write_json_atomic

INDEX_FILE = "index.json"
INDEX_VERSION = 2  # 1 kept full uint32 signatures; its shards are still read (dedup.index_sketches)


def index_schema(num_perm: int, bands: int) -> pa.Schema:
    return pa.schema([
        pa.field(ID, pa.string()),
        pa.field("exact_hi", pa.uint64()),
        pa.field("exact_lo", pa.uint64()),
        pa.field("bits", pa.list_(pa.uint8(), num_perm)),
        pa.field("has_shingles", pa.bool_()),
        pa.field("band_keys", pa.list_(pa.uint64(), bands)),
    ])


def _read_manifest(directory: str) -> dict | None:
    path = FileSystems.join(directory, INDEX_FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read())


def open_index(directory: str, params: dict, create: bool = False) -> list[str]:
    """The shard paths of the index in `directory`, checking it was built with `params`.

    A missing index is empty when `create` (the first run of an incremental series)."""
    manifest = _read_manifest(directory)
    if manifest is None:
        if create:
            return []
        raise ConfigError(f"no dedup index at '{directory}' (no {INDEX_FILE}); build one with "
                          "`sluice dedup ... --index DIR --update-index`")
    if manifest.get("params") != params:
        raise ConfigError(f"dedup index '{directory}' was built with {manifest.get('params')}, "
                          f"this run uses {params}: they must match")
    return [FileSystems.join(directory, name) for name in manifest["shards"]]


def read_shard(path: str) -> list[pa.Table]:
    with FileSystems.open(path) as f:
        reader = pa.ipc.open_file(pa.py_buffer(f.read()))
        return [pa.Table.from_batches([reader.get_batch(i)])
                for i in range(reader.num_record_batches)]


class ReadIndex(beam.PTransform):
    """Shard paths -> index tables."""

    def expand(self, paths):
        return paths | "Spread" >> beam.Reshuffle() | "Read" >> beam.FlatMap(read_shard)


def commit(update_dir: str, directory: str, params: dict, update_id: str | None = None) -> dict:
    """Add the shards a run wrote to `update_dir` to the index in `directory`, atomically.

    With `update_id`, committing the same update again changes nothing (a refresh that crashed
    after committing its corpus version rolls its index update forward this way)."""
    manifest = _read_manifest(directory) or {"version": INDEX_VERSION, "params": params,
                                             "shards": [], "updates": []}
    if update_id and any(u["id"] == update_id for u in manifest["updates"]):
        return {"documents": 0, "shards": 0, "total_shards": len(manifest["shards"])}
    if manifest["params"] != params:
        raise ConfigError(f"dedup index '{directory}' was built with {manifest['params']}, "
                          f"this run uses {params}: they must match")
    try:
        FileSystems.mkdirs(directory)
    except IOError:
        pass  # already there
    update = update_id or uuid.uuid4().hex[:12]
    found = FileSystems.match([FileSystems.join(update_dir, "*.arrow")])[0].metadata_list
    sources = sorted(m.path for m in found)
    names = [f"shard-{update}-{i:05d}.arrow" for i in range(len(sources))]
    finals = [FileSystems.join(directory, name) for name in names]
    temps = [f"{path}.tmp" for path in finals]
    if sources:
        FileSystems.copy(sources, temps)
        FileSystems.rename(temps, finals)
    rows = 0
    for path in finals:
        with FileSystems.open(path) as f:
            rows += pa.ipc.open_file(pa.py_buffer(f.read())).read_all().num_rows
    manifest["shards"] = manifest["shards"] + names
    manifest["updates"] = manifest["updates"] + [{
        "id": update, "at": dt.datetime.now(dt.timezone.utc).isoformat(), "documents": rows,
        "shards": names}]
    write_json_atomic(FileSystems.join(directory, INDEX_FILE), manifest)
    return {"documents": rows, "shards": len(names), "total_shards": len(manifest["shards"])}
