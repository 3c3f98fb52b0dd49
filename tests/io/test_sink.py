"""The Arrow shard sink: streamed shards of a bounded size, schemas unified across batches."""
from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.dataset as ds

from tests.support import test_pipeline
from transforms.io.sink import (SinkConfig, WriteArrowShards, WriteShardIndex, finalize_output,
                                read_shard_index)


def _batch(start: int, n: int, **extra) -> pa.RecordBatch:
    ids = [f"doc-{i:04d}" for i in range(start, start + n)]
    pad = "x" * 5000  # ~5 MB in all: several shards of the smallest shard_bytes (1 MiB)
    columns = {"id": pa.array(ids), "text": pa.array([f"words of {i}{pad}" for i in ids]),
               "source": pa.array(["web"] * n)}
    columns.update(extra)
    return pa.RecordBatch.from_pydict(columns)


def test_mixed_schemas_become_one_output_schema_and_shards_keep_their_size(tmp_path):
    batches = [
        _batch(0, 50, score=pa.nulls(50, pa.null())),           # null, later strings
        _batch(50, 50, score=pa.array(["high"] * 50)),
        _batch(100, 50),                                          # column missing
        _batch(150, 50, score=pa.array([{"a": 1}] * 50)),         # unpromotable: JSON text
    ] + [_batch(200 + 100 * k, 100) for k in range(8)]
    staging, final = tmp_path / "staging", tmp_path / "final"
    config = SinkConfig(shard_bytes=2**20)
    index = str(tmp_path / "shards.json")
    with test_pipeline() as p:
        _ = (p | beam.Create(batches, reshuffle=False)
             | WriteArrowShards(str(staging), "train", config)
             | beam.Map(lambda entry: ("train", entry))
             | WriteShardIndex(index))
    manifest = finalize_output(read_shard_index(index)["train"], str(staging), str(final), "train",
                               config)

    table = ds.dataset(str(final), format="arrow").to_table()
    assert sorted(table.column("id").to_pylist()) == [f"doc-{i:04d}" for i in range(1000)]
    scores = dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist()))
    assert scores["doc-0000"] is None and json.loads(scores["doc-0050"]) == "high"
    assert json.loads(scores["doc-0150"]) == {"a": 1}
    assert manifest["totals"]["rows"] == 1000
    assert manifest["sources"] == {"web": {"docs": 1000, "tokens": 3000}}
    shards = manifest["shards"]
    assert len(shards) > 3, "shard_bytes must cut the stream into several shards"
    assert sum(s["rows"] for s in shards) == 1000
    for shard in shards:
        rows = pa.ipc.open_file(str(final / shard["name"])).read_all()
        assert rows.num_rows == shard["rows"]
        assert rows.nbytes < 2 * config.shard_bytes  # one batch past the limit at most
    assert not list(staging.glob("*.tmp*"))
