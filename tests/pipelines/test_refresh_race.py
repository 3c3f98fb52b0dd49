"""Concurrent refreshes: a loser never touches the winner's version; one lock holder at a time.

An object store has no lock: two refreshes there can read the same head. These tests emulate that
locally by disabling `Corpus.lock` (or injecting a stale head read) and check that the commit's
exclusive create alone keeps the committed data right."""
from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import time

import pyarrow.dataset as ds
import pytest

import pipelines.refresh as refresh_module
from pipelines.corpus import Corpus, CorpusLocked, Version
from pipelines.job import load_config
from pipelines.refresh import refresh, refresh_key
from tests.support import DEMO_DATA, REPO

CONFIG = str(REPO / "configs/refresh.yaml")
WORKERS = ["--direct_num_workers=1"]
FIRST = [str(DEMO_DATA / "wikipedia_revisions.jsonl.zst")]
WIKIPEDIA = [str(DEMO_DATA / "wikipedia_revisions_more.parquet")]
CC_NET = [str(DEMO_DATA / "cc_net_en_head-0091.jsonl")]
quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def old_layout_v1(tmp_path_factory):
    """Version 1 in the layout written before commits/: `versions/00001/`, named by number."""
    root = tmp_path_factory.mktemp("old-layout") / "corpus"
    first = refresh(str(root), CONFIG, FIRST, beam_args=WORKERS, log=quiet)
    assert first.folder
    os.rename(root / first.folder, root / "versions" / "00001")
    shutil.rmtree(root / "commits")
    record = json.loads((root / "corpus.json").read_text())
    for v in record["versions"]:
        del v["folder"]
    (root / "corpus.json").write_text(json.dumps(record))
    return root


def _ids(folder) -> list[str]:
    table = ds.dataset(os.path.join(folder, "documents"), format="arrow").to_table(columns=["id"])
    return sorted(table.column("id").to_pylist())


def _sources(folder) -> dict[str, int]:
    table = ds.dataset(os.path.join(folder, "documents"), format="arrow").to_table(
        columns=["source"])
    return dict(collections.Counter(table.column("source").to_pylist()))


@pytest.mark.parametrize("when", ["before the loser's job", "after the loser's job"])
def test_a_losing_concurrent_refresh_keeps_the_winners_version(tmp_path, old_layout_v1,
                                                               monkeypatch, when):
    root = tmp_path / "corpus"
    shutil.copytree(old_layout_v1, root)
    corpus = Corpus(str(root))
    assert [v.version for v in corpus.versions()] == [1]  # the old layout is read
    assert corpus.version_dir(1) == str(root / "versions" / "00001")
    # An object store: no lock, so both refreshes read head 1. The cc_net refresh runs (and
    # commits version 2) after the Wikipedia one read the head, before or after its job ran.
    monkeypatch.setattr(Corpus, "lock", lambda self: contextlib.nullcontext())
    real_run_job, calls, winner = refresh_module.run_job, [], []

    def run_job(data, beam_args, **kwargs):
        calls.append(data["output"])
        first = len(calls) == 1
        if first and when.startswith("before"):
            winner.append(refresh(str(root), CONFIG, CC_NET, beam_args=WORKERS, log=quiet))
        stats = real_run_job(data, beam_args, **kwargs)
        if first and when.startswith("after"):
            winner.append(refresh(str(root), CONFIG, CC_NET, beam_args=WORKERS, log=quiet))
        return stats

    monkeypatch.setattr(refresh_module, "run_job", run_job)
    with pytest.raises(CorpusLocked, match="moved to version 2 while this refresh ran from "
                                           "version 1: not committed"):
        refresh(str(root), CONFIG, WIKIPEDIA, beam_args=WORKERS, log=quiet)
    monkeypatch.undo()

    versions = Corpus(str(root)).versions()
    assert [v.version for v in versions] == [1, 2]
    v2 = versions[1]
    assert winner[0].version == 2 and v2.inputs == CC_NET
    assert v2.refresh_key == refresh_key(load_config(CONFIG, inputs=CC_NET))
    # version 2's folder holds exactly what corpus.json says: the cc_net documents
    ids = _ids(Corpus(str(root)).version_dir(v2.version))
    assert len(ids) == v2.docs > 0
    assert {s: c["docs"] for s, c in v2.sources.items()} == _sources(
        Corpus(str(root)).version_dir(v2.version)) == {"common-crawl": v2.docs}
    with open(CC_NET[0]) as f:
        assert set(ids) <= {json.loads(line)["id"] for line in f}
    cached = json.loads((root / "corpus.json").read_text())["versions"]
    assert [v["version"] for v in cached] == [1, 2] and cached[1]["folder"] == v2.folder
    # the loser left nothing: only the two committed folders remain
    assert sorted(os.listdir(root / "versions")) == sorted(["00001", v2.folder.split("/")[1]])
    assert not os.path.exists(root / ".work")
    index = json.loads((root / "index" / "index.json").read_text())
    assert ("version-00002", v2.docs) in [(u["id"], u["documents"]) for u in index["updates"]]

    # the loser, run again, becomes version 3 on top of the winner's; version 2 is untouched
    third = refresh(str(root), CONFIG, WIKIPEDIA, beam_args=WORKERS, log=quiet)
    assert third.version == 3 and third.docs > 100
    assert Corpus(str(root)).versions()[1] == v2
    assert _ids(Corpus(str(root)).version_dir(2)) == ids
    third_ids = _ids(Corpus(str(root)).version_dir(third.version))
    assert len(third_ids) == third.docs and not set(third_ids) & set(ids)
    assert {s: c["docs"] for s, c in third.sources.items()} == _sources(
        Corpus(str(root)).version_dir(third.version)) == {"wikipedia_revisions_more": third.docs}


