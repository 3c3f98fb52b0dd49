"""The portable runner path (how Flink and Spark run Beam pipelines) for real, offline: Beam's own
job service, with workers in this process (LOOPBACK) or in a separate worker pool (EXTERNAL, as
a cluster's SDK harness pool; the local paths are declared a shared mount). The output must equal
the local runner's, document for document.

Beam's Python job service runs no PROCESS environment (it has no handler for it; Flink's and
Spark's job servers do), so that one is not exercised here."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from pipelines.job import load_config, run_job
from tests.support import REPO
from transforms.core.config import ConfigError
from transforms.io.sink import read_output

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(module: str, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", module, *args, f"--{'port' if 'job' in module else 'service_port'}={port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{module} did not listen on {port}")


@pytest.fixture(scope="module")
def job_service():
    process, port = serve("apache_beam.runners.portability.local_job_service_main")
    yield f"localhost:{port}"
    process.kill()


@pytest.fixture(scope="module")
def worker_pool():
    process, port = serve("apache_beam.runners.worker.worker_pool_main")
    yield f"localhost:{port}"
    process.kill()


def demo(output, **overrides) -> dict:
    data = load_config(str(REPO / "configs/demo.yaml"), output=str(output))
    data["input"] = [dict(spec, path=str(REPO / spec["path"])) for spec in data["input"]]
    return data | overrides


def documents(output) -> dict:
    return {row["id"]: row for row in read_output(str(output / "documents")).to_pylist()}


@pytest.fixture(scope="module")
def local_output(tmp_path_factory):
    output = tmp_path_factory.mktemp("local") / "out"
    run_job(demo(output), ["--direct_num_workers=2"], log=lambda *_: None)
    return documents(output)


def test_loopback_workers_write_the_local_runners_documents(job_service, local_output, tmp_path):
    stats = run_job(demo(tmp_path / "out"), ["--runner=PortableRunner",
                                             f"--job_endpoint={job_service}",
                                             "--environment_type=LOOPBACK"], log=lambda *_: None)
    assert stats["balanced"] and stats["kept"] == len(local_output) > 0
    assert documents(tmp_path / "out") == local_output


def test_a_worker_pool_on_a_declared_shared_mount(job_service, worker_pool, local_output,
                                                  tmp_path):
    args = ["--runner=PortableRunner", f"--job_endpoint={job_service}",
            "--environment_type=EXTERNAL", f"--environment_config={worker_pool}"]
    with pytest.raises(ConfigError, match="shared_mount"):  # undeclared local paths: refused
        run_job(demo(tmp_path / "refused"), args, log=lambda *_: None)
    assert not (tmp_path / "refused").exists()
    stats = run_job(demo(tmp_path / "out", shared_mount=True), args, log=lambda *_: None)
    assert stats["balanced"] and documents(tmp_path / "out") == local_output
