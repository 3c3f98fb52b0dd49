"""Megatron-LM / NeMo indexed datasets: `.bin` + `.idx` pairs in the MMIDIDX v1 format.

`PREFIX.bin` is every sequence's tokens back to back, in one dtype, little-endian.
`PREFIX.idx` is (all integers little-endian):

    b"MMIDIDX\\x00\\x00"          9 bytes of magic
    version                       <Q, 1
    dtype code                    <B: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                                     7 float32, 8 uint16
    sequence count                <Q
    document count                <Q, the number of entries of the document indices: documents + 1
    sequence lengths              int32 x sequence count (tokens)
    sequence pointers             int64 x sequence count (byte offsets into .bin)
    document indices              int64 x document count: 0, then the sequence index after each
                                  document ends

Here one document is one sequence, so the document indices are 0, 1, ..., n. Tokens are uint16
when the vocabulary fits (< 65,536 ids), else int32 (Megatron's own `optimal_dtype` takes uint16
below 65,500; readers go by the dtype code either way).

`MegatronWriter` streams a shard: each batch's tokens go to the `.bin` as they come (under a
temporary name), only the int32 length of each sequence stays in memory, and `close` writes the
`.idx` (in chunks) and renames both into place. Beside them `PREFIX.docs.arrow` (an Arrow IPC
stream, also streamed) gives each sequence's document `id` and `source`, in order, for
provenance; Megatron ignores it.
"""
from __future__ import annotations

import hashlib
import struct
import uuid
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from transforms.core.files import RAW

HEADER = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3,
               np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.float64): 6,
               np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
EXTENSIONS = (".bin", ".idx", ".docs.arrow")
DOCS_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("source", pa.string())])
_CHUNK = 1 << 20  # sequences per chunk of the .idx arrays


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


def write_index(handle, lengths: np.ndarray, dtype: np.dtype) -> None:
    """The `.idx` of sequences of `lengths` tokens of `dtype`, one document each, written in
    chunks so the temporaries stay small."""
    n = len(lengths)
    handle.write(HEADER)
    handle.write(struct.pack("<Q", VERSION))
    handle.write(struct.pack("<B", DTYPE_CODES[np.dtype(dtype)]))
    handle.write(struct.pack("<Q", n))
    handle.write(struct.pack("<Q", n + 1))
    for start in range(0, n, _CHUNK):
        handle.write(np.ascontiguousarray(lengths[start:start + _CHUNK], dtype="<i4").tobytes())
    offset = 0
    for start in range(0, n, _CHUNK):
        chunk = lengths[start:start + _CHUNK].astype(np.int64) * np.dtype(dtype).itemsize
        pointers = np.cumsum(chunk) - chunk + offset
        offset += int(chunk.sum())
        handle.write(pointers.astype("<i8").tobytes())
    for start in range(0, n + 1, _CHUNK):
        handle.write(np.arange(start, min(n + 1, start + _CHUNK), dtype="<i8").tobytes())


class MegatronWriter:
    """One shard `PREFIX.bin` + `PREFIX.idx` (+ `PREFIX.docs.arrow`), streamed batch by batch."""

    def __init__(self, prefix: str, dtype: np.dtype, doc_ids: bool = True):
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        self.tag = f".tmp-{uuid.uuid4().hex}"
        self.bin = FileSystems.create(prefix + ".bin" + self.tag, compression_type=RAW)
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.lengths: list[np.ndarray] = []
        self.docs = self.docs_file = None
        if doc_ids:
            self.docs_file = FileSystems.create(prefix + ".docs.arrow" + self.tag,
                                                compression_type=RAW)
            self.docs = pa.ipc.new_stream(self.docs_file, DOCS_SCHEMA)
        self.first_id: Optional[str] = None
        self.sources: dict[str, dict] = {}

    @property
    def tokens(self) -> int:
        return self.bytes // self.dtype.itemsize

    def write(self, input_ids: pa.Array, ids: pa.Array, sources: pa.Array) -> None:
        """Append one sequence per row of `input_ids` (a list array of token ids)."""
        if not len(input_ids):
            return
        if isinstance(input_ids, pa.ChunkedArray):
            input_ids = input_ids.combine_chunks()
        lengths = pc.list_value_length(input_ids).to_numpy(zero_copy_only=False).astype(np.int32)
        values = input_ids.flatten().to_numpy(zero_copy_only=False)
        if len(values) and (values.min() < 0 or values.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token id outside {self.dtype} in a batch")
        data = np.ascontiguousarray(values.astype(self.dtype.newbyteorder("<"), copy=False))
        view = memoryview(data).cast("B")
        self.bin.write(view)
        self.sha256.update(view)
        self.bytes += view.nbytes
        self.lengths.append(lengths)
        ids = ids.cast(pa.string())
        sources = sources.cast(pa.string())
        if self.docs is not None:
            self.docs.write_batch(pa.record_batch([ids, sources], schema=DOCS_SCHEMA))
        first = pc.min(ids).as_py()
        if first is not None:
            self.first_id = first if self.first_id is None else min(self.first_id, first)
        grouped = pa.table({"source": sources, "tokens": pa.array(lengths.astype(np.int64))}
                           ).group_by("source").aggregate([("tokens", "sum"), ("tokens", "count")])
        for source, n_tokens, n_docs in zip(*(grouped.column(c).to_pylist() for c in
                                              ("source", "tokens_sum", "tokens_count"))):
            entry = self.sources.setdefault(str(source), {"docs": 0, "tokens": 0})
            entry["docs"] += n_docs
            entry["tokens"] += n_tokens

    def abort(self) -> None:
        """Close and delete the unfinished files, quietly (on the way out of an error)."""
        for handle in (self.docs, self.docs_file, self.bin):
            try:
                if handle is not None:
                    handle.close()
            except Exception:  # pylint: disable=broad-except
                pass
        for ext in EXTENSIONS:
            try:
                FileSystems.delete([self.prefix + ext + self.tag])
            except Exception:  # pylint: disable=broad-except
                pass

    def close(self) -> dict:
        """Finish the shard; returns its entry (name, first id, counts, sha256 of the .bin)."""
        try:
            self.bin.close()
            if self.docs is not None:
                self.docs.close()
                self.docs_file.close()
            lengths = (np.concatenate(self.lengths) if self.lengths
                       else np.zeros(0, dtype=np.int32))
            self.lengths = []
            with FileSystems.create(self.prefix + ".idx" + self.tag, compression_type=RAW) as f:
                write_index(f, lengths, self.dtype)
            exts = [ext for ext in EXTENSIONS if ext != ".docs.arrow" or self.docs is not None]
            FileSystems.rename([self.prefix + ext + self.tag for ext in exts],
                               [self.prefix + ext for ext in exts])
        except BaseException:
            self.abort()
            raise
        return {"name": self.prefix.rsplit("/", 1)[-1], "first_id": self.first_id or "",
                "docs": int(len(lengths)), "tokens": self.tokens, "bytes": self.bytes,
                "sha256": self.sha256.hexdigest(), "sources": self.sources}
