"""Scheduled refresh: versions, incremental dedup against the corpus, kill-and-rerun, locking."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pytest

from pipelines.corpus import Corpus, CorpusLocked, Version
from pipelines.refresh import MixtureReport, refresh
from tests.support import DEMO_DATA, REPO

CONFIG = str(REPO / "configs/refresh.yaml")
WORKERS = ["--direct_num_workers=1"]
FIRST = [str(DEMO_DATA / "wikipedia_revisions.jsonl.zst")]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """Snapshot 2: new real documents plus exact and lightly edited copies of snapshot 1's."""
    folder = tmp_path_factory.mktemp("snapshots")
    import zstandard

    old = [json.loads(line) for line in zstandard.ZstdDecompressor().stream_reader(
        open(FIRST[0], "rb")).read().decode().splitlines()]
    copies = []
    for i, doc in enumerate(old[:60]):
        text = doc["text"] if i % 2 else doc["text"].replace(" the ", " the the ", 1)
        copies.append({"id": f"copy-{i}", "text": text, "source": "mirror"})
    (folder / "mirror.jsonl").write_text("".join(json.dumps(d) + "\n" for d in copies))
    second = [str(folder / "mirror.jsonl"), str(DEMO_DATA / "wikipedia_revisions_more.parquet"),
              str(DEMO_DATA / "cc_net_en_head-0091.jsonl")]
    return second


def corpus_state(root) -> dict:
    """Everything a refresh leaves that must not depend on crashes: versions, ids, index."""
    corpus = Corpus(str(root))
    state = {"versions": [(v.version, v.docs, v.tokens, v.sources, v.refresh_key,
                           v.stats["dropped"]) for v in corpus.versions()]}
    for v in corpus.versions():
        table = ds.dataset(os.path.join(corpus.version_dir(v.version), "documents"),
                           format="arrow").to_table(columns=["id", "text"])
        state[f"ids-{v.version}"] = sorted(zip(*(table.column(c).to_pylist() for c in ("id", "text"))))
    with open(os.path.join(root, "index", "index.json")) as f:
        index = json.load(f)
    state["index"] = sorted((u["id"], u["documents"]) for u in index["updates"])
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory, snapshots):
    root = tmp_path_factory.mktemp("reference") / "corpus"
    first = refresh(str(root), CONFIG, FIRST, beam_args=WORKERS, log=lambda *_: None)
    second = refresh(str(root), CONFIG, snapshots, beam_args=WORKERS, log=lambda *_: None)
    return root, first, second


def test_two_refreshes_make_two_versions(reference):
    root, first, second = reference
    assert (first.version, second.version) == (1, 2)
    assert first.stats["input"] == 402 and 250 < first.docs < 402  # revisions collapse
    # The mirror's 60 copies of version 1 documents are duplicates of the corpus index.
    assert second.stats["dropped"]["duplicate_of_index"] >= 55
    assert "mirror" not in second.sources or second.sources["mirror"]["docs"] <= 5
    assert second.sources["wikipedia_revisions_more"]["docs"] > 100
    for v in (first, second):
        stats = v.stats
        assert stats["input"] == stats["kept"] + sum(stats["dropped"].values()) + stats["failed"]
        # each version lives in its own attempt folder, which its commit file names
        assert v.folder.startswith("versions/") and v.folder != f"versions/{v.name}"
        assert os.path.exists(os.path.join(Corpus(str(root)).version_dir(v), "manifest.json"))
        assert (root / "commits" / f"{v.name}.json").exists()
    assert sorted(os.listdir(root / "versions")) == sorted(
        v.folder.split("/")[1] for v in (first, second))
    html = (root / "report.html").read_text()
    assert "wikipedia_revisions_more" in html and "data:image/png;base64," in html
    assert not (root / ".lock").exists()


def test_rerunning_a_committed_refresh_changes_nothing(reference, snapshots):
    root, _, second = reference
    before = corpus_state(root)
    again = refresh(str(root), CONFIG, snapshots, beam_args=WORKERS, log=lambda *_: None)
    assert again.version == second.version
    assert corpus_state(root) == before


