"""A Sluice job: YAML config -> Beam pipeline -> Arrow shards, manifest.json and stats.json.

The pipeline is a readable chain: Ingest, the configured stages in order, then the documents
sink and the dead-letter sink. Locally it runs on Beam's FnApiRunner with one worker process per
core (the plain DirectRunner would first try to download Prism); `--runner DataflowRunner` (or the
portable runner for Flink/Spark) with the usual options runs the same graph remotely.

A run replaces its output folder as a whole (`OutputTarget`): everything is written into the
sibling `OUTPUT.staging-<run_id>/`, which one final commit step puts in place of `OUTPUT`.
"""
from __future__ import annotations

import copy
import datetime as dt
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import field
from typing import Annotated, Any, Literal, Optional

import apache_beam as beam
import yaml
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions, PortableOptions,
                                                  SetupOptions, StandardOptions, TestOptions,
                                                  TypeOptions)
from apache_beam.portability import python_urns
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from pydantic import Field

from pipelines.profile import write_profile
from transforms.core.accounting import run_stats, summary
from transforms.core.config import ConfigError, config_dataclass, is_local, parse, to_dict
from transforms.core.extras import extra_requirements, recording_extras
from transforms.core.files import (check_exclusive_create, create_exclusive, sync_dir,
                                   write_json_atomic)
from transforms.core.stage import JobContext, build_stage, check_chain
from transforms.io import schema
from transforms.io.ingest import IngestConfig, InputSpec, ReadDocuments
from transforms.io.sink import SinkConfig, finalize_output, read_shard_index

VERSION = "0.1.0"
DOCUMENTS, DEAD_LETTER = "documents", "dead_letter"


@config_dataclass
class JobConfig:
    input: Annotated[list[InputSpec], Field(min_length=1)]
    output: Annotated[str, Field(min_length=1)]
    stages: list[dict[str, Any]] = field(default_factory=list)
    split: Annotated[str, Field(pattern=r"^[\w.-]+$")] = "train"
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    allow_empty: bool = False  # a run that reads no records fails unless this is set
    # local paths are on a filesystem every worker mounts at the same path (NFS, Lustre, a
    # FUSE-mounted bucket): a remote runner may then read and write them
    shared_mount: bool = False
    # the corpus profile written with the output (pipelines/profile.py): profile.json reads the
    # documents' columns once more after the pipeline; html adds the page (matplotlib)
    profile: Literal["json", "html", "none"] = "json"


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
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config '{path}': {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}: "
                              f"{getattr(exc, 'problem', None) or exc}") from None
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
    if not isinstance(data.get("input") or [], list):
        raise ConfigError(f"'input' must be a glob, a mapping or a list of them, "
                          f"got {data['input']!r}")
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


