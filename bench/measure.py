"""Wall time and peak memory of a command's whole process tree (driver and Beam workers)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def measured(command: list[str]) -> tuple[float, float]:
    """Run a command; (wall seconds, peak MiB summed over its process tree)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=os.environ | {"SLUICE_QUIET": "1"})
    root = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{command[:4]} failed:\n{process.stderr.read().decode()[-3000:]}")
    return wall, peak / 2**20
