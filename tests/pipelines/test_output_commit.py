"""Reliability of a run's output: replaced as a whole (kills and errors at every commit step),
no stale outputs, staging removed, reproducible shard layout, unknown flags and user errors
as one line."""
from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import string
import subprocess
import sys

import pyarrow.dataset as ds
import pytest

from pipelines.cli import main, parser, unknown_argument
from pipelines.job import OutputError, OutputTarget, load_config, run_job
from tests.support import REPO
from transforms.core.config import ConfigError

IN_PROCESS = ["--direct_num_workers=1"]
QUIET = dict(log=lambda *_: None)
FAULT_POINTS = ["shards-moved", "manifest-written", "old-moved", "new-moved", "committed"]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_corpus(path, n, seed=0, words=60):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
                            for _ in range(words))
            f.write(json.dumps({"id": f"{seed}-{i:05d}", "text": text}) + "\n")
    return str(path)


def job(inputs, output, **extra) -> dict:
    return {"input": [{"path": p} for p in inputs], "output": str(output)} | extra


def complete_run(out) -> str:
    """Check `out` holds one whole run (every output's files are exactly its manifest's shards,
    with their hashes; stats.json matches; nothing else) and return its config hash."""
    manifest = read_json(out / "manifest.json")
    assert read_json(out / "stats.json") == manifest["stats"]
    outputs = manifest["outputs"]
    profile = {"json": ["profile.json"], "html": ["profile.json", "profile.html"],
               "none": []}[manifest["config"]["profile"]]
    assert sorted(os.listdir(out)) == sorted([*outputs, "manifest.json", "stats.json", *profile])
    for name, section in outputs.items():
        assert sorted(os.listdir(out / name)) == sorted(s["name"] for s in section["shards"])
        rows = ds.dataset(out / name, format="arrow").count_rows() if section["shards"] else 0
        assert rows == section["totals"]["rows"]
    assert manifest["totals"]["rows"] == manifest["stats"]["kept"]
    return manifest["config_hash"]


def siblings(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name
                  and p.name.startswith(out.name + "."))


def layout(out, name="documents"):
    return [(s["name"], s["rows"]) for s in read_json(out / "manifest.json")["outputs"][name]["shards"]]


# --- (1)-(3) the output is replaced as a whole ---------------------------------------------------

@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpora")
    return write_corpus(tmp / "a.jsonl", 350, seed=1), write_corpus(tmp / "b.jsonl", 236, seed=2)