def ship_extras(options: PipelineOptions, extras: set[str], log=print) -> None:
    """Remote workers install the package from `--setup_file`, which brings the core only: when
    the job's stages use extras, their pinned packages go to the workers as a
    `--requirements_file` (unless one is given)."""
    setup = options.view_as(SetupOptions)
    if is_local(options) or not extras or setup.requirements_file:
        return
    lines = extra_requirements(extras)
    if not lines:
        log(f"sluice: the stages need the extras {sorted(extras)}, but this checkout is not "
            "installed as a package: pass --requirements_file for the workers")
        return
    folder = tempfile.mkdtemp(prefix="sluice-requirements-")
    setup.requirements_file = os.path.join(folder, "requirements.txt")
    with open(setup.requirements_file, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    log(f"sluice: workers install the extras {', '.join(sorted(extras))} "
        f"({', '.join(lines)}) via --requirements_file {setup.requirements_file}")


# --- the output folder: staged whole, committed at once -----------------------------------------

class OutputError(OSError):
    """The output folder cannot be written, or another run is writing it (a one-line message)."""


def fault_point(name: str) -> None:
    """Test-only fault injection, free when unset: `SLUICE_FAULT=finalize:<name>` SIGKILLs this
    process at that named point of the commit, `SLUICE_FAULT=finalize:<name>:enospc` raises a
    disk-full error there. The points: shards-moved, manifest-written, old-moved, new-moved,
    committed."""
    spec = os.environ.get("SLUICE_FAULT")
    if not spec:
        return
    phase, _, rest = spec.partition(":")
    point, _, action = rest.partition(":")
    if phase != "finalize" or point != name:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
    os.kill(os.getpid(), signal.SIGKILL)


class OutputTarget:
    """Where a run writes, and the one step that makes it visible.

    Everything (every output folder, manifest.json, stats.json, the stages' own files) goes into
    the sibling `OUTPUT.staging-<run_id>/` (`root`; shard pieces and spills under `parts`).

    Local folders: `OUTPUT.lock` is held with `flock` for the whole run (the kernel drops it when
    the process dies), so a second run into the same output fails at once. With it held, a run
    first recovers from a killed one (a missing `OUTPUT` beside an `OUTPUT.old-*` was killed
    between the two renames below: the old folder is put back) and deletes every stale
    `OUTPUT.staging-*` and `OUTPUT.old-*`. The commit renames `OUTPUT` to `OUTPUT.old-<run_id>`,
    the staging folder to `OUTPUT`, then deletes the old one: a kill at any instant leaves the
    previous complete output or the new one (between the renames, under `OUTPUT.old-*` until the
    next run puts it back). The staging folder is removed when a run fails.

    Object stores (gs://, s3://) have no folder rename and no flock. The lock is the object
    `OUTPUT.lock`, created only if absent (`create_exclusive`: a conditional put), so a second run
    fails at once naming the holder; the run deletes it when it ends, and a run killed outright
    leaves it behind: the error then says to delete it by hand once that run is known dead.
    `manifest.json` is the commit marker: the commit deletes the old `OUTPUT/manifest.json` first,
    then every other old file, moves the staged files in and `manifest.json` last, so a folder
    without a manifest is an unfinished commit (the next run redoes it). With the lock held, stale
    `OUTPUT.staging-*` prefixes of killed runs are deleted.
    """

    RUN_ID = r"\d{8}T\d{6}-[0-9a-f]{8}"

    def __init__(self, output: str, run_id: str, dry_run: bool = False, log=print):
        self.remote = "://" in output
        self.output = output.rstrip("/") if self.remote else os.path.abspath(output)
        self.run_id = run_id
        self.root = f"{self.output}.staging-{run_id}"
        self.parts = f"{self.root}/.parts"
        self.dry_run = dry_run
        self.log = log
        self.committed = False
        self._lock: Optional[int] = None
        self._remote_lock: Optional[str] = None

    def __enter__(self) -> "OutputTarget":
        if self.dry_run:
            return self
        try:
            self._prepare_remote() if self.remote else self._prepare_local()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if not self.committed and not self.dry_run:
                self._remove(self.root)
        finally:
            self._unlock()

    # local ---------------------------------------------------------------------------------------

    def _prepare_local(self) -> None:
        out, parent = self.output, os.path.dirname(self.output)
        if os.path.exists(out) and not os.path.isdir(out):
            raise OutputError(f"output '{out}' exists and is not a folder")
        try:
            if os.path.exists(parent) and not os.path.isdir(parent):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output '{out}': cannot create '{parent}': "
                              f"{exc.strerror or exc}") from None
        self._lock_output()
        siblings = [p for p in glob.glob(f"{glob.escape(out)}.*") if re.fullmatch(
            rf"{re.escape(out)}\.(staging|old)-{self.RUN_ID}", p)]
        olds = sorted(p for p in siblings if ".old-" in p[len(out):])
        if not os.path.lexists(out) and olds:
            os.rename(olds[-1], out)
            self.log(f"sluice: put back '{out}' from a run killed while committing")
        for path in siblings:
            self._remove(path)
        try:
            os.makedirs(self.root)
        except OSError as exc:
            raise OutputError(f"output '{out}' is not writable: {exc.strerror or exc} "
                              f"('{self.root}')") from None

    def _lock_output(self) -> None:
        """Hold `OUTPUT.lock`: write who holds it (also the probe that the parent folder takes
        files), or fail naming the run that holds it."""
        path = f"{self.output}.lock"
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"output '{self.output}' is not writable: "
                                  f"{exc.strerror or exc} ('{path}')") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another run"
                os.close(fd)
                raise OutputError(f"output '{self.output}' is being written by {holder} "
                                  f"(lock '{path}')") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else its holder removed it between our open and flock: take the new one
                break
            os.close(fd)
        self._lock = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{self._holder()}\n".encode())
            os.fsync(fd)
        except OSError as exc:
            raise OutputError(f"output '{self.output}' is not writable: {exc.strerror or exc} "
                              f"('{path}')") from None

    def _holder(self) -> str:
        return (f"run {self.run_id} (pid {os.getpid()} on {socket.gethostname()}, started "
                f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')})")

    # object stores --------------------------------------------------------------------------------

    def _prepare_remote(self) -> None:
        if self.output.split("://", 1)[0] in ("gs", "s3"):
            self._lock_remote()
        else:
            self.log(f"sluice: no lock on '{self.output}' (conditional creates are used on gs:// "
                     "and s3:// only): do not run two jobs into it at once")
        stale = [m.path for m in FileSystems.match(
            [f"{self.output}.staging-*/**"])[0].metadata_list]
        if stale:
            FileSystems.delete(stale)

    def _lock_remote(self) -> None:
        path = f"{self.output}.lock"
        check_exclusive_create(self.output, "output")
        if not create_exclusive(path, self._holder().encode()):
            try:
                with FileSystems.open(path) as f:
                    holder = f.read(300).decode("utf-8", "replace").strip()
            except (OSError, IOError):
                holder = "another run"
            raise OutputError(f"output '{self.output}' is being written by {holder} (lock "
                              f"'{path}'; if that run is dead, delete the lock)")
        self._remote_lock = path

    def _unlock(self) -> None:
        if self._remote_lock is not None:
            try:
                FileSystems.delete([self._remote_lock])
            except (OSError, IOError) as exc:
                self.log(f"sluice: could not delete the lock '{self._remote_lock}': {exc}")
            self._remote_lock = None
        if self._lock is not None:
            try:
                os.unlink(f"{self.output}.lock")
            except OSError:
                pass
            os.close(self._lock)
            self._lock = None

    def _remove(self, path: str) -> None:
        if self.remote:
            found = [m.path for m in FileSystems.match([f"{path}/**"])[0].metadata_list]
            if found:
                FileSystems.delete(found)
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)

    # the commit ----------------------------------------------------------------------------------

    def commit(self) -> None:
        """Make the staged run the output: the one step after which it is visible."""
        fault_point("manifest-written")
        if self.remote:
            self._commit_by_manifest()
        else:
            old = f"{self.output}.old-{self.run_id}"
            had_old = os.path.lexists(self.output)
            if had_old:
                os.rename(self.output, old)
            try:
                if had_old:
                    fault_point("old-moved")
                os.rename(self.root, self.output)
            except BaseException:
                if had_old:
                    os.rename(old, self.output)  # an error (not a kill) here: the old one stays
                raise
            self.committed = True
            sync_dir(os.path.dirname(self.output))
            fault_point("new-moved")
            if had_old:
                self._remove(old)
        self.committed = True
        fault_point("committed")

    def _commit_by_manifest(self) -> None:
        marker = f"{self.output}/manifest.json"
        if FileSystems.exists(marker):
            FileSystems.delete([marker])  # from here the folder is visibly unfinished
        self._remove(self.output)
        staged = sorted(m.path for m in FileSystems.match([f"{self.root}/**"])[0].metadata_list)
        names = [p[len(self.root) + 1:] for p in staged]
        body = [n for n in names if n != "manifest.json"]
        if body:
            FileSystems.rename([f"{self.root}/{n}" for n in body],
                               [f"{self.output}/{n}" for n in body])
        fault_point("old-moved")
        FileSystems.rename([f"{self.root}/manifest.json"], [marker])
        self.committed = True
        self._remove(self.root)


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


