"""A Sluice job: YAML config -> Beam pipeline -> Arrow shards, manifest.json and stats.json.

The pipeline is a readable chain: Ingest, the configured stages in order, then the documents
sink and the dead-letter sink. Locally it runs on Beam's FnApiRunner with one worker process per
core (the plain DirectRunner would first try to download Prism); `--runner DataflowRunner` (or the
portable runner for Flink/Spark) with the usual options runs the same graph remotely.
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import field
from typing import Any, Optional

import apache_beam as beam
import yaml
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions, SetupOptions,
                                                  StandardOptions, TestOptions, TypeOptions)
from apache_beam.portability import python_urns
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from transforms.core.accounting import run_stats, summary
from transforms.core.config import ConfigError, config_dataclass, is_local, parse, to_dict
from transforms.core.files import write_json_atomic
from transforms.core.stage import JobContext, build_stage
from transforms.io.ingest import IngestConfig, InputSpec, ReadDocuments
from transforms.io.sink import SinkConfig, finalize_output, read_shard_index

VERSION = "0.1.0"
DOCUMENTS, DEAD_LETTER = "documents", "dead_letter"


@config_dataclass
class JobConfig:
    input: list[InputSpec]
    output: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    split: str = "train"
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)


# --- config loading -----------------------------------------------------------------------------

def set_dotted(data: dict, assignment: str) -> None:
    """Apply `--set a.b.0.c=value` (value parsed as YAML) to nested config data."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    key, raw = assignment.split("=", 1)
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        child = node[int(part)] if isinstance(node, list) else node.get(part)
        if child is None:
            if isinstance(node, list):
                raise ConfigError(f"--set: no '{'.'.join(parts[:i + 1])}' in the config")
            child = node[part] = {}
        node = child
    last = parts[-1]
    value = yaml.safe_load(raw)
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_config(path: Optional[str], inputs: Optional[list[str]] = None,
                output: Optional[str] = None, sets: Optional[list[str]] = None) -> dict:
    """The resolved config data: YAML file, then `--input`/`--output`, then `--set` overrides."""
    data: dict = {}
    if path:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a job config must be a mapping")
    data = copy.deepcopy(data)
    if inputs:
        data["input"] = [{"path": p} for p in inputs]
    if output:
        data["output"] = output
    for assignment in sets or []:
        set_dotted(data, assignment)
    if isinstance(data.get("input"), (str, dict)):
        data["input"] = [data["input"]]
    data["input"] = [{"path": i} if isinstance(i, str) else i for i in data.get("input") or []]
    return data


def config_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def code_version() -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        git = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"version": VERSION, "git": git}


# --- runner -------------------------------------------------------------------------------------

class LocalRunner(FnApiRunner):
    """Beam's FnApiRunner whose worker processes run `pipelines.worker`: the same SDK harness,
    without the interpreter teardown the runner would wait for at the end of every job."""

    BEAM_WORKER = f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main"
    WORKER = f"{sys.executable} -m pipelines.worker"

    def run_via_runner_api(self, pipeline_proto, options):
        for environment in pipeline_proto.components.environments.values():
            if (environment.urn == python_urns.SUBPROCESS_SDK
                    and environment.payload == self.BEAM_WORKER.encode()):
                environment.payload = self.WORKER.encode()
        return super().run_via_runner_api(pipeline_proto, options)


def pipeline_options(beam_args: list[str]) -> tuple[PipelineOptions, Any]:
    """Options and runner: LocalRunner over all cores unless `--runner` is given; no
    construction-time type check unless asked for."""
    options = PipelineOptions(beam_args)
    if not any("pipeline_type_check" in arg for arg in beam_args):
        # stages pass Arrow batches typed Any: Beam's construction-time type inference checks
        # nothing here and costs ~0.5 s of every job's start (`--pipeline_type_check` restores it)
        options.view_as(TypeOptions).pipeline_type_check = False
    if is_local(options):
        direct = options.view_as(DirectOptions)
        given = " ".join(beam_args)
        if "--direct_num_workers" not in given:
            direct.direct_num_workers = os.cpu_count() or 1
        if "--direct_running_mode" not in given and direct.direct_num_workers > 1:
            direct.direct_running_mode = "multi_processing"
        return options, LocalRunner()
    setup = options.view_as(SetupOptions)
    if setup.setup_file is None and options.view_as(StandardOptions).runner == "DataflowRunner":
        setup.setup_file = os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "setup.py")
    return options, None