def test_refresh_rerenders_the_mixture_report_with_corpus_tokens(reference, snapshots, tmp_path,
                                                                 shared_data):
    root, _, second = reference
    regmix = shared_data / "regmix"
    model = tmp_path / "fit"
    fitted = subprocess.run([sys.executable, "-m", "pipelines", "mixture", "fit", "--mixtures",
                             str(regmix / "train_mixture_1m.csv"), "--losses",
                             str(regmix / "train_pile_loss_1m.csv"), "--target", "pile_cc",
                             "--model", "linear", "--candidates", "2000", "--output", str(model)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    before = (model / "report.html").read_text()
    again = refresh(str(root), CONFIG, snapshots, beam_args=WORKERS, log=lambda *_: None,
                    mixture=MixtureReport(str(model), tokens=1_000_000))
    assert again.version == second.version  # a committed refresh: only the reports are redone
    after = (model / "report.html").read_text()
    assert after != before and "1,000,000" in after


def test_corpus_log_and_diff(reference):
    root, _, _ = reference
    run = lambda *args: subprocess.run([sys.executable, "-m", "pipelines", "corpus", *args],  # noqa: E731
                                       capture_output=True, text=True, check=True, cwd=REPO).stdout
    log = json.loads(run("log", str(root), "--json"))
    assert [v["version"] for v in log] == [1, 2]
    assert set(log[0]) == {"version", "docs", "tokens", "created", "input", "config_hash"}
    change = json.loads(run("diff", str(root), "1", "2"))
    assert change["docs_added"] == log[1]["docs"] and change["from"] == 1
    assert "wikipedia_revisions_more" in change["sources_added"]
    assert "version" in run("log", str(root))


def test_a_second_refresh_cannot_commit_while_one_holds_the_corpus(tmp_path, snapshots):
    corpus = Corpus(str(tmp_path / "corpus"))
    with corpus.lock():
        done = subprocess.run([sys.executable, "-m", "pipelines", "refresh", "--corpus",
                               corpus.root, "--config", CONFIG, *FIRST, *WORKERS],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        assert done.returncode == 3
        assert "is being refreshed by pid" in done.stderr
    # A commit from a stale head is refused.
    version = Version(1, 0, "now", [], "h", "k")
    corpus.commit(version, expected_head=0)
    with pytest.raises(CorpusLocked, match="moved to version 1"):
        corpus.commit(Version(1, 0, "now", [], "h", "k2"), expected_head=0)


def _refresh_process(root, inputs):
    return subprocess.Popen([sys.executable, "-m", "pipelines", "refresh", "--corpus", str(root),
                             "--config", CONFIG, *inputs, "--direct_num_workers=2"],
                            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, SLUICE_QUIET="1"))


def _kill_when(process, condition, timeout=300) -> bool:
    """SIGKILL the refresh's whole process group once `condition()` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.005)
    process.wait()
    return False


@pytest.fixture(scope="module")
def version_one(tmp_path_factory):
    root = tmp_path_factory.mktemp("version-one") / "corpus"
    refresh(str(root), CONFIG, FIRST, beam_args=WORKERS, log=lambda *_: None)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("point", ["pipeline running", "version written", "committed"])
def test_kill_and_rerun_gives_the_uninterrupted_result(tmp_path, reference, snapshots, version_one,
                                                       point):
    ref_root, _, _ = reference
    root = tmp_path / "corpus"
    shutil.copytree(version_one, root)
    before = corpus_state(root)
    first = set(os.listdir(root / "versions"))
    new = lambda: [p for p in (root / "versions").iterdir() if p.name not in first]  # noqa: E731
    conditions = {
        "pipeline running": lambda: bool(new()),
        "version written": lambda: any("." not in p.name and (p / "manifest.json").exists()
                                       for p in new()),
        "committed": lambda: (root / "commits" / "00002.json").exists(),
    }
    process = _refresh_process(root, snapshots)
    killed = _kill_when(process, conditions[point])
    # The commit is one exclusive create: a reader sees the previous version or the new one.
    # (The kill lands a few ms after the condition, which may already be past the commit.)
    expected = corpus_state(ref_root)
    without_index = lambda state: {k: v for k, v in state.items() if k != "index"}  # noqa: E731
    assert without_index(corpus_state(root)) in (without_index(before), without_index(expected))
    refresh(str(root), CONFIG, snapshots, beam_args=WORKERS, log=lambda *_: None)
    assert corpus_state(root) == expected, f"killed={killed}"
    # what the killed run left is gone: only committed versions' folders, no temporary files
    corpus = Corpus(str(root))
    assert sorted(os.listdir(root / "versions")) == sorted(
        v.folder.split("/")[1] for v in corpus.versions())
    assert sorted(os.listdir(root / "commits")) == ["00001.json", "00002.json"]
    assert json.loads((root / "corpus.json").read_text())["versions"] == [
        json.loads((root / "commits" / n).read_text()) for n in ("00001.json", "00002.json")]
