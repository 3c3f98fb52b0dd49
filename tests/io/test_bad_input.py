"""Fault injection on ingest: truncated and corrupt compressed JSONL, damaged Parquet row groups,
and field types that must not depend on how documents were batched. Every run must balance
(`input = kept + dropped + failed`) and report each unreadable file or row group as a
`read_error` in the dead-letter output (docs/reliability.md)."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import zstandard

from pipelines.job import load_config, run_job
from tests.support import DEMO_DATA, Collected, test_pipeline
from transforms.core.accounting import run_stats
from transforms.core.documents import concat, is_json_field
from transforms.io.ingest import IngestConfig, InputSpec, ReadDocuments


def ingest(specs, config=IngestConfig()):
    """Run ReadDocuments -> (document batches, rejected rows, run stats)."""
    pipeline = test_pipeline()
    documents, rejected = pipeline | ReadDocuments(specs, config)
    docs, rejects = Collected(documents, "Docs"), Collected(rejected, "Rejects")
    stats = run_stats(pipeline.run())
    return docs.elements, rejects.rows(), stats


def doc_rows(batches) -> list[dict]:
    return [row for batch in batches for row in batch.to_pylist()]


@pytest.fixture(scope="module")
def wiki_lines() -> list[bytes]:
    """The demo's 402 Wikipedia revision records (1.75 MB of JSONL), one line each."""
    raw = zstandard.ZstdDecompressor().stream_reader(
        (DEMO_DATA / "wikipedia_revisions.jsonl.zst").read_bytes()).read()
    return raw.splitlines(keepends=True)


def _zstd_frames(data: bytes) -> bytes:
    """Several zstd frames (one per ~1/9 of the data, cut at line ends), as parallel writers
    emit them."""
    lines, step = data.splitlines(keepends=True), 45
    compressor = zstandard.ZstdCompressor()
    return b"".join(compressor.compress(b"".join(lines[i:i + step]))
                    for i in range(0, len(lines), step))