# --- the job ------------------------------------------------------------------------------------

def build(pipeline: beam.Pipeline, job: JobConfig, context: JobContext) -> None:
    """Ingest -> stages -> documents sink, with every stage's rejects to the dead-letter sink."""
    documents, rejects = pipeline | "Ingest" >> ReadDocuments(job.input, job.ingest)
    all_rejects = [rejects]
    for index, entry in enumerate(job.stages):
        label, stage = build_stage(entry, index, context)
        documents, stage_rejects = documents | label >> stage
        all_rejects.append(stage_rejects)
    documents | "WriteDocuments" >> context.sink(DOCUMENTS, job.split, count_kept=True)
    # each stage writes its own rejects where they arise: a Flatten of them all would make the
    # local runner hold every rejected document in its memory before one sink stage
    dead_letter = context.sink(DEAD_LETTER, DEAD_LETTER)
    for index, stage_rejects in enumerate(all_rejects):
        stage_rejects | f"WriteDeadLetter{index}" >> dead_letter
    context.write_shard_index()


def run_job(data: dict, beam_args: list[str], build_fn=build, log=print) -> dict:
    """Run a job from resolved config data; returns stats (raises if accounting is off)."""
    job = parse(JobConfig, data)
    for index, entry in enumerate(job.stages):  # validate every stage before anything runs
        build_stage(entry, index, JobContext("", "", job.sink))
    options, runner = pipeline_options(beam_args)
    if not is_local(options):
        local = [s.path for s in job.input if "://" not in s.path]
        if "://" not in job.output or local:
            raise ConfigError("a remote runner needs input and output on shared storage "
                              f"(gs://, s3://), got output '{job.output}' inputs {local}")
    started = dt.datetime.now(dt.timezone.utc)
    run_id = started.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    staging = FileSystems.join(job.output, f".staging-{run_id}")
    context = JobContext(job.output, staging, job.sink)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_fn(pipeline, job, context)
    log(f"sluice: running {len(job.stages)} stage(s) "
        f"[{', '.join(next(iter(s)) for s in job.stages) or 'ingest only'}] -> {job.output}")
    result = pipeline.run()
    result.wait_until_finish()
    if options.view_as(TestOptions).dry_run:
        log("sluice: dry run: the job graph was built and not submitted")
        return {}
    if str(result.state) not in ("DONE", "PipelineState.DONE"):
        raise RuntimeError(f"pipeline ended in state {result.state}")
    stats = run_stats(result)
    shards = read_shard_index(context.shard_index)
    outputs = {name: finalize_output(shards.get(name, []), f"{staging}/{name}",
                                     FileSystems.join(job.output, name), split, job.sink)
               for name, split in context.outputs.items()}
    FileSystems.delete([staging])
    manifest = {
        "sluice": code_version(),
        "started": started.isoformat(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "config": to_dict(job) | {"stages": job.stages},
        "config_hash": config_hash(data),
        "totals": outputs[DOCUMENTS]["totals"],
        "sources": outputs[DOCUMENTS]["sources"],
        "outputs": outputs,
        "stats": stats,
    }
    write_json_atomic(FileSystems.join(job.output, "stats.json"), stats)
    write_json_atomic(FileSystems.join(job.output, "manifest.json"), manifest)
    log(summary(stats))
    if not stats["balanced"]:
        raise RuntimeError("accounting does not balance: input != kept + dropped + failed")
    return stats
