"""A versioned corpus: immutable versions appended by refreshes, each committed by the exclusive
creation of one commit file.

Layout of a corpus folder:

    commits/NNNNN.json        the commit of version NNNNN: its record (counts, sources, refresh
                              key) and `folder`, the attempt folder that holds its documents
    corpus.json               every committed version, rebuilt from commits/ after each commit (a
                              cache: readers take the union of it and commits/)
    versions/<attempt>/       each attempt's job output: documents/, dead_letter/, clusters/,
                              manifest.json, stats.json (shards keep the `id` column). <attempt> is
                              `YYYYmmddTHHMMSS-<16 hex>`, unique to one refresh attempt
    versions/NNNNN/           a version of a corpus written before commits/ existed (corpus.json
                              entries without `folder`); still read
    index/                    the dedup index; version N's entries are the update `version-NNNNN`
    .lock                     held (`flock`) by the local refresh that is running

The version number is assigned at the commit: a refresh that started from head H writes its
documents to its own `versions/<attempt>/`, then creates `commits/<H+1>.json` only if it does not
exist (local: the record is written and fsynced to a temporary name, then `os.link`ed to the final
name, which fails if another attempt created it; gs://: `if_generation_match=0`; s3://: a put with
`If-None-Match: *`). Exactly one attempt creates it; a loser raises `CorpusLocked` and deletes only
its own attempt folder. A folder named by a commit file is never deleted or overwritten. A crash
before the commit leaves an attempt folder that nothing names (deleted by the next local refresh
that holds the lock); a crash after it makes the re-run a no-op (the same inputs and config are
recognised by their refresh key) that rebuilds corpus.json and rolls the index and report forward.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from apache_beam.io.filesystems import FileSystems

from transforms.core.files import create_exclusive, read_json, write_json_atomic

CORPUS_FILE, VERSIONS, COMMITS = "corpus.json", "versions", "commits"
INDEX, WORK, LOCK = "index", ".work", ".lock"  # index: the dedup index of committed versions
COMMIT_NAME = re.compile(r"\d{5,}\.json")


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
    folder: str = ""  # its attempt folder, relative to the corpus; "" = `versions/NNNNN` (old)

    @property
    def name(self) -> str:
        return f"{self.version:05d}"


def _exists(path: str) -> bool:
    return FileSystems.exists(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def new_attempt_id() -> str:
    """A name no other refresh attempt uses: UTC time plus 64 random bits."""
    return (dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-"
            + secrets.token_hex(8))


class Corpus:
    def __init__(self, root: str):
        self.root = root

    def path(self, *parts: str) -> str:
        return FileSystems.join(self.root, *parts)

    def _commit_records(self) -> list[dict]:
        folder = self.path(COMMITS)
        found = FileSystems.match([FileSystems.join(folder, "*.json")])[0].metadata_list
        paths = sorted(m.path for m in found if COMMIT_NAME.fullmatch(m.path.rsplit("/", 1)[-1]))
        return [read_json(path) for path in paths]

    def versions(self) -> list[Version]:
        """The committed versions: corpus.json's (it may lag one commit behind after a crash, and
        holds the versions of corpora written before commits/) and commits/, which wins."""
        found: dict[int, Version] = {}
        path = self.path(CORPUS_FILE)
        if _exists(path):
            for v in read_json(path)["versions"]:
                found[v["version"]] = Version(**v)
        for record in self._commit_records():
            found[record["version"]] = Version(**record)
        return [found[n] for n in sorted(found)]

    def head(self) -> Version | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def version_dir(self, version: Version | int) -> str:
        """The folder that holds a committed version, as its commit names it."""
        if isinstance(version, int):
            version = next((v for v in self.versions() if v.version == version), version)
        if isinstance(version, Version) and version.folder:
            return self.path(*version.folder.split("/"))
        number = version.version if isinstance(version, Version) else version
        return self.path(VERSIONS, f"{number:05d}")

    def attempt_dir(self, attempt: str) -> str:
        return self.path(VERSIONS, attempt)

    def remove_attempt(self, attempt: str) -> None:
        """Delete an attempt's folder (and any leftovers of its job beside it). Only for an attempt
        that no commit names: the caller's own, or one left by a killed run."""
        target = self.attempt_dir(attempt)
        if "://" in self.root:
            paths = [m.path for pattern in (f"{target}/**", f"{target}.*/**", f"{target}.*")
                     for m in FileSystems.match([pattern])[0].metadata_list]
            if paths:
                FileSystems.delete(sorted(set(paths)))
            return
        for path in [target] + [os.path.join(os.path.dirname(target), name) for name in
                                _listdir(os.path.dirname(target))
                                if name.startswith(attempt + ".")]:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)

    def remove_orphans(self) -> list[str]:
        """Local, with the lock held (so no other attempt runs): delete what killed refreshes
        left: attempt folders no commit names, `.work/` (older layout), temporary commit files."""
        committed = {os.path.normpath(self.version_dir(v)) for v in self.versions()}
        removed = []
        for name in _listdir(self.path(VERSIONS)):
            path = os.path.join(self.path(VERSIONS), name)
            if os.path.normpath(path) not in committed:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
                removed.append(path)
        for name in _listdir(self.path(COMMITS)):
            if not COMMIT_NAME.fullmatch(name):
                os.remove(os.path.join(self.path(COMMITS), name))
        if os.path.isdir(self.path(WORK)):
            shutil.rmtree(self.path(WORK), ignore_errors=True)
        return removed

    @contextmanager
    def lock(self):
        """Exclusive lock for one local refresh: `flock` on `.lock`, which the kernel releases
        when its holder dies, so a dead holder's lock is free without any takeover step. The
        file records the holder (pid, host, start time) for the error that a second refresh
        gets. The holder unlinks it while still holding it; a contender that locked the unlinked
        file sees that `.lock` is now another file and tries again, so two can never both hold
        it. Yields True (the caller is alone: it may remove what killed refreshes left); on
        object stores, where there is no lock, yields False at once and only the commit's
        exclusive create keeps concurrent refreshes apart."""
        if "://" in self.root:
            yield False
            return
        os.makedirs(self.root, exist_ok=True)
        path = self.path(LOCK)
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": dt.datetime.now(dt.timezone.utc).isoformat()}
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._lock_holder(fd)
                os.close(fd)
                raise CorpusLocked(
                    f"corpus {self.root} is being refreshed by pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('since', '?')}") from None
            try:
                held, now = os.fstat(fd), os.stat(path)
                same = (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder unlinked it between our open and flock: lock the new one
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(mine).encode())
            os.fsync(fd)
            yield True
        finally:
            try:
                os.unlink(path)  # before the close that releases it (see above)
            except OSError:
                pass
            os.close(fd)

    @staticmethod
    def _lock_holder(fd: int) -> dict:
        """Who holds the lock. It writes that just after it locks, so until then the file is
        empty or still names a dead holder: wait a moment for a live one."""
        holder: dict = {}
        for _ in range(50):
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode())
                if holder.get("host") != socket.gethostname() or _alive(int(holder["pid"])):
                    return holder
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.01)
        return holder

    def commit(self, version: Version, expected_head: int) -> None:
        """Make `version` (numbered `expected_head + 1`, its documents complete in
        `version.folder`) visible: create `commits/<number>.json` only if no other attempt did,
        then rebuild corpus.json. Raises CorpusLocked if the head moved (nothing committed)."""
        number = expected_head + 1
        if version.version != number:
            raise ValueError(f"version {version.version} cannot follow head {expected_head}")
        current = self.head()
        if (current.version if current else 0) != expected_head:
            raise self._moved(current, expected_head)
        record = json.dumps(asdict(version), indent=2, default=str).encode("utf-8")
        path = self.path(COMMITS, f"{number:05d}.json")
        if not create_exclusive(path, record):
            theirs = read_json(path)
            if not (version.folder and theirs.get("folder") == version.folder):
                raise self._moved(self.head(), expected_head)
            # else: a retried request found the commit its own first try created
        self.sync()

    def _moved(self, current: Version | None, expected_head: int) -> CorpusLocked:
        return CorpusLocked(f"corpus {self.root} moved to version "
                            f"{current.version if current else 0} while this refresh ran from "
                            f"version {expected_head}: not committed")

    def sync(self) -> None:
        """Rebuild corpus.json from the commits (atomic replace). Only ever adds versions; a
        rebuild that races another on an object store may leave it one commit behind, which the
        readers' union with commits/ and the next refresh's rebuild make up for."""
        write_json_atomic(self.path(CORPUS_FILE),
                          {"versions": [asdict(v) for v in self.versions()]})


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
