"""Run accounting: every record is counted once as input, then once as kept, dropped or failed.

`dropped` is a well-formed document removed by a rule (empty, duplicate, quality filter);
`failed` is a record that could not be read or processed (malformed JSON, invalid UTF-8,
non-text value, an exception in a stage). Both go to the dead-letter output with their reason.
Counters are Beam `Metrics` in the `sluice` namespace, so the identity
`input = kept + sum(dropped) + failed` is checked on what the runner committed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from transforms.core.documents import ID, SOURCE

NAMESPACE = "sluice"
INPUT, KEPT = "input", "kept"
DROPPED_PREFIX, FAILED_PREFIX = "dropped.", "failed."
DROPPED, FAILED = "dropped", "failed"

REJECT_SCHEMA = pa.schema([
    pa.field(ID, pa.string()),
    pa.field(SOURCE, pa.string()),
    pa.field("stage", pa.string()),
    pa.field("kind", pa.string()),      # "dropped" or "failed"
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
    pa.field("payload", pa.large_binary()),
    pa.field("payload_truncated", pa.bool_()),
])


def count(name: str, n: int = 1) -> None:
    if n:
        Metrics.counter(NAMESPACE, name).inc(n)


def record_max(name: str, value: int) -> None:
    """A run-wide maximum (e.g. the largest cluster) without a global combine step: reported in
    `stats.json` counters as the distribution's max."""
    Metrics.distribution(NAMESPACE, name).update(value)


class Drop(Exception):
    """Raised by a per-document function to drop the document with a named reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Rejects:
    """Collects the rejected records of one batch and counts them by reason.

    `payload_limit` bounds how many bytes of each raw record are kept for audit.
    """

    stage: str
    payload_limit: int = 65536
    _rows: list[dict] = field(default_factory=list)

    def drop(self, reason: str, doc_id: str | None, source: str | None, payload: Any,
             detail: str = "") -> None:
        self._add(DROPPED, reason, doc_id, source, payload, detail)

    def fail(self, reason: str, doc_id: str | None, source: str | None, payload: Any,
             detail: str = "") -> None:
        self._add(FAILED, reason, doc_id, source, payload, detail)

    def _add(self, kind, reason, doc_id, source, payload, detail) -> None:
        count((DROPPED_PREFIX if kind == DROPPED else FAILED_PREFIX) + reason)
        raw = _payload_bytes(payload)
        self._rows.append({
            ID: doc_id, SOURCE: source, "stage": self.stage, "kind": kind, "reason": reason,
            "detail": detail[:2000], "payload": raw[: self.payload_limit],
            "payload_truncated": len(raw) > self.payload_limit,
        })

    def __len__(self) -> int:
        return len(self._rows)

    def take_batch(self) -> pa.RecordBatch | None:
        """The rejects collected so far as one batch (None if there are none); resets."""
        if not self._rows:
            return None
        batch = pa.RecordBatch.from_pylist(self._rows, schema=REJECT_SCHEMA)
        self._rows = []
        return batch


def _payload_bytes(payload: Any) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", "backslashreplace")
    return json.dumps(payload, default=str, ensure_ascii=False).encode("utf-8", "backslashreplace")


def run_stats(result) -> dict:
    """`stats.json` content from a finished pipeline result's committed counters."""
    totals: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    for distribution in query["distributions"]:
        value = distribution.committed or distribution.attempted
        if value is not None and value.count:
            name = distribution.key.metric.name
            totals[name] = max(totals.get(name, value.max), value.max)
    return stats_from_counters(totals)


def stats_from_counters(totals: dict[str, int]) -> dict:
    dropped = {k[len(DROPPED_PREFIX):]: v for k, v in sorted(totals.items())
               if k.startswith(DROPPED_PREFIX)}
    failed_by_reason = {k[len(FAILED_PREFIX):]: v for k, v in sorted(totals.items())
                        if k.startswith(FAILED_PREFIX)}
    stats = {
        INPUT: totals.get(INPUT, 0),
        KEPT: totals.get(KEPT, 0),
        DROPPED: dropped,
        FAILED: sum(failed_by_reason.values()),
        "failed_by_reason": failed_by_reason,
        "counters": {k: v for k, v in sorted(totals.items())
                     if k not in (INPUT, KEPT) and not k.startswith((DROPPED_PREFIX, FAILED_PREFIX))},
    }
    accounted = stats[KEPT] + sum(dropped.values()) + stats[FAILED]
    stats["balanced"] = accounted == stats[INPUT]
    return stats


def summary(stats: dict) -> str:
    dropped = sum(stats[DROPPED].values())
    lines = [f"input {stats[INPUT]:,} = kept {stats[KEPT]:,} + dropped {dropped:,} + failed "
             f"{stats[FAILED]:,}" + ("" if stats["balanced"] else "   <-- DOES NOT BALANCE")]
    lines += [f"  dropped {reason}: {n:,}" for reason, n in stats[DROPPED].items()]
    lines += [f"  failed {reason}: {n:,}" for reason, n in stats["failed_by_reason"].items()]
    return "\n".join(lines)
