"""Files through Beam's `FileSystems` (local, gs://, s3://): atomic writes and Arrow IPC reads.

Every file a reader might see half-written (manifests, stats, index and plan JSON, reports, cache
entries, spilled Arrow pieces) is written here: to a unique temporary name beside the target,
then renamed over it, so a reader sees the old file or the new one, never a prefix. On object
stores the rename is a copy then delete of one object, which is also all-or-nothing per object.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import IO, Any, Callable

import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.core.config import ConfigError

RAW = CompressionTypes.UNCOMPRESSED


def write_atomic(path: str, write: Callable[[IO[bytes]], Any]) -> str:
    """Call `write(handle)` on a temporary file, then rename it to `path` (parents are made)."""
    temp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with FileSystems.create(temp, compression_type=RAW) as handle:
            write(handle)
        FileSystems.rename([temp], [path])
    except BaseException:
        _remove_quietly(temp)
        raise
    return path


def write_bytes_atomic(path: str, data: bytes) -> str:
    return write_atomic(path, lambda handle: handle.write(data))


def write_json_atomic(path: str, data: Any) -> str:
    return write_bytes_atomic(path, json.dumps(data, indent=2, default=str).encode("utf-8"))


def read_json(path: str) -> Any:
    with FileSystems.open(path, compression_type=RAW) as handle:
        return json.loads(handle.read())


def write_arrow_stream(data: pa.Table | pa.RecordBatch, path: str) -> str:
    """One Arrow IPC stream file, written atomically."""
    def write(handle):
        with pa.ipc.new_stream(handle, data.schema) as writer:
            writer.write(data)
    return write_atomic(path, write)


def read_arrow(path: str) -> pa.Table:
    """A whole Arrow IPC file, in the file or the stream format."""
    with FileSystems.open(path, compression_type=RAW) as handle:
        data = pa.py_buffer(handle.read())
    try:
        return pa.ipc.open_file(data).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(data).read_all()


def read_arrow_batches(path: str):
    """The record batches of an Arrow IPC file (file or stream format), one at a time."""
    with FileSystems.open(path, compression_type=RAW) as handle:
        data = pa.py_buffer(handle.read())
    try:
        reader = pa.ipc.open_file(data)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:
        batches = pa.ipc.open_stream(data)
    yield from batches


def sync_dir(path: str) -> None:
    """Persist renames and creations in local folder `path` (best effort: not every filesystem
    lets a folder be opened or synced)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_exclusive_create(root: str, what: str = "corpus") -> None:
    """Fail before any work where `create_exclusive` cannot work at `root` (a `what`, named in
    the message)."""
    scheme = root.split("://", 1)[0] if "://" in root else ""
    try:
        if scheme == "gs":
            import google.cloud.storage  # noqa: F401
        elif scheme == "s3":
            import boto3  # noqa: F401
        elif scheme:
            raise ConfigError(f"{what} '{root}': no conditional create on {scheme}:// "
                              "(use a local folder, gs:// or s3://)")
    except ImportError as exc:
        extra = ' (pip install "sluice[s3]")' if scheme == "s3" else ""
        raise ConfigError(f"{what} '{root}': {scheme}:// needs {exc.name}{extra} "
                          "(for its conditional create)") from None


def create_exclusive(path: str, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; True if this call created it. The file
    appears whole or not at all. Local: written and fsynced under a unique temporary name, then
    `os.link`ed to `path` (fails if `path` exists). gs://: an upload with `if_generation_match=0`.
    s3://: a put with `If-None-Match: *`. (A retried request may find the object its own first
    try created: the caller compares the contents.)"""
    if path.startswith("gs://"):
        from google.api_core.exceptions import PreconditionFailed
        from google.cloud import storage

        bucket, _, name = path[len("gs://"):].partition("/")
        try:
            storage.Client().bucket(bucket).blob(name).upload_from_string(
                data, content_type="application/json", if_generation_match=0)
        except PreconditionFailed:
            return False
        return True
    if path.startswith("s3://"):
        import boto3
        from botocore.exceptions import ClientError

        bucket, _, key = path[len("s3://"):].partition("/")
        try:
            boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise
        return True
    check_exclusive_create(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
    finally:
        try:
            os.unlink(temp)
        except OSError:
            pass
    sync_dir(folder)
    return True


def _remove_quietly(path: str) -> None:
    try:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    except (IOError, OSError):
        pass
