"""Terminal progress for long runs: each worker process reports its own rate every few seconds.

Beam's local runner gives no live metrics, and on Dataflow the UI shows them, so workers print
`sluice <stage>: N docs, R docs/s` to stderr (inherited by local worker processes).
"""
from __future__ import annotations

import os
import sys
import time


class Progress:
    def __init__(self, stage: str, every_s: float = 10.0):
        self.stage = stage
        self.every_s = every_s
        self.total = 0
        self._start = self._last = time.monotonic()
        self._quiet = os.environ.get("SLUICE_QUIET") == "1"

    def add(self, n: int) -> None:
        self.total += n
        now = time.monotonic()
        if self._quiet or now - self._last < self.every_s:
            return
        self._last = now
        rate = self.total / max(now - self._start, 1e-9)
        print(f"sluice {self.stage} [pid {os.getpid()}]: {self.total:,} docs, {rate:,.0f} docs/s",
              file=sys.stderr, flush=True)
