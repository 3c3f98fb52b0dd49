"""Shared shape of the scoring stages: a batch in, the same batch with score columns out.

A scorer sees a whole record batch (so models predict on a list of texts at native speed) and
returns new columns plus, optionally, which rows to drop and why. Untouched columns pass through
as Arrow arrays, never via Python dicts; only dropped rows are converted, for the dead-letter
payload.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.core.accounting import Rejects
from transforms.core.documents import ID, SOURCE, with_column
from transforms.core.progress import Progress
from transforms.core.stage import REJECTS, Stage


@dataclass
class Scored:
    """A scorer's answer for one batch: new or replaced columns, and the rows it drops.

    `drop_reasons[i]` is None to keep row i, else the reason it is dropped; `failures[i]` the
    same for rows that could not be processed. Column arrays are over all rows of the batch.
    """

    columns: dict[str, Any] = field(default_factory=dict)
    drop_reasons: Optional[list[Optional[str]]] = None
    details: Optional[list[str]] = None
    failures: Optional[list[Optional[str]]] = None


def apply_scored(batch: pa.RecordBatch, scored: Scored, rejects: Rejects) -> pa.RecordBatch:
    """The batch with the scored columns added and the dropped/failed rows moved to rejects."""
    for name, values in scored.columns.items():
        batch = with_column(batch, name, values)
    n = batch.num_rows
    drops = scored.drop_reasons or [None] * n
    failures = scored.failures or [None] * n
    removed = [i for i in range(n) if drops[i] is not None or failures[i] is not None]
    if not removed:
        return batch
    ids, sources = batch.column(ID).to_pylist(), (batch.column(SOURCE).to_pylist()
                                                   if SOURCE in batch.schema.names else [None] * n)
    for i in removed:
        payload = batch.slice(i, 1).to_pylist()[0]
        detail = scored.details[i] if scored.details else ""
        if failures[i] is not None:
            rejects.fail(failures[i], ids[i], sources[i], payload, detail)
        else:
            rejects.drop(drops[i], ids[i], sources[i], payload, detail)
    keep = np.ones(n, dtype=bool)
    keep[removed] = False
    return batch.filter(pa.array(keep))


class ScoreBatchFn(beam.DoFn):
    """Base DoFn: subclasses load models in `setup` and implement `score(batch) -> Scored`."""

    stage = "score"

    def setup(self):
        self.progress = Progress(self.stage)

    def score(self, batch: pa.RecordBatch, *side_inputs) -> Scored:
        raise NotImplementedError

    def process(self, batch, *side_inputs):
        rejects = Rejects(self.stage)
        out = apply_scored(batch, self.score(batch, *side_inputs), rejects)
        self.progress.add(batch.num_rows)
        if out.num_rows:
            yield out
        if len(rejects):
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())


class ScoringStage(Stage):
    """A stage made of one `ScoreBatchFn`; subclasses implement `score_fn()`."""

    def score_fn(self) -> ScoreBatchFn:
        raise NotImplementedError

    def expand(self, documents):
        out = documents | "Score" >> beam.ParDo(self.score_fn()).with_outputs(
            REJECTS, main="documents")
        return out.documents, out[REJECTS]