COMPRESSORS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
    "multi.zst": _zstd_frames,
}


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_truncated_or_corrupt_compressed_jsonl_is_one_read_error(tmp_path, wiki_lines, kind):
    """Cut at 60%, or 64 bytes garbled mid-file: one `read_error` naming the file, the complete
    records before it kept, the partial last line not a separate `malformed_json`. Before the
    fix only gzip reported the file: bz2, xz and single-frame zstd failed the partial last line
    as `malformed_json` and multi-frame zstd stopped at the cut in silence."""
    raw = b"".join(wiki_lines)
    packed = COMPRESSORS[kind](raw)
    suffix = "jsonl." + kind.split(".")[-1]
    (tmp_path / f"whole.{suffix}").write_bytes(packed)
    (tmp_path / f"cut.{suffix}").write_bytes(packed[: len(packed) * 6 // 10])
    garbled = bytearray(packed)
    middle = len(garbled) // 2
    garbled[middle:middle + 64] = bytes(b ^ 0xA5 for b in garbled[middle:middle + 64])
    (tmp_path / f"corrupt.{suffix}").write_bytes(bytes(garbled))
    specs = [InputSpec(path=str(tmp_path / f"{name}.{suffix}"), source=name)
             for name in ("whole", "cut", "corrupt")]
    batches, rejects, stats = ingest(specs)

    originals = [json.loads(line) for line in wiki_lines]
    docs = doc_rows(batches)
    assert stats["input"] == len(docs) + len(rejects)  # nothing is kept or lost silently
    by_source = {name: [(d["id"], d["text"]) for d in docs if d["source"] == name]
                 for name in ("whole", "cut", "corrupt")}
    rejected = {name: [r for r in rejects if r["source"] == name]
                for name in ("whole", "cut", "corrupt")}
    assert sorted(by_source["whole"]) == sorted((r["id"], r["text"]) for r in originals)
    assert rejected["whole"] == []

    # truncated: the records before the cut, in order, and one read_error
    cut = by_source["cut"]
    assert 0 < len(cut) < len(originals)
    assert cut == [(r["id"], r["text"]) for r in originals[:len(cut)]]
    assert [(r["reason"], r["kind"]) for r in rejected["cut"]] == [("read_error", "failed")]
    assert f"cut.{suffix}" in rejected["cut"][0]["detail"]
    assert "EOFError" in rejected["cut"][0]["detail"]

    # corrupt: one read_error; what was kept is real (gzip checks its CRC only at the end of the
    # stream, so lines decoded from the damage before that fail on their own first)
    reasons = [r["reason"] for r in rejected["corrupt"]]
    assert reasons.count("read_error") == 1 and reasons[-1] == "read_error"
    assert f"corrupt.{suffix}" in rejected["corrupt"][-1]["detail"]
    if kind == "gz":
        assert set(reasons) <= {"read_error", "malformed_json", "invalid_utf8"}
    else:
        assert reasons == ["read_error"]
    assert set(by_source["corrupt"]) <= set(by_source["whole"])
    assert len(by_source["corrupt"]) < len(originals)


def test_zstd_frames_and_empty_compressed_files_read_whole(tmp_path, wiki_lines):
    """No false alarm: a complete multi-frame zstd file, a concatenation of gzip members and of
    bz2 streams, and empty compressed files read to the end with no failure."""
    raw = b"".join(wiki_lines[:60])
    (tmp_path / "frames.jsonl.zst").write_bytes(_zstd_frames(raw))
    for name, compress in (("members.jsonl.gz", gzip.compress), ("streams.jsonl.bz2", bz2.compress)):
        (tmp_path / name).write_bytes(compress(raw[:9000]) + compress(raw[9000:]))
    (tmp_path / "empty.jsonl.xz").write_bytes(lzma.compress(b""))
    (tmp_path / "empty.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b""))
    batches, rejects, stats = ingest([InputSpec(path=str(tmp_path / "*"))])
    assert rejects == []
    assert len(doc_rows(batches)) == stats["input"] == 3 * 60


def _damage_row_groups(path, groups, column="text"):
    """Overwrite the first data page header of `column` in each of `groups` with garbage."""
    metadata = pq.ParquetFile(path).metadata
    index = metadata.schema.to_arrow_schema().get_field_index(column)
    data = bytearray(path.read_bytes())
    for group in groups:
        offset = metadata.row_group(group).column(index).data_page_offset
        data[offset:offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def test_damaged_parquet_row_groups_fail_alone_counted_by_their_rows(tmp_path):
    """4 row groups, 2 damaged: the other 2 are kept; each damaged one is one `read_error` naming
    file, row group and rows, counted as the rows its metadata says it held, so the run balances.
    Before the fix no row was kept: the file was one `read_error`, counted as 1 input."""
    table = pq.read_table(DEMO_DATA / "wikipedia_revisions_more.parquet")
    path = tmp_path / "revisions.parquet"
    pq.write_table(table, path, row_group_size=42)  # 166 rows: 42, 42, 42, 40
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 4
    _damage_row_groups(path, [1, 3])

    batches, rejects, stats = ingest([InputSpec(path=str(path))])
    docs = doc_rows(batches)
    rows = table.to_pylist()
    expected = rows[0:42] + rows[84:126]
    assert sorted((d["id"], d["text"]) for d in docs) == \
        sorted((r["id"], r["text"]) for r in expected)
    assert [r["reason"] for r in rejects] == ["read_error", "read_error"]
    details = sorted(r["detail"] for r in rejects)
    assert "revisions.parquet: row group 1 of 4 (42 rows, 42 not read)" in details[0]
    assert "revisions.parquet: row group 3 of 4 (40 rows, 40 not read)" in details[1]
    assert stats["input"] == 166
    assert stats["failed_by_reason"] == {"read_error": 82}
    assert stats["input"] == len(docs) + stats["failed"] + sum(stats["dropped"].values())


# --- types that do not depend on batching ------------------------------------------------------

BIG = 123456789012345678901234567890  # 30 digits: orjson alone reads it as 1.2345678901234568e+29


def _mixed_records() -> list[bytes]:
    """Real cc_net records with fields whose types vary from document to document."""
    lines = []
    for path in sorted(DEMO_DATA.glob("cc_net_en_head-*.jsonl")):
        lines += path.read_bytes().splitlines()
    mixed = ["one", 1, {"b": None, "a": 1.0}, [1, 2], True, None, 2.5, "two", {"a": "x"}]
    out = []
    for i, line in enumerate(lines):
        record = json.loads(line)
        record["label"] = mixed[i % len(mixed)]        # string, int, object, list, bool, float
        record["tokens"] = BIG + i if i % 3 == 0 else i  # beyond int64 for some documents
        record["serial"] = BIG * (i + 1) if i % 2 else None  # only beyond-int64 values
        record["ratio"] = 0.5 if i % 4 == 0 else i         # int and float: float64
        if i % 5 == 0:
            record["metadata"]["extra"] = {"k": i}         # object layouts differ
        out.append(json.dumps(record).encode())
    return out


def test_field_values_do_not_depend_on_batch_size(tmp_path):
    """The same documents read at batch_size 1, 2 and 1000 give the same stored values once the
    batches are unified: a mixed-type field is JSON text for every value ("one" is `"one"`), and
    an integer beyond int64 is its exact decimal string. Before the fix "one" was `"one"` or
    `one` depending on its batch mates, and the 30-digit integer became a float."""
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(_mixed_records()) + b"\n")
    results = {}
    for batch_size in (1, 2, 1000):
        batches, rejects, _ = ingest([InputSpec(path=str(path), source="cc_net")],
                                     IngestConfig(batch_size=batch_size))
        assert rejects == []
        table = concat(batches)
        results[batch_size] = (table.schema, sorted(table.to_pylist(), key=lambda d: d["id"]))
    schema, rows = results[1000]
    for batch_size in (1, 2):
        assert results[batch_size][0].equals(schema, check_metadata=True)
        assert results[batch_size][1] == rows
    assert is_json_field(schema.field("label")) and is_json_field(schema.field("tokens"))
    assert schema.field("serial").type in (pa.string(), pa.large_string())
    assert schema.field("ratio").type == pa.float64()
    labels = [r["label"] for r in rows]
    assert '"one"' in labels and "1" in labels and '{"a": 1}' in labels and "true" in labels
    assert None in labels and "one" not in labels
    assert f'"{BIG}"' in [r["tokens"] for r in rows]
    assert str(BIG * 2) in [r["serial"] for r in rows]
    assert all(isinstance(r["metadata"], dict) for r in rows)


def test_whole_job_writes_the_same_documents_at_any_batch_size(tmp_path):
    """Through `run_job` (ingest, sink, schema unification of the shards): the written documents
    and their schema are the same at batch_size 1, 2 and 1000."""
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(_mixed_records()) + b"\n")
    written = {}
    for batch_size in (1, 2, 1000):
        out = tmp_path / f"out-{batch_size}"
        data = load_config(None, inputs=[str(path)], output=str(out),
                           sets=[f"ingest.batch_size={batch_size}"])
        stats = run_job(data, ["--direct_num_workers=1"], log=lambda *_: None)
        assert stats["balanced"] and stats["input"] == stats["kept"] == 20
        table = ds.dataset(out / "documents", format="arrow").to_table()
        written[batch_size] = (table.schema, sorted(table.to_pylist(), key=lambda d: d["id"]))
    schema, rows = written[1000]
    assert len(rows) == 20 and '"one"' in [r["label"] for r in rows]
    for batch_size in (1, 2):
        assert written[batch_size][0].equals(schema)
        assert written[batch_size][1] == rows