def _with_token_counts(sources: dict, stats: dict) -> dict:
    """Per-source counts with the tokenize stage's real tokens (counters `tokens.<source>`)
    beside the whitespace `tokens`, as `tokenizer_tokens`."""
    sources = {name: dict(counts) for name, counts in sources.items()}
    for name, n in stats["counters"].items():
        if name.startswith("tokens."):
            sources.setdefault(name[len("tokens."):], {})["tokenizer_tokens"] = n
    return dict(sorted(sources.items()))


def check_job(job: JobConfig, sample_input: bool = True) -> list[str]:
    """Everything that can be checked before a pipeline exists: each stage's config (and the
    files it needs), then the chain of columns from the input through the stages. Raises
    ConfigError; returns notes (optional columns that nothing provides)."""
    stages = [build_stage(entry, index, JobContext("", "", job.sink))
              for index, entry in enumerate(job.stages)]
    if not sample_input:
        return check_chain(stages, None)
    fields = schema.input_fields(job.input)
    try:
        return check_chain(stages, fields)
    except ConfigError:
        if fields is None:
            raise
        # the first records may lack a column later ones carry (JSONL has no schema): read
        # further before refusing the job
        deeper = schema.input_fields(job.input, schema.DEEP_RECORDS_PER_FILE)
        return check_chain(stages, deeper)


