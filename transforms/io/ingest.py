"""Ingest: JSONL (plain or compressed), Parquet, Arrow IPC, WARC and WET into the document schema.

Each input file, or byte range of a plain JSONL file, is read by one worker and emitted as record
batches of `batch_size` documents; the work items, not the documents, are shuffled to spread
reading over the workers. Every record read counts as `input`;
records that cannot become documents are failed (malformed JSON, invalid UTF-8, non-text) and
empty or oversized documents are dropped, each with its reason in the dead-letter output.
A truncated or corrupt file is one `read_error` failure, keeping the records read before the
error; a Parquet row group that cannot be read is one `read_error` counted as the rows it held.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterator, Literal, Optional

import apache_beam as beam
import orjson
import pyarrow.parquet as pq
import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from fastwarc.warc import ArchiveIterator, WarcRecordType
from pydantic import Field
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding

from transforms.core.accounting import FAILED_PREFIX, INPUT, Rejects, count
from transforms.core.columns import LICENSE
from transforms.core.config import ConfigError, config_dataclass, local_workers
from transforms.core.documents import ID, SOURCE, TEXT, URL, batch_from_rows, content_id
from transforms.core.files import read_arrow_batches
from transforms.core.progress import Progress

REJECTS = "rejects"
FORMATS = ("jsonl", "parquet", "arrow", "warc", "wet")


@config_dataclass
class InputSpec:
    """One input glob. `source` names the domain for mixing (default: the file's name stem);
    `license` is the licence id of its records (`CC-BY-SA-3.0`, `Apache-2.0`: see
    `transforms.mixture.licenses`), put in the `license` column of each record that does not
    carry a `license` string of its own (a record's own licence is the more precise one)."""

    path: str
    format: Literal["auto", "jsonl", "parquet", "arrow", "warc", "wet"] = "auto"
    source: Optional[str] = None
    license: Optional[str] = None
    text_field: str = "text"
    id_field: str = "id"
    url_field: str = "url"


@config_dataclass
class IngestConfig:
    batch_size: Annotated[int, Field(ge=1)] = 1000
    # plain JSONL files are read in ranges of at most this size
    split_bytes: Annotated[int, Field(ge=1)] = 64 * 2**20
    max_chars: Annotated[int, Field(ge=1)] = 1_000_000
    payload_limit: Annotated[int, Field(ge=0)] = 65536


@dataclass
class Failure:
    """A record that could not be read as a document."""

    reason: str
    payload: object
    detail: str = ""
    doc_id: Optional[str] = None
    rows: int = 1  # input records it stands for (a lost Parquet row group: the rows it held)


_COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz", ".lzma")


def detect_format(path: str) -> str:
    name = os.path.basename(path).lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if ".wet" in name:
        return "wet"
    if name.endswith(".warc") or name.endswith(".arc"):
        return "warc"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".arrow", ".feather", ".ipc")):
        return "arrow"
    raise ConfigError(f"cannot tell the format of '{path}': set 'format' on its input "
                      f"(one of {', '.join(FORMATS)})")


def format_of(spec: InputSpec, path: str) -> str:
    """The input's configured format, or the one its file name shows."""
    return spec.format if spec.format != "auto" else detect_format(path)


def source_from_path(path: str) -> str:
    name = os.path.basename(path)
    return name.split(".", 1)[0] or name


def expand_inputs(specs: list[InputSpec]) -> list[tuple[int, str, int]]:
    """(input index, file path, size in bytes) for every file the input globs match; an empty
    glob is an error."""
    files = []
    for index, spec in enumerate(specs):
        matches = FileSystems.match([spec.path])[0].metadata_list
        if not matches:
            raise ConfigError(f"input '{spec.path}' matched no files")
        files += [(index, m.path, m.size_in_bytes) for m in sorted(matches, key=lambda m: m.path)]
    return files


MIN_SPLIT_BYTES = 2**20
RANGES_PER_WORKER = 4  # several ranges per worker even out ranges that filter unequally


