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
from transforms.core.config import ConfigError
from transforms.core.documents import ID, SOURCE, concat, with_column
from transforms.core.models import acquire, model_handle
from transforms.core.progress import Progress
from transforms.core.stage import REJECTS, Stage, documents_and_rejects


@dataclass
class Scored:
    """A scorer's answer for one batch: new or replaced columns, and the rows it drops.

    `drop_reasons[i]` is None to keep row i, else the reason it is dropped. Column arrays are
    over all rows of the batch. Rows that cannot be processed raise (see `ScoreBatchFn`).
    """

    columns: dict[str, Any] = field(default_factory=dict)
    drop_reasons: Optional[list[Optional[str]]] = None
    details: Optional[list[str]] = None


def apply_scored(batch: pa.RecordBatch, scored: Scored, rejects: Rejects) -> pa.RecordBatch:
    """The batch with the scored columns added and the dropped rows moved to rejects."""
    for name, values in scored.columns.items():
        batch = with_column(batch, name, values)
    n = batch.num_rows
    drops = scored.drop_reasons or [None] * n
    removed = [i for i in range(n) if drops[i] is not None]
    if not removed:
        return batch
    ids, sources = batch.column(ID).to_pylist(), (batch.column(SOURCE).to_pylist()
                                                   if SOURCE in batch.schema.names else [None] * n)
    for i in removed:
        payload = batch.slice(i, 1).to_pylist()[0]
        detail = scored.details[i] if scored.details else ""
        rejects.drop(drops[i], ids[i], sources[i], payload, detail)
    keep = np.ones(n, dtype=bool)
    keep[removed] = False
    return batch.filter(pa.array(keep))


class ScoreBatchFn(beam.DoFn):
    """Base DoFn of the batch stages: subclasses implement `score(batch, *side_inputs) -> Scored`
    and, when they use a model, `load_model()`.

    One failure path for every stage: an exception while scoring a batch is retried row by row,
    so only the rows that raise leave, as failed `<stage>_error` dead-letter records carrying the
    message; the run goes on. A `ConfigError` is a job-level problem and still stops the run.

    Models load once per worker process, not once per DoFn instance: `load_model` runs through
    a Beam `Shared` handle made when the job is built, one per model (`model_key`), so every
    instance of a stage (one per bundle processor and thread) and every stage of the job that
    loads the same model file hold the one copy in `self.model`.
    """

    stage = "score"

    def __init__(self, config: Any = None):
        self.config = config
        self._shared_model = model_handle(type(self).load_model, self.model_key())

    def load_model(self) -> Any:
        """The stage's model (a weak-referenceable object), or None for stages without one."""
        return None

    def model_key(self) -> str:
        """What identifies the loaded model: stages whose key (and `load_model`) are equal share
        it. The whole config by default; a stage whose model is one file returns its path."""
        return repr(self.config)

    def setup(self):
        self.progress = Progress(self.stage)
        has_model = type(self).load_model is not ScoreBatchFn.load_model
        self.model = (acquire(self._shared_model, self.load_model, self.model_key())
                      if has_model else None)

    def score(self, batch: pa.RecordBatch, *side_inputs) -> Scored:
        raise NotImplementedError

    def process(self, batch, *side_inputs):
        rejects = Rejects(self.stage)
        try:
            scored = self.score(batch, *side_inputs)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001  find the rows that raise; the others are scored
            out = self._score_rows(batch, side_inputs, rejects)
        else:
            out = apply_scored(batch, scored, rejects)
        self.progress.add(batch.num_rows)
        if out is not None and out.num_rows:
            yield out
        if len(rejects):
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())

    def _score_rows(self, batch: pa.RecordBatch, side_inputs, rejects: Rejects):
        kept = []
        for i in range(batch.num_rows):
            row = batch.slice(i, 1)
            try:
                scored = self.score(row, *side_inputs)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001  the one failure path: dead-letter the row
                doc = row.to_pylist()[0]
                rejects.fail(f"{self.stage}_error", doc.get(ID), doc.get(SOURCE), doc,
                             f"{type(exc).__name__}: {exc}")
                continue
            kept.append(apply_scored(row, scored, rejects))
        table = concat(kept)
        return table.combine_chunks().to_batches()[0] if table.num_rows else None


class ScoringStage(Stage):
    """A stage made of one `ScoreBatchFn`; subclasses implement `score_fn()`."""

    def score_fn(self) -> ScoreBatchFn:
        raise NotImplementedError

    def expand(self, documents):
        return documents_and_rejects(documents, "Score", self.score_fn())
