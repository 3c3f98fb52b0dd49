"""Wall time, CPU-seconds and peak memory of a command's whole process tree (driver and Beam
workers), for the benches' comparisons in one run."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import psutil

REPO = Path(__file__).resolve().parent.parent


def measured_tree(command: list[str], on_sample: Optional[Callable[[], None]] = None,
                  interval: float = 0.1) -> dict:
    """Run a command in the repository; every `interval` seconds sample the RSS and CPU times of
    its process tree (and call `on_sample`). Returns wall seconds, peak MiB (summed over the
    tree), CPU-seconds from rusage (the waited-for tree) and from the samples (which also see
    descendants nobody waits for, e.g. a pool's workers, but miss each process's last
    interval)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=os.environ | {"SLUICE_QUIET": "1"})
    root = psutil.Process(process.pid)
    peak, cpu_seen = 0, {}
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        rss = 0
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                times = p.cpu_times()
                cpu_seen[p.pid] = max(cpu_seen.get(p.pid, 0.0), times.user + times.system)
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, rss)
        if on_sample:
            on_sample()
        time.sleep(interval)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{command[:5]} failed:\n{process.stderr.read().decode()[-3000:]}")
    return {"wall": time.perf_counter() - start, "peak_mib": peak / 2**20,
            "cpu": usage.ru_utime + usage.ru_stime, "cpu_sampled": sum(cpu_seen.values())}


def measured(command: list[str]) -> tuple[float, float]:
    """Run a command; (wall seconds, peak MiB summed over its process tree)."""
    result = measured_tree(command)
    return result["wall"], result["peak_mib"]