def test_a_commit_from_a_stale_head_read_is_refused_by_the_exclusive_create(tmp_path,
                                                                            monkeypatch):
    corpus = Corpus(str(tmp_path / "corpus"))
    corpus.commit(Version(1, 5, "now", [], "h", "winner", folder="versions/a"), expected_head=0)
    monkeypatch.setattr(Corpus, "head", lambda self: None)  # what a stale read would return
    with pytest.raises(CorpusLocked, match="not committed"):
        corpus.commit(Version(1, 7, "now", [], "h", "loser", folder="versions/b"),
                      expected_head=0)
    monkeypatch.undo()
    assert [(v.version, v.refresh_key, v.folder) for v in corpus.versions()] == [
        (1, "winner", "versions/a")]
    assert json.loads((tmp_path / "corpus" / "corpus.json").read_text())["versions"][0][
        "folder"] == "versions/a"
    assert os.listdir(tmp_path / "corpus" / "commits") == ["00001.json"]


def _commit(root, i, barrier, results, losers):
    barrier.wait()
    try:
        Corpus(root).commit(Version(1, i, "now", [], "h", f"k{i}", folder=f"versions/p{i}"),
                            expected_head=0)
        results.put((i, "committed"))
    except CorpusLocked:
        results.put((i, "refused"))
    except BaseException as exc:  # noqa: BLE001
        results.put((i, f"error {exc!r}"))


def _race(target, args, contenders=4) -> list:
    """Start `contenders` processes that run `target` at once (a barrier); their outcomes."""
    context = multiprocessing.get_context("fork")
    barrier, results, losers = context.Barrier(contenders), context.Queue(), context.Value("i", 0)
    processes = [context.Process(target=target, args=(*args, i, barrier, results, losers))
                 for i in range(contenders)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    return sorted(results.get(timeout=10) for _ in processes)


@pytest.mark.parametrize("round_", range(20))
def test_processes_racing_to_commit_the_same_version_one_wins(tmp_path, round_):
    root = str(tmp_path / "corpus")
    results = _race(_commit, (root,))
    winners = [i for i, outcome in results if outcome == "committed"]
    assert len(winners) == 1 and all(o in ("committed", "refused") for _, o in results), results
    versions = Corpus(root).versions()
    assert [(v.version, v.docs, v.folder) for v in versions] == [
        (1, winners[0], f"versions/p{winners[0]}")]


def _slow_file_system(seed: int) -> None:
    """In this (forked) process only: delay each file-system call by 0-20 ms at random, a busy
    disk or a descheduled process, so the contenders interleave between every two steps."""
    delays = random.Random(seed)
    for name in ("open", "replace", "rename", "link", "unlink", "stat", "fstat"):
        call = getattr(os, name)
        setattr(os, name, lambda *a, _call=call, **k: (time.sleep(delays.random() / 50),
                                                         _call(*a, **k))[1])


def _take_lock(root, i, barrier, results, losers, contenders=4):
    _slow_file_system(i)
    barrier.wait()
    try:
        with Corpus(root).lock():
            results.put((i, f"won {os.getpid()}"))
            deadline = time.monotonic() + 10
            while losers.value < contenders - 1 and time.monotonic() < deadline:
                time.sleep(0.01)  # hold it until every other contender has tried
        return
    except CorpusLocked as exc:
        results.put((i, f"locked {exc}"))
    except BaseException as exc:  # noqa: BLE001
        results.put((i, f"error {exc!r}"))
    with losers.get_lock():
        losers.value += 1


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("round_", range(20))
def test_processes_racing_to_take_over_a_stale_lock_one_wins(tmp_path, round_):
    root = tmp_path / "corpus"
    root.mkdir()
    # a lock left by a killed refresh on this host
    (root / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                            "since": "2026-01-01T00:00:00+00:00"}))
    results = _race(_take_lock, (str(root),))
    won = [o for _, o in results if o.startswith("won")]
    assert len(won) == 1, results
    winner = won[0].split()[1]
    for _, outcome in results:
        if not outcome.startswith("won"):
            # the one-line error names the live holder: its pid, host and start time
            assert outcome.startswith("locked corpus") and f"pid {winner} on " in outcome, results
            assert " since 20" in outcome, results
    assert not (root / ".lock").exists()  # released
    with Corpus(str(root)).lock() as alone:  # and free again
        assert alone


def test_object_store_commits_are_conditional_creates(monkeypatch):
    """No bucket is reachable here: fake clients check that each commit asks the store to
    create the object only if it does not exist, and that a refusal means 'lost'."""
    import boto3
    from botocore.exceptions import ClientError
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    from transforms.core.files import create_exclusive

    objects: dict[str, bytes] = {}

    class Blob:
        def __init__(self, name):
            self.name = name

        def upload_from_string(self, data, content_type=None, if_generation_match=None):
            assert if_generation_match == 0  # create only: no live generation may exist
            if self.name in objects:
                raise PreconditionFailed("exists")
            objects[self.name] = data

    class Client:
        def bucket(self, bucket):
            return type("Bucket", (), {"blob": lambda _, name: Blob(f"gs://{bucket}/{name}")})()

    class S3:
        def put_object(self, Bucket, Key, Body, IfNoneMatch=None):
            assert IfNoneMatch == "*"
            if f"s3://{Bucket}/{Key}" in objects:
                raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")
            objects[f"s3://{Bucket}/{Key}"] = Body

    monkeypatch.setattr(storage, "Client", Client)
    monkeypatch.setattr(boto3, "client", lambda service: S3())
    for path in ("gs://b/corpus/commits/00002.json", "s3://b/corpus/commits/00002.json"):
        assert create_exclusive(path, b"first") is True
        assert create_exclusive(path, b"second") is False
        assert objects[path] == b"first"