def cli_run(config_args, env_extra=None, timeout=300):
    env = dict(os.environ, SLUICE_QUIET="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "pipelines", "run", *config_args,
                           "--direct_num_workers=1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_kill_during_commit_leaves_the_old_run_or_the_new(point, corpora, tmp_path):
    """SIGKILL at each step of the commit: the folder holds the previous complete run or the
    new one, never a mix; the next start puts back an output moved aside; a re-run then gives
    what an uninterrupted run gives."""
    a, b = corpora
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(job([a], tmp_path / "out")))
    out = tmp_path / "out"
    first = cli_run([str(config)])
    assert first.returncode == 0, first.stderr[-2000:]
    old_hash = complete_run(out)
    new_args = [str(config), "--input", b, "--set", "split=validation"]
    killed = cli_run(new_args, {"SLUICE_FAULT": f"finalize:{point}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if point == "old-moved":  # killed between the renames: the old run waits beside it
        assert not out.exists()
        (old,) = [n for n in siblings(out) if ".old-" in n]
        assert complete_run(tmp_path / old) == old_hash
        with OutputTarget(str(out), "20990101T000000-00000000", **QUIET):
            pass  # the next start puts it back
    visible = complete_run(out)
    assert visible == old_hash if point in FAULT_POINTS[:3] else visible != old_hash
    again = cli_run(new_args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert complete_run(out) != old_hash
    assert siblings(out) == []  # no staging, old or lock left
    reference = tmp_path / "reference"
    assert cli_run([str(config), "--input", b, "--set", "split=validation",
                    "--output", str(reference)]).returncode == 0
    assert layout(out) == layout(reference)
    assert read_json(out / "stats.json") == read_json(reference / "stats.json")


def test_rerun_leaves_no_stale_outputs(corpora, tmp_path):
    """A re-run with another split, or without the stage that wrote `clusters/`, leaves only
    its own files: documents/ reads back the manifest's rows."""
    a, b = corpora
    out = tmp_path / "out"
    run_job(job([a, b], out, stages=[{"dedup": {"threshold": 0.8}}]), IN_PROCESS, **QUIET)
    assert (out / "clusters").is_dir()
    run_job(job([a], out, split="validation"), IN_PROCESS, **QUIET)
    complete_run(out)
    assert not (out / "clusters").exists()
    assert ds.dataset(out / "documents", format="arrow").count_rows() == 350
    assert all(n.startswith("validation-") for n in os.listdir(out / "documents"))


def test_error_in_the_commit_keeps_the_old_run_and_removes_staging(corpora, tmp_path,
                                                                   monkeypatch):
    a, b = corpora
    out = tmp_path / "out"
    run_job(job([a], out), IN_PROCESS, **QUIET)
    old_hash = complete_run(out)
    for point in ("shards-moved", "manifest-written", "old-moved"):
        monkeypatch.setenv("SLUICE_FAULT", f"finalize:{point}:enospc")
        with pytest.raises(OSError, match="No space left"):
            run_job(job([b], out), IN_PROCESS, **QUIET)
        assert complete_run(out) == old_hash
        assert siblings(out) == []


def test_stale_staging_of_killed_runs_is_removed_and_a_second_run_is_refused(corpora, tmp_path):
    a, _ = corpora
    out = tmp_path / "out"
    stale = tmp_path / "out.staging-20240101T000000-deadbeef"
    (stale / ".parts").mkdir(parents=True)
    (stale / ".parts" / "piece.arrow").write_bytes(b"x" * 1000)
    lock = os.open(tmp_path / "out.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(lock, b"run 1 (pid 1 on elsewhere)")
    try:
        with pytest.raises(OutputError, match="being written by run 1"):
            run_job(job([a], out), IN_PROCESS, **QUIET)
        assert stale.exists()  # not ours to clean while another run holds the output
    finally:
        os.close(lock)
    run_job(job([a], out), IN_PROCESS, **QUIET)
    complete_run(out)
    assert siblings(out) == []


def test_object_store_commit_writes_the_manifest_last(tmp_path, monkeypatch):
    """The commit for gs:// and s3:// (no folder rename), exercised on local paths: old files go,
    staged files come, manifest.json last; a failure before it leaves no manifest."""
    out = tmp_path / "out"
    (out / "documents").mkdir(parents=True)
    (out / "documents" / "train-00000-of-00002.arrow").write_text("old")
    (out / "clusters").mkdir()
    (out / "clusters" / "c.arrow").write_text("old")
    (out / "manifest.json").write_text("{}")

    def commit(run_id):
        with OutputTarget(str(out), run_id, **QUIET) as target:
            target.remote = True
            staging = tmp_path / f"out.staging-{run_id}"
            (staging / "documents").mkdir(parents=True)
            (staging / "documents" / "v-00000-of-00001.arrow").write_text("new")
            (staging / "manifest.json").write_text('{"new": 1}')
            target.commit()

    monkeypatch.setenv("SLUICE_FAULT", "finalize:old-moved:enospc")
    with pytest.raises(OSError):
        commit("20240101T000000-00000001")
    assert not (out / "manifest.json").exists()  # visibly unfinished, no old manifest
    monkeypatch.delenv("SLUICE_FAULT")
    commit("20240101T000000-00000002")
    assert read_json(out / "manifest.json") == {"new": 1}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "documents/v-00000-of-00001.arrow", "manifest.json"]
    # object stores have no folders: what is left locally is empty folders only
    assert not [p for p in tmp_path.glob("out.*/**/*") if p.is_file()]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_is_one_line_and_leaves_no_staging(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        big = write_corpus(tmp_path / "big.jsonl", 2000, seed=3, words=400)  # ~5 MB, little zstd gain
        config = tmp_path / "job.yaml"
        config.write_text(json.dumps(job([big], disk / "out", sink={"compression": "none"})))
        assert main(["run", str(config), *IN_PROCESS]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sluice")]
        assert len(err) == 1 and "no space left" in err[0].lower(), err
        assert os.listdir(disk) == []  # no staging (and no lock) keeps the disk full
        small = write_corpus(tmp_path / "small.jsonl", 20, seed=4)
        assert main(["run", str(config), "--input", small, *IN_PROCESS]) == 0, capsys.readouterr().err  # fits again
        assert main(["run", str(config), "--output", str(tmp_path / "roomy"), *IN_PROCESS]) == 0
        complete_run(tmp_path / "roomy")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert main(["run", str(config), "--input", small, "--output", str(disk / "o2"),
                     *IN_PROCESS]) == 2
        err = capsys.readouterr().err.splitlines()
        assert [line for line in err if line.startswith("sluice")][-1].startswith(
            f"sluice: output '{disk / 'o2'}' is not writable: Read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --- (4) reproducible shard layout ---------------------------------------------------------------

def demo_job(output, **extra) -> dict:
    data = load_config(str(REPO / "configs/demo.yaml"), output=str(output))
    data["stages"] = []
    data["input"] = [dict(spec, path=str(REPO / spec["path"])) for spec in data["input"]]
    return data | extra


def test_shard_layout_does_not_depend_on_workers_or_batches(tmp_path):
    """Same input and config, another worker count and batch size: the same shard names and row
    counts. Under the default 256 MiB the demo is one shard (bundle tails were shards before);
    pieces below `shard_bytes` are rewritten into shards of equal row counts."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_job(demo_job(one, ingest={"batch_size": 1000}), IN_PROCESS, **QUIET)
    run_job(demo_job(two, ingest={"batch_size": 37}), ["--direct_num_workers=2"], **QUIET)
    assert layout(one) == layout(two) == [("train-00000-of-00001.arrow", 615)]
    assert layout(two, "dead_letter") == layout(one, "dead_letter")
    small = tmp_path / "small"
    run_job(demo_job(small, sink={"shard_bytes": 2**20}, ingest={"batch_size": 37}),
            ["--direct_num_workers=2"], **QUIET)
    shards = read_json(small / "manifest.json")["outputs"]["documents"]["shards"]
    assert len(shards) > 1 and sum(s["rows"] for s in shards) == 615


# --- (5), (6) the command line: unknown flags, user errors in one line ---------------------------

def test_unknown_flag_is_an_error_naming_the_closest_option(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(job([str(tmp_path / "x.jsonl")], tmp_path / "out")))
    assert main(["run", str(config), "--ouptut", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == "sluice run: unknown option '--ouptut' (did you mean '--output'?)\n"
    assert main(["run", str(config), "--direct_num_workerz=2"]) == 2
    assert "did you mean '--direct_num_workers'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()


def test_beam_options_still_pass():
    run = parser("run")._subparsers._group_actions[0].choices["run"]
    assert unknown_argument(run, [
        "--runner", "DataflowRunner", "--direct_num_workers", "2", "--project=p",
        "--temp_location", "gs://b/tmp", "--setup_file", "./setup.py", "--dry_run=True",
        "--no_auth", "--sdk_location=container", "--job_endpoint", "localhost:8099",
        "--environment_type=LOOPBACK", "--region", "us-central1", "--direct_running_mode",
        "multi_processing", "--experiments=use_runner_v2", "--pipeline_type_check"]) is None
    assert unknown_argument(run, ["stray"]) == "unexpected argument 'stray'"


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "cannot read config"),
    (lambda d: d.write_text("input: [a\noutput: x\n"), "not valid YAML at line"),
    (lambda d: d.write_text("input: 5\noutput: x\n"), "'input' must be a glob"),
    (lambda d: d.write_text('{"input": "x.jsonl", "output": "o", "ingest": {"batch_size": 0}}'),
     "'ingest.batch_size': Input should be greater than or equal to 1 (got 0)"),
    (lambda d: d.write_text('{"input": "x.jsonl", "output": "o", "ingest": {"max_chars": -1}}'),
     "'ingest.max_chars': Input should be greater than or equal to 1 (got -1)"),
    (lambda d: d.write_text('{"input": "x.jsonl", "output": "o", "sink": {"shard_bytes": 10}}'),
     "'sink.shard_bytes'"),
], ids=["missing", "yaml", "input-5", "batch-size-0", "max-chars-negative", "shard-bytes"])
def test_config_errors_are_one_line(setup, message, tmp_path, capsys):
    config = tmp_path / "job.yaml"
    setup(config)
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_unwritable_output_fails_before_the_pipeline(corpora, tmp_path, capsys, monkeypatch):
    import apache_beam as beam

    monkeypatch.setattr(beam.Pipeline, "run", lambda *_: pytest.fail("the pipeline ran"))
    a, _ = corpora
    (tmp_path / "file").write_text("")
    (tmp_path / "job.yaml").write_text("{}")
    for output, reason in ((tmp_path / "file" / "out", "Not a directory"),
                           (tmp_path / "file", "exists and is not a folder")):
        assert main(["run", str(tmp_path / "job.yaml"), "--input", a, "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(output) in err and reason in err, err


def test_a_run_that_reads_no_records_fails_unless_allowed(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(job([str(empty)], tmp_path / "out")))
    assert main(["run", str(config), *IN_PROCESS]) == 2
    err = capsys.readouterr().err
    assert "the inputs hold no records" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and siblings(tmp_path / "out") == []
    assert main(["run", str(config), "--allow-empty", *IN_PROCESS]) == 0
    assert read_json(tmp_path / "out" / "manifest.json")["totals"]["rows"] == 0
    with pytest.raises(ConfigError, match="hold no records"):
        run_job(job([str(empty)], tmp_path / "out2"), IN_PROCESS, **QUIET)


def test_two_runs_into_one_object_store_output_are_refused(monkeypatch):
    """gs:// has no flock: the lock is an object created only if absent. No bucket is reachable
    here, so a fake client checks the conditional create and a fake FileSystems holds the
    objects. The second run fails naming the first and deletes none of its staged files; a
    killed run's staging is cleared by the next run that holds the lock."""
    import fnmatch
    import io
    import types

    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    import pipelines.job as job

    objects: dict[str, bytes] = {}

    class Blob:
        def __init__(self, name):
            self.name = name

        def upload_from_string(self, data, content_type=None, if_generation_match=None):
            assert if_generation_match == 0
            if self.name in objects:
                raise PreconditionFailed("exists")
            objects[self.name] = data

    class Client:
        def bucket(self, bucket):
            return types.SimpleNamespace(blob=lambda name: Blob(f"gs://{bucket}/{name}"))

    class Store:
        @staticmethod
        def match(patterns):
            return [types.SimpleNamespace(metadata_list=[
                types.SimpleNamespace(path=p) for p in sorted(objects)
                if fnmatch.fnmatchcase(p, pattern)]) for pattern in patterns]

        @staticmethod
        def delete(paths):
            for path in paths:
                del objects[path]

        @staticmethod
        def open(path):
            return io.BytesIO(objects[path])

    monkeypatch.setattr(storage, "Client", Client)
    monkeypatch.setattr(job, "FileSystems", Store)
    killed = "gs://b/out.staging-20261201T000000-cccccccc/documents/part-0.arrow"
    objects[killed] = b"left by a killed run"
    first = OutputTarget("gs://b/out", "20261202T000000-aaaaaaaa", log=lambda *_: None)
    first.__enter__()
    assert objects["gs://b/out.lock"].startswith(b"run 20261202T000000-aaaaaaaa (pid ")
    assert killed not in objects
    staged = f"{first.root}/documents/part-0.arrow"
    objects[staged] = b"the first run's shard"
    second = OutputTarget("gs://b/out", "20261202T000001-bbbbbbbb", log=lambda *_: None)
    with pytest.raises(OutputError, match=r"being written by run 20261202T000000-aaaaaaaa .*"
                                          r"if that run is dead, delete the lock"):
        second.__enter__()
    assert objects[staged] == b"the first run's shard"  # untouched by the refused run
    assert "gs://b/out.lock" in objects  # still the first run's
    first.__exit__(None, None, None)  # failed before committing: its staging goes, the lock too
    assert objects == {}
    with second:
        assert objects["gs://b/out.lock"].startswith(b"run 20261202T000001-bbbbbbbb")
    assert objects == {}
