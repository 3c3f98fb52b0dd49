"""A whole job: config -> Beam -> shards, manifest, stats, dead letter; config errors; runners."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import apache_beam as beam
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipelines.job import load_config, pipeline_options, run_job
from tests.support import REPO
from transforms.core.config import ConfigError

IN_PROCESS = ["--direct_num_workers=1"]


def demo_config(output, extra_inputs=()) -> dict:
    """The demo's inputs with no stages: these tests are about ingest, sinks and accounting."""
    data = load_config(str(REPO / "configs/demo.yaml"), output=str(output))
    data["stages"] = []
    data["input"] = [dict(spec, path=str(REPO / spec["path"])) for spec in data["input"]]
    data["input"] += list(extra_inputs)
    return data


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo corpus plus a file of bad records, through the real job, once for the module."""
    tmp = tmp_path_factory.mktemp("job")
    bad = tmp / "bad.jsonl"
    bad.write_bytes(b'{"id": "ok-1", "text": "A fine document."}\n'
                    b'{"id": "cut", "text": "no end\n'
                    b'{"id": "bytes", "text": "\xff\xfe"}\n'
                    b'{"id": "empty", "text": ""}\n')
    out = tmp / "out"
    data = demo_config(out, [{"path": str(bad), "source": "bad"}])
    data["sink"] = {"shard_bytes": 2**20}  # several shards from the small corpus
    stats = run_job(data, IN_PROCESS, log=lambda *_: None)
    return out, stats, data


def test_shards_read_back_with_the_accounting_identity(demo_run):
    out, stats, _ = demo_run
    on_disk = read_json(out / "stats.json")
    assert on_disk == stats
    assert stats["input"] == stats["kept"] + sum(stats["dropped"].values()) + stats["failed"]
    assert stats["dropped"] == {"empty": 1} and stats["failed"] == 2
    assert stats["failed_by_reason"] == {"invalid_utf8": 1, "malformed_json": 1}
    table = ds.dataset(out / "documents", format="arrow").to_table()
    assert table.num_rows == stats["kept"] == 616
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    assert {"id", "text", "source", "url", "title", "revision", "metadata"} <= set(table.column_names)


def test_shard_names_sizes_and_manifest(demo_run):
    out, stats, data = demo_run
    manifest = read_json(out / "manifest.json")
    shards = manifest["outputs"]["documents"]["shards"]
    assert len(shards) > 1
    names = sorted(os.listdir(out / "documents"))
    assert names == [s["name"] for s in shards]
    assert all(n == f"train-{i:05d}-of-{len(shards):05d}.arrow" for i, n in enumerate(names))
    for shard in shards:
        raw = (out / "documents" / shard["name"]).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == shard["sha256"] and len(raw) == shard["bytes"]
        with pa.ipc.open_file(pa.py_buffer(raw)) as reader:
            assert sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches)) \
                == shard["rows"]
    assert manifest["totals"]["rows"] == stats["kept"]
    assert manifest["sources"]["wikipedia"]["docs"] == 568
    assert manifest["sources"]["bad"] == {"docs": 1, "tokens": 3}
    assert manifest["totals"]["tokens"] == sum(s["tokens"] for s in manifest["sources"].values())
    assert len(manifest["config_hash"]) == 64 and manifest["config"]["output"] == data["output"]
    assert manifest["started"] <= manifest["finished"]
    assert not [n for n in os.listdir(out) if n.startswith(".staging")]


def test_dead_letter_has_reasons_and_raw_payloads(demo_run):
    out, _, _ = demo_run
    rejects = ds.dataset(out / "dead_letter", format="arrow").to_table().to_pylist()
    by_reason = {r["reason"]: r for r in rejects}
    assert set(by_reason) == {"empty", "invalid_utf8", "malformed_json"}
    assert by_reason["invalid_utf8"]["payload"] == b'{"id": "bytes", "text": "\xff\xfe"}'
    assert by_reason["empty"]["kind"] == "dropped" and by_reason["empty"]["id"] == "empty"
    assert by_reason["malformed_json"]["kind"] == "failed"


def test_hf_datasets_reads_the_shards(demo_run):
    datasets = pytest.importorskip("datasets")
    out, stats, _ = demo_run
    loaded = datasets.load_dataset("arrow", data_files=str(out / "documents" / "*.arrow"),
                                   split="train", cache_dir=str(out.parent / "hf-cache"))
    assert loaded.num_rows == stats["kept"]


def test_rerun_replaces_output_without_duplicates(demo_run, tmp_path):
    out, stats, data = demo_run
    first = {s["name"]: s["sha256"] for s in read_json(out / "manifest.json")["outputs"]["documents"]["shards"]}
    (out / "documents" / "train-00099-of-00100.arrow").write_bytes(b"stale shard of an old run")
    again = run_job(data, IN_PROCESS, log=lambda *_: None)
    assert again == stats
    second = {s["name"]: s["sha256"] for s in read_json(out / "manifest.json")["outputs"]["documents"]["shards"]}
    assert second == first  # same shards, same bytes: output is deterministic
    assert sorted(os.listdir(out / "documents")) == sorted(first)


def test_config_errors_name_the_key(tmp_path):
    base = demo_config(tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown key 'ingest.batchsize'"):
        run_job(base | {"ingest": {"batchsize": 10}}, IN_PROCESS)
    with pytest.raises(ConfigError, match="'sink.shard_bytes'"):
        run_job(base | {"sink": {"shard_bytes": "big"}}, IN_PROCESS)
    with pytest.raises(ConfigError, match="unknown key 'input.0.pth'"):
        run_job(base | {"input": [{"pth": "x"}]}, IN_PROCESS)
    with pytest.raises(ConfigError, match="unknown stage 'no_such_stage'"):
        run_job(base | {"stages": [{"no_such_stage": {}}]}, IN_PROCESS)
    assert not (tmp_path / "o").exists()  # nothing ran


def test_overrides_from_the_command_line(tmp_path):
    data = load_config(str(REPO / "configs/demo.yaml"), inputs=["a/*.jsonl", "b.parquet"],
                       output="elsewhere", sets=["ingest.batch_size=7", "sink.compression=lz4",
                                                 "input.1.source=books"])
    assert data["input"] == [{"path": "a/*.jsonl"}, {"path": "b.parquet", "source": "books"}]
    assert data["output"] == "elsewhere"
    assert data["ingest"]["batch_size"] == 7 and data["sink"]["compression"] == "lz4"


def test_local_runner_is_pinned_to_fn_api_multiprocessing():
    options, runner = pipeline_options([])
    assert isinstance(runner, FnApiRunner)
    direct = options.get_all_options()
    assert direct["direct_num_workers"] == (os.cpu_count() or 1)
    if direct["direct_num_workers"] > 1:
        assert direct["direct_running_mode"] == "multi_processing"


def test_local_workers_run_the_sluice_worker_entry():
    """Worker processes run `pipelines.worker` (Beam's harness, then no interpreter teardown)."""
    options, runner = pipeline_options(["--direct_num_workers=2"])
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        entries = (pipeline | beam.Create(range(8))
                   | beam.Map(lambda _: sys.modules["__main__"].__spec__.name) | beam.Distinct())
        assert_that(entries, equal_to(["pipelines.worker"]))


def test_dataflow_job_builds_offline(monkeypatch):
    """The full Dataflow job translates and packages without submitting (apache-beam[gcp])."""
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    from transforms.io import ingest, schema

    data = demo_config("gs://sluice-bucket/out")
    data["input"] = [dict(spec, path="gs://sluice-bucket/in/" + os.path.basename(spec["path"]),
                          format="jsonl") for spec in data["input"]]
    # gs:// cannot be listed offline: take each glob as one file of that name.
    monkeypatch.setattr(ingest, "expand_inputs", lambda specs: [(i, s.path, 0) for i, s in enumerate(specs)])
    monkeypatch.setattr(schema, "input_fields", lambda specs: set())  # nor sampled
    args = ["--runner=DataflowRunner", "--dry_run=True", "--no_auth", "--sdk_location=container",
            "--project=sluice-project", "--region=us-central1",
            "--temp_location=gs://sluice-bucket/tmp"]
    logged = []
    assert run_job(data, args, log=logged.append) == {}
    assert "dry run" in logged[-1]
    assert not any("requirements_file" in line for line in logged)  # core stages only


def test_dataflow_workers_get_the_extras_the_stages_need(monkeypatch):
    """A stage from an extra (pii's phone numbers: `cleaning`) ships its pinned packages to the
    workers as a requirements file; a given --requirements_file is left alone."""
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    from transforms.io import ingest, schema

    data = demo_config("gs://sluice-bucket/out")
    data["input"] = [dict(spec, path="gs://sluice-bucket/in/" + os.path.basename(spec["path"]),
                          format="jsonl") for spec in data["input"]]
    data["stages"].append({"pii": {"phones": True}})
    monkeypatch.setattr(ingest, "expand_inputs", lambda specs: [(i, s.path, 0) for i, s in enumerate(specs)])
    monkeypatch.setattr(schema, "input_fields", lambda specs: set())
    args = ["--runner=DataflowRunner", "--dry_run=True", "--no_auth", "--sdk_location=container",
            "--project=sluice-project", "--region=us-central1",
            "--temp_location=gs://sluice-bucket/tmp"]
    logged = []
    assert run_job(data, args, log=logged.append) == {}
    (line,) = [line for line in logged if "requirements_file" in line]
    path = line.rsplit(" ", 1)[1]
    with open(path, encoding="utf-8") as f:
        assert f.read().split() == ["phonenumbers==9.0.43", "pydivsufsort==0.0.20"]
    logged.clear()
    assert run_job(data, [*args, "--requirements_file", path], log=logged.append) == {}
    assert not any("install the extras" in line for line in logged)


def test_remote_runner_rejects_local_paths(tmp_path):
    data = demo_config(tmp_path / "o")
    with pytest.raises(ConfigError, match="workers must reach"):
        run_job(data, ["--runner=DataflowRunner", "--project=p", "--region=r",
                       "--temp_location=gs://b/tmp"])


@pytest.mark.slow
def test_cli_demo_on_all_cores(tmp_path):
    """The README's main command, on the multi-process local runner, from another directory."""
    env = dict(os.environ, SLUICE_QUIET="1")
    done = subprocess.run([sys.executable, "-m", "pipelines", "run", str(REPO / "configs/demo.yaml"),
                           "--output", str(tmp_path / "out"), "--set", "ingest.batch_size=100",
                           "--direct_num_workers=2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = read_json(tmp_path / "out" / "stats.json")
    dropped = sum(stats["dropped"].values())
    assert f"input 615 = kept {stats['kept']} + dropped {dropped} + failed 0" in done.stdout
    assert stats["dropped"]["near_duplicate"] > 50 and stats["dropped"]["exact_duplicate"] > 10
    assert stats["kept"] == ds.dataset(tmp_path / "out" / "documents", format="arrow").count_rows()
    assert (tmp_path / "out" / "clusters").is_dir()
    assert os.listdir(tmp_path / "out" / "documents") == ["train-00000-of-00001.arrow"]