def split_size(files: list[tuple[int, str, int]], split_bytes: int,
               workers: Optional[int]) -> int:
    """Byte-range size for plain JSONL: `split_bytes`, or less when a local run would otherwise
    leave workers idle (one 10 MB file is one range, read by one of the workers)."""
    if workers is None:
        return split_bytes
    total = sum(size for _, _, size in files)
    return max(MIN_SPLIT_BYTES, min(split_bytes, -(-total // (RANGES_PER_WORKER * workers))))


def read_ranges(files: list[tuple[int, str, int]], specs: list[InputSpec],
                split_bytes: int) -> list[tuple[int, str, int, Optional[int]]]:
    """(input index, path, start, end) work items: plain JSONL files larger than `split_bytes`
    become byte ranges read by different workers (`read_jsonl`); other files are read whole
    (end None), largest first. Splitting the reading, rather than shuffling the documents read,
    spreads a big file over the workers without the runner holding the corpus."""
    sized = []
    for index, path, size in files:
        plain_jsonl = (format_of(specs[index], path) == "jsonl"
                       and not path.lower().endswith(_COMPRESSION_SUFFIXES))
        if plain_jsonl and size > split_bytes:
            step = -(-size // -(-size // split_bytes))  # equal ranges, no small remainder
            sized += [(min(step, size - start), (index, path, start, min(start + step, size)))
                      for start in range(0, size, step)]
        else:
            sized.append((size, (index, path, 0, None)))
    # largest first: the local runner deals work items to its workers in turn
    return [item for _, item in sorted(sized, key=lambda pair: -pair[0])]


# --- raw record readers: path -> dicts or Failures ----------------------------------------------

class _ZstdFrames(io.RawIOBase):
    """A zstd stream of one or more frames (many writers emit several), decoded frame by frame so
    that input ending inside a frame -- a truncated file -- raises EOFError, as gzip, bz2 and
    lzma do, instead of ending the stream early in silence."""

    CHUNK = 2**16

    def __init__(self, raw):
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None  # the decompressor of the frame being read, None between frames
        self._pending = b""  # input after the end of the last frame
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data, self._pending = self._pending or self._raw.read(self.CHUNK), b""
            if not data:
                if self._frame is not None:
                    raise EOFError("zstd input ended inside a frame (the file is truncated)")
                return 0
            if self._frame is None:
                self._frame = self._dctx.decompressobj()
            self._out = memoryview(self._frame.decompress(data))
            if self._frame.eof:
                self._pending, self._frame = self._frame.unused_data, None
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


@contextlib.contextmanager
def _open_decompressed(path: str):
    """Open a local or remote file, undoing .gz/.zst/.bz2/.xz compression with stream readers
    that raise on a truncated or corrupt stream (Beam's own readers end bz2 and xz early in
    silence); the file is closed with the stream."""
    lower = path.lower()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        if lower.endswith(".gz"):
            stream = gzip.GzipFile(fileobj=raw)
        elif lower.endswith((".zst", ".zstd")):
            stream = io.BufferedReader(_ZstdFrames(raw), buffer_size=2**16)
        elif lower.endswith(".bz2"):
            stream = bz2.BZ2File(raw)
        elif lower.endswith((".xz", ".lzma")):
            stream = lzma.LZMAFile(raw)
        else:
            yield raw
            return
        with stream:
            yield stream


# orjson reads an integer outside int64/uint64 as a float (of magnitude >= 2**63); a record holding
# such a float is read again by the standard library, which keeps the integer exact
_BIG = float(2**63)
_BIG_EXPONENT = re.compile(rb"e\+(?:1[89]|[2-9][0-9]|[0-9]{3})")  # orjson's text of such floats


def _may_hold_big_int(record: dict) -> bool:
    for value in record.values():
        kind = type(value)
        if kind is float:
            if not -_BIG < value < _BIG:
                return True
        elif (kind is dict or kind is list) and _BIG_EXPONENT.search(orjson.dumps(value)):
            return True
    return False


def read_jsonl(path: str, start: int = 0, end: Optional[int] = None) -> Iterator[dict | Failure]:
    """Records of a JSONL file, or of the lines that start in [start, end) of a plain one."""
    with _open_decompressed(path) as f:
        if start:
            f.seek(start - 1)
            f.readline()  # the rest of the line that began before `start` belongs to that range
        while end is None or f.tell() < end:
            line = f.readline()
            if not line:
                break
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    yield Failure("invalid_utf8", line, str(bad))
                    continue
                yield Failure("malformed_json", line, str(exc))
                continue
            if not isinstance(record, dict):
                yield Failure("not_an_object", line, f"JSON {type(record).__name__}, not an object")
                continue
            yield json.loads(line) if _may_hold_big_int(record) else record


def read_parquet(path: str) -> Iterator[dict | Failure]:
    """Rows of a Parquet file, row group by row group: a row group that cannot be read is one
    `read_error` standing for the rows its metadata says it held and were not read, and the
    other row groups are still read. An unreadable footer fails the file (raised)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        parquet = pq.ParquetFile(f)
        for group in range(parquet.num_row_groups):
            held = parquet.metadata.row_group(group).num_rows
            read = 0
            try:
                for batch in parquet.iter_batches(batch_size=1024, row_groups=[group]):
                    read += batch.num_rows
                    yield from batch.to_pylist()
            except Exception as exc:  # a damaged row group: keep the others
                yield Failure("read_error", path, f"{path}: row group {group} of "
                              f"{parquet.num_row_groups} ({held} rows, {held - read} not read): "
                              f"{type(exc).__name__}: {exc}", rows=max(1, held - read))


def read_arrow_records(path: str) -> Iterator[dict | Failure]:
    """Arrow IPC, file or stream format (the file is one shard: read whole, then batch by batch)."""
    for batch in read_arrow_batches(path):
        yield from batch.to_pylist()


def _warc_records(path: str, wanted: WarcRecordType, parse_http: bool,
                  convert: Callable[[Any, bytes], dict | Failure]) -> Iterator[dict | Failure]:
    """`convert(record, body)` for each record of type `wanted`, or a Failure for what fastwarc
    could not frame, which it would otherwise pass over in silence: a record without a valid WARC
    header (a file whose line endings were turned into LF reads as one `unknown` record holding
    the rest of the file) and a body shorter than its Content-Length (a truncated file)."""
    types = wanted | WarcRecordType.unknown
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for record in ArchiveIterator(f, record_types=types, parse_http=parse_http):
            if record.record_type == WarcRecordType.unknown:
                yield Failure("malformed_warc", b"", f"{path}: no valid WARC record header at "
                              f"byte {record.stream_pos} (WARC needs CRLF line endings)")
                continue
            body = record.reader.read()
            if len(body) < record.content_length:
                yield Failure("truncated_record", body, f"{path}: {len(body)} of "
                              f"{record.content_length} bytes", record.record_id)
                continue
            yield convert(record, body)


def read_warc(path: str) -> Iterator[dict | Failure]:
    """HTTP responses of a WARC, HTML reduced to main text by resiliparse."""
    return _warc_records(path, WarcRecordType.response, True, _response_document)


def _response_document(record, body: bytes) -> dict | Failure:
    record_id = record.record_id
    status = record.http_headers.status_code if record.http_headers else None
    content_type = (record.http_content_type or "").lower()
    if status is not None and status != 200:
        return Failure("http_status", body, f"HTTP status {status}", record_id)
    if "html" not in content_type and "text" not in content_type:
        return Failure("non_text", body, f"content type {content_type or 'unknown'}", record_id)
    html = bytes_to_str(body, record.http_charset or detect_encoding(body))
    text = extract_plain_text(html, main_content=True) if "html" in content_type else html
    return {ID: record_id, TEXT: text, URL: record.headers.get("WARC-Target-URI"),
            "warc_date": record.headers.get("WARC-Date"), "content_type": content_type}


def read_wet(path: str) -> Iterator[dict | Failure]:
    """Conversion records of a WET file: the payload is already the page text."""
    return _warc_records(path, WarcRecordType.conversion, False, _conversion_document)


def _conversion_document(record, body: bytes) -> dict | Failure:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return Failure("invalid_utf8", body, str(bad), record.record_id)
    return {ID: record.record_id, TEXT: text, URL: record.headers.get("WARC-Target-URI"),
            "warc_date": record.headers.get("WARC-Date"),
            "warc_language": record.headers.get("WARC-Identified-Content-Language")}


READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "arrow": read_arrow_records,
           "warc": read_warc, "wet": read_wet}


# --- records to documents -----------------------------------------------------------------------

def to_document(record: dict, spec: InputSpec, default_source: str) -> dict | Failure:
    """Map one raw record onto the document schema, keeping every other field as-is."""
    raw_id = record.pop(spec.id_field, None) if spec.id_field != ID else record.get(ID)
    text = record.pop(spec.text_field, None) if spec.text_field != TEXT else record.get(TEXT)
    if not isinstance(text, str):
        reason, detail = (("missing_text", f"no '{spec.text_field}' field") if text is None else
                          ("non_text", f"'{spec.text_field}' is {type(text).__name__}"))
        return Failure(reason, record | {spec.text_field: text}, detail,
                       None if raw_id is None else str(raw_id))
    doc = {ID: str(raw_id) if raw_id is not None else content_id(text), TEXT: text}
    record_source = record.get(SOURCE)
    doc[SOURCE] = spec.source or (record_source if isinstance(record_source, str) else None) \
        or default_source
    if spec.source and record_source is not None and record_source != spec.source:
        doc["input_source"] = record_source
    url = record.pop(spec.url_field, None) if spec.url_field != URL else record.get(URL)
    doc[URL] = url if isinstance(url, str) else None
    for key, value in record.items():
        if key not in doc and key not in (SOURCE, URL):
            doc[key] = value
    if spec.license and not (isinstance(doc.get(LICENSE), str) and doc[LICENSE].strip()):
        doc[LICENSE] = spec.license
    return doc


def check_size(doc: dict, max_chars: int) -> Optional[str]:
    """The drop reason for a document that is empty or oversized, else None."""
    text = doc[TEXT]
    if not text.strip():
        return "empty"
    if len(text) > max_chars:
        return "too_long"
    return None


class ReadFileFn(beam.DoFn):
    """(input index, path) -> document batches, plus rejected records on the `rejects` output."""

    def __init__(self, specs: list[InputSpec], config: IngestConfig):
        self.specs = specs
        self.config = config

    def setup(self):
        self.progress = Progress("ingest")

    def process(self, element):
        index, path, start, end = element
        spec = self.specs[index]
        fmt = format_of(spec, path)
        default_source = source_from_path(path)
        rejects = Rejects("ingest", self.config.payload_limit)
        docs: list[dict] = []
        read = 0  # records read, counted as input once per batch rather than per record
        records = read_jsonl(path, start, end) if end is not None else READERS[fmt](path)
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except Exception as exc:  # a corrupt file fails once, keeping what was read
                read += 1
                rejects.fail("read_error", None, default_source, path,
                             f"{path}: {type(exc).__name__}: {exc}")
                break
            read += 1
            if isinstance(record, Failure) and record.rows > 1:
                # one dead-letter row for records the file lost together (a Parquet row group),
                # counted as input and as failed once per record it stands for
                read += record.rows - 1
                count(FAILED_PREFIX + record.reason, record.rows - 1)
            doc = record if isinstance(record, Failure) else to_document(record, spec, default_source)
            if isinstance(doc, Failure):
                rejects.fail(doc.reason, doc.doc_id, spec.source or default_source, doc.payload,
                             doc.detail)
                continue
            reason = check_size(doc, self.config.max_chars)
            if reason:
                rejects.drop(reason, doc[ID], doc[SOURCE], doc, f"{len(doc[TEXT])} chars")
                continue
            docs.append(doc)
            if len(docs) >= self.config.batch_size:
                count(INPUT, read)
                read = 0
                yield batch_from_rows(docs)
                self.progress.add(len(docs))
                docs = []
            if len(rejects) >= self.config.batch_size:
                yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())
        count(INPUT, read)
        if docs:
            yield batch_from_rows(docs)
            self.progress.add(len(docs))
        if len(rejects):
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())


class ReadDocuments(beam.PTransform):
    """Read every input glob into document batches; returns (documents, rejects)."""

    def __init__(self, specs: list[InputSpec], config: IngestConfig):
        super().__init__()
        self.specs = specs
        self.config = config

    def expand(self, pbegin):
        # detect_format fails here, at construction, rather than on a worker
        files = expand_inputs(self.specs)
        workers = local_workers(pbegin.pipeline.options)
        items = read_ranges(files, self.specs,
                            split_size(files, self.config.split_bytes, workers))
        read = (pbegin
                | "ListFiles" >> beam.Create(items, reshuffle=False)
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadFiles" >> beam.ParDo(ReadFileFn(self.specs, self.config))
                .with_outputs(REJECTS, main="documents"))
        return read.documents, read[REJECTS]
