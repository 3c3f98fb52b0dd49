"""A normal run's terminal: what the job does and its accounting, no Beam noise."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.support import REPO


def test_the_demo_prints_its_plan_and_accounting_and_nothing_else(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipelines", "run", "configs/demo.yaml",
                           "--output", str(tmp_path / "out"), "--direct_num_workers=2"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=os.environ | {"SLUICE_QUIET": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert lines[0].startswith("sluice: running 2 stage(s) [heuristics, dedup]")
    assert lines[1].startswith("input 615 = kept ")
    assert all(line.startswith("  dropped ") or line.startswith("  failed ")
               for line in lines[2:]), lines
