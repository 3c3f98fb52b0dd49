"""Ingest: every format into the document schema, bad records dead-lettered with reasons."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.support import DEMO_DATA, Collected, test_pipeline
from transforms.core.config import ConfigError
from transforms.core.documents import content_id
from transforms.io.ingest import (IngestConfig, InputSpec, ReadDocuments, detect_format, read_warc,
                                  read_wet, to_document)

GOOD = {"id": "a", "text": "A real sentence about rivers.", "lang": "en", "meta": {"k": 1}}
MALFORMED_LINES = [
    json.dumps(GOOD).encode(),
    b'{"id": "broken", "text": "unterminated',         # malformed JSON
    b'{"id": "latin1", "text": "caf\xe9"}',              # invalid UTF-8
    b'["a", "list"]',                                    # not an object
    b'{"id": "no-text", "body": "x"}',                  # missing text
    b'{"id": "number", "text": 42}',                    # non-text
    b'{"id": "blank", "text": "   \\n "}',              # empty after strip
    b'',                                                 # blank line: not a record
    json.dumps({"text": "no id given, so one is derived"}).encode(),
    json.dumps({"id": "huge", "text": "x" * 5000}).encode(),  # over max_chars below
]
EXPECTED_REJECTS = [(None, "malformed_json"), (None, "invalid_utf8"), (None, "not_an_object"),
                    ("no-text", "missing_text"), ("number", "non_text"), ("blank", "empty"),
                    ("huge", "too_long")]


def read(specs, config=IngestConfig(max_chars=1000)):
    """Run ReadDocuments; returns (docs by id, rejected rows)."""
    pipeline = test_pipeline()
    documents, rejected = pipeline | ReadDocuments(specs, config)
    docs, rejects = Collected(documents, "Docs"), Collected(rejected, "Rejects")
    pipeline.run()
    return {r["id"]: r for r in docs.rows()}, rejects.rows()


@pytest.mark.parametrize("suffix,compress", [
    (".jsonl", lambda b: b),
    (".jsonl.gz", gzip.compress),
    (".jsonl.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
])
def test_jsonl_bad_records_are_dead_lettered_with_reasons(tmp_path, suffix, compress):
    path = tmp_path / f"mixed{suffix}"
    path.write_bytes(compress(b"\n".join(MALFORMED_LINES) + b"\n"))
    docs, rejects = read([InputSpec(path=str(path), source="web")])

    derived = content_id("no id given, so one is derived")
    assert set(docs) == {"a", derived}
    assert docs["a"]["source"] == "web" and docs["a"]["lang"] == "en"
    assert docs["a"]["meta"] == {"k": 1}  # unknown fields kept as-is
    reasons = sorted((r["id"] or "", r["reason"], r["kind"]) for r in rejects)
    assert reasons == sorted((doc_id or "", reason,
                              "dropped" if reason in ("empty", "too_long") else "failed")
                             for doc_id, reason in EXPECTED_REJECTS)
    latin1 = next(r for r in rejects if r["reason"] == "invalid_utf8")
    assert latin1["payload"] == MALFORMED_LINES[2]  # the raw bytes, for audit


@pytest.mark.parametrize("split_bytes", [1, 7, 64, 10_000])
def test_plain_jsonl_read_in_byte_ranges_gives_every_record_once(tmp_path, split_bytes):
    """Ranges split lines anywhere (1 byte: every line start is a boundary); each record is read
    by the range its first byte falls in, bad lines included."""
    path = tmp_path / "big.jsonl"
    lines = MALFORMED_LINES + [json.dumps({"id": f"r{i}", "text": f"row {i}"}).encode()
                               for i in range(40)]
    path.write_bytes(b"\n".join(lines))  # no newline at the end
    docs, rejects = read([InputSpec(path=str(path), source="web")],
                         IngestConfig(max_chars=1000, split_bytes=split_bytes))
    whole, whole_rejects = read([InputSpec(path=str(path), source="web")])
    text_and_source = lambda d: {k: (v["text"], v["source"]) for k, v in d.items()}  # noqa: E731
    assert text_and_source(docs) == text_and_source(whole) and len(docs) == 42
    assert sorted(map(str, rejects)) == sorted(map(str, whole_rejects))


def test_parquet_and_arrow_file_and_stream(tmp_path):
    table = pa.table({"doc_id": ["p1", "p2", "p3"], "content": ["first text", None, "third text"],
                      "score": [0.5, 0.1, 0.9]})
    pq.write_table(table, tmp_path / "part.parquet")
    with pa.ipc.new_file(tmp_path / "part.arrow", table.schema) as writer:
        writer.write_table(table.slice(0, 1))
    with pa.ipc.new_stream(tmp_path / "stream.arrow", table.schema) as writer:
        writer.write_table(table.slice(2, 1))
    spec = dict(text_field="content", id_field="doc_id")
    docs, rejects = read([InputSpec(path=str(tmp_path / "part.parquet"), **spec)])
    assert docs["p1"]["text"] == "first text" and docs["p1"]["score"] == 0.5
    assert docs["p1"]["source"] == "part"  # the file's name stem when none is configured
    assert "content" not in docs["p1"] and "doc_id" not in docs["p1"]
    assert [(r["id"], r["reason"]) for r in rejects] == [("p2", "missing_text")]
    docs, rejects = read([InputSpec(path=str(tmp_path / "*.arrow"), source="arrowed", **spec)])
    assert {(d["id"], d["source"], d["text"]) for d in docs.values()} == {
        ("p1", "arrowed", "first text"), ("p3", "arrowed", "third text")}
    assert rejects == []


def test_real_common_crawl_warc_and_wet(shared_data):
    web = shared_data / "web_samples"
    warc = list(read_warc(str(web / "resiliparse/tests/data/warcfile.warc.gz")))
    assert len(warc) == 16
    pages = [r for r in warc if isinstance(r, dict)]
    assert all(p["url"].startswith("http") and p["id"].startswith("<urn:uuid:") for p in pages)
    assert any("компании" in p["text"] for p in pages)  # windows-1251 page decoded
    wet = list(read_wet(str(web / "cc_whirlwind/whirlwind.warc.wet")))
    assert len(wet) == 1 and wet[0]["url"] == "https://an.wikipedia.org/wiki/Escopete"
    assert wet[0]["warc_language"] == "spa" and "Escopete" in wet[0]["text"]


def test_warc_records_fastwarc_cannot_frame_are_failures_not_lost(shared_data, tmp_path):
    """A WET whose line endings became LF, and a WARC cut short, are dead-lettered and counted:
    fastwarc alone yields nothing for the first and a short body for the last record of the
    second."""
    web = shared_data / "web_samples"
    lf_only = tmp_path / "lf.warc.wet"
    lf_only.write_bytes((web / "cc_net/tests/data/sample.warc.txt").read_bytes())
    warc = gzip.decompress((web / "resiliparse/tests/data/warcfile.warc.gz").read_bytes())
    (tmp_path / "cut.warc").write_bytes(warc[:len(warc) - 3000])
    docs, rejects = read([InputSpec(path=str(lf_only)),
                          InputSpec(path=str(tmp_path / "cut.warc"))], IngestConfig())
    reasons = [r["reason"] for r in rejects]
    assert reasons.count("malformed_warc") == 1 and reasons.count("truncated_record") == 1
    assert "CRLF" in next(r["detail"] for r in rejects if r["reason"] == "malformed_warc")
    whole = [r for r in read_warc(str(web / "resiliparse/tests/data/warcfile.warc.gz"))]
    assert len(docs) + len(rejects) == len(whole) + 1  # the cut record fails, the LF file once


def test_wget_warcs_through_beam(shared_data):
    docs, rejects = read([InputSpec(path=str(shared_data / "web_samples/dolma/tests/data/warc/*.warc.gz"),
                                    source="crawl")], IngestConfig())
    assert len(docs) + len(rejects) >= 37
    assert all(d["source"] == "crawl" and d["text"].strip() for d in docs.values())


def test_format_detection_and_errors(tmp_path):
    assert detect_format("a/b.warc.wet.gz") == "wet"
    assert detect_format("CC-MAIN-1.warc.gz") == "warc"
    assert detect_format("x.jsonl.zst") == "jsonl"
    assert detect_format("x.parquet") == "parquet"
    with pytest.raises(ConfigError, match="cannot tell the format"):
        detect_format("notes.txt")
    with pytest.raises(ConfigError, match="matched no files"):
        read([InputSpec(path=str(tmp_path / "nothing-*.jsonl"))])


def test_to_document_keeps_fields_and_prefers_configured_source():
    doc = to_document({"text": "t", "source": "cc", "extra": [1, 2]}, InputSpec(path="x", source="web"),
                      "file")
    assert doc["source"] == "web" and doc["input_source"] == "cc" and doc["extra"] == [1, 2]
    assert to_document({"text": "t", "source": "cc"}, InputSpec(path="x"), "file")["source"] == "cc"
    assert to_document({"text": "t"}, InputSpec(path="x"), "file")["source"] == "file"


def test_corrupt_gzip_keeps_what_was_read_and_fails_once(tmp_path):
    good = b"".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}).encode() + b"\n"
                    for i in range(200))
    data = gzip.compress(good)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    docs, rejects = read([InputSpec(path=str(tmp_path / "cut.jsonl.gz"))])
    assert 0 < len(docs) < 200
    assert [r["reason"] for r in rejects] == ["read_error"]


def test_demo_corpus_formats_all_ingest():
    formats = {detect_format(str(p)) for p in DEMO_DATA.iterdir()
               if not p.name.startswith(("LICENSE", "README")) and not p.name.endswith(".txt")}
    assert formats == {"jsonl", "parquet", "warc", "wet"}
