"""A versioned corpus: immutable versions appended by refreshes, committed by one atomic rename.

Layout of a corpus folder:

    corpus.json               the committed versions (the only thing readers trust)
    versions/NNNNN/           each version's job output: documents/, dead_letter/, clusters/,
                              manifest.json, stats.json (shards keep the `id` column)
    index/NNNNN/              dedup index entries added by version NNNNN
    .work/NNNNN/              a refresh in progress (ignored by readers; redone after a crash)
    .lock                     held by the refresh that is running

A version becomes visible only when `corpus.json` is replaced (temp file + rename), after its
documents and index entries are complete. A crash before that leaves the previous version
untouched and the re-run redoes the work; a crash after it makes the re-run a no-op (the same
inputs and config are recognised by their refresh key).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from apache_beam.io.filesystems import FileSystems

from transforms.core.files import read_json, write_json_atomic

CORPUS_FILE, VERSIONS, INDEX, WORK, LOCK = "corpus.json", "versions", "index", ".work", ".lock"


class CorpusLocked(RuntimeError):
    """Another refresh holds the corpus (or committed first)."""


@dataclass
class Version:
    version: int
    docs: int
    created: str
    inputs: list[str]
    config_hash: str
    refresh_key: str
    tokens: int = 0
    sources: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.version:05d}"


def _exists(path: str) -> bool:
    return FileSystems.exists(path)


class Corpus:
    def __init__(self, root: str):
        self.root = root

    def path(self, *parts: str) -> str:
        return FileSystems.join(self.root, *parts)

    def versions(self) -> list[Version]:
        path = self.path(CORPUS_FILE)
        if not _exists(path):
            return []
        return [Version(**v) for v in read_json(path)["versions"]]

    def head(self) -> Version | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def version_dir(self, number: int) -> str:
        return self.path(VERSIONS, f"{number:05d}")

    def work_dir(self, number: int) -> str:
        return self.path(WORK, f"{number:05d}")

    def index_dir(self, number: int) -> str:
        return self.path(INDEX, f"{number:05d}")

    def committed_index_dirs(self) -> list[str]:
        """Index folders of committed versions only: a crashed refresh's entries never count."""
        return [self.index_dir(v.version) for v in self.versions()
                if _exists(self.index_dir(v.version))]

    @contextmanager
    def lock(self):
        """Exclusive lock for one refresh (an O_EXCL lock file). A lock left by a dead process on
        this host is taken over; any other holder makes this refresh fail with a clear error."""
        if "://" in self.root:  # object stores: no exclusive create; commit()'s CAS still guards
            yield
            return
        os.makedirs(self.root, exist_ok=True)
        path = self.path(LOCK)
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": dt.datetime.now(dt.timezone.utc).isoformat(), "token": uuid.uuid4().hex}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._lock_holder(path)
                if holder and self._is_dead(holder):
                    os.replace(path, f"{path}.stale-{uuid.uuid4().hex}")
                    continue
                raise CorpusLocked(
                    f"corpus {self.root} is being refreshed by pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('since')}; if that run is gone, "
                    f"remove {path}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            break
        try:
            yield
        finally:
            if self._lock_holder(path).get("token") == mine["token"]:
                os.remove(path)

    @staticmethod
    def _lock_holder(path: str) -> dict:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _is_dead(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError):
            return False
        return False

    def commit(self, version: Version, expected_head: int) -> None:
        """Make `version` visible: compare-and-swap on the head, then one atomic rename."""
        current = self.head()
        if (current.version if current else 0) != expected_head:
            raise CorpusLocked(f"corpus {self.root} moved to version {current.version} while "
                               f"this refresh ran from version {expected_head}: not committed")
        versions = self.versions() + [version]
        write_json_atomic(self.path(CORPUS_FILE), {"versions": [asdict(v) for v in versions]})


def diff(a: Version | None, b: Version, between: list[Version]) -> dict:
    """What versions after `a` up to `b` added, per source, and what changed in the config."""
    added: dict[str, dict] = {}
    for version in between:
        for source, counts in version.sources.items():
            entry = added.setdefault(source, {"docs": 0, "tokens": 0})
            entry["docs"] += counts["docs"]
            entry["tokens"] += counts["tokens"]
    return {
        "from": a.version if a else 0,
        "to": b.version,
        "docs_added": sum(v.docs for v in between),
        "tokens_added": sum(v.tokens for v in between),
        "sources_added": dict(sorted(added.items())),
        "config_changed": bool(a) and a.config_hash != b.config_hash,
        "inputs": [i for v in between for i in v.inputs],
        "dropped": {v.version: v.stats.get("dropped", {}) for v in between},
    }