def check_workers_reach(job: JobConfig, options: PipelineOptions) -> None:
    """A remote runner's workers must reach the input and the output: object stores always do;
    local paths only when the workers run in this process (the portable runner's LOOPBACK
    environment) or the job declares them on a mount every worker sees (`shared_mount`)."""
    if is_local(options) or job.shared_mount:
        return
    if (options.view_as(PortableOptions).environment_type or "").upper() == "LOOPBACK":
        return
    local = [s.path for s in job.input if "://" not in s.path]
    if "://" not in job.output or local:
        raise ConfigError(
            "a remote runner's workers must reach the input and output: use gs:// or s3:// "
            "paths, set `shared_mount: true` when local paths are on a mount every worker sees "
            f"(NFS, Lustre, FUSE), or run the LOOPBACK environment (got output '{job.output}', "
            f"local inputs {local})")


def run_job(data: dict, beam_args: list[str], build_fn=build, log=print) -> dict:
    """Run a job from resolved config data; returns stats (raises if accounting is off)."""
    job = parse(JobConfig, data)
    check_job(job)  # its notes are for `sluice check`: a run prints only progress and accounting
    options, runner = pipeline_options(beam_args)
    check_workers_reach(job, options)
    started = dt.datetime.now(dt.timezone.utc)
    run_id = started.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    dry_run = options.view_as(TestOptions).dry_run
    with OutputTarget(job.output, run_id, dry_run, log) as target:
        context = JobContext(target.root, target.parts, job.sink)
        pipeline = beam.Pipeline(runner=runner, options=options)
        with recording_extras() as extras:
            build_fn(pipeline, job, context)
        ship_extras(options, extras, log)
        log(f"sluice: running {len(job.stages)} stage(s) "
            f"[{', '.join(next(iter(s)) for s in job.stages) or 'ingest only'}] -> {job.output}")
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as exc:
            if "[Errno 28]" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:
                raise OutputError(f"no space left on the device of '{job.output}' "
                                  "(the run's staging folder is removed)") from None
            raise
        if dry_run:
            log("sluice: dry run: the job graph was built and not submitted")
            return {}
        if str(result.state) not in ("DONE", "PipelineState.DONE"):
            raise RuntimeError(f"pipeline ended in state {result.state}")
        stats = run_stats(result)
        if not stats["input"] and not job.allow_empty:
            raise ConfigError("the inputs hold no records ("
                              f"{', '.join(s.path for s in job.input)}); '{job.output}' is left "
                              "as it was (--allow-empty or `allow_empty: true` writes an empty "
                              "output)")
        shards = read_shard_index(context.shard_index)
        outputs = {}
        for name, split in context.outputs.items():
            outputs[name] = finalize_output(shards.get(name, []), f"{target.parts}/{name}",
                                            f"{target.root}/{name}", split, job.sink)
            outputs[name]["path"] = FileSystems.join(job.output, name)
        FileSystems.delete([target.parts])
        fault_point("shards-moved")
        manifest = {
            "sluice": code_version(),
            "started": started.isoformat(),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
            "config": to_dict(job) | {"stages": job.stages},
            "config_hash": config_hash(data),
            "totals": outputs[DOCUMENTS]["totals"],
            "sources": _with_token_counts(outputs[DOCUMENTS]["sources"], stats),
            "licenses": outputs[DOCUMENTS].get("licenses", {}),
            "outputs": outputs,
            "stats": stats,
        }
        write_json_atomic(f"{target.root}/stats.json", stats)
        write_json_atomic(f"{target.root}/manifest.json", manifest)
        log(summary(stats))
        if not stats["balanced"]:
            raise RuntimeError("accounting does not balance: input != kept + dropped + failed")
        if job.profile != "none":
            write_profile(target.root, html=job.profile == "html", log=lambda *_: None)
        target.commit()
    return stats
