"""Keep/prune policies over a per-document score, and importance-weighted sampling.

Policies (stage `select`, config recorded in the manifest like any stage):
- `top` / `bottom` / `middle`: keep that `fraction` of documents by `score_field`. Paul et al.
  2021 keep the hardest (top EL2N) examples; Marion et al. 2023 found the middle of the
  perplexity distribution best for LLM pretraining. Cut points are quantiles of a uniform sample
  of `sample_size` scores (exact when the corpus is smaller).
- `weighted`: draw `size` documents i.i.d. with `p(x) = score(x) / sum(score)` and give each the
  importance weight `w(x) = count(x) / (size p(x))`, so `sum_selected w(x) f(x)` estimates
  `sum_all f(x)` without bias. Sensitivity sampling (transforms/selection/sensitivity.py) uses the same draw.

Documents that are not kept leave as `dropped.not_selected` (those without a score as
`dropped.no_score`), so `input = kept + dropped + failed` holds. Their dead-letter payload is the
id, source and score only: the documents themselves are still in the input.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import xxhash

from transforms.core.accounting import Rejects
from transforms.core.columns import (SELECTION_COUNT, SELECTION_PROBABILITY,
                                     SELECTION_REPRESENTATIVE, SELECTION_WEIGHT)
from transforms.core.config import config_dataclass
from transforms.core.documents import ID, SOURCE, with_column
from transforms.core.stage import REJECTS, Contract, Stage, documents_and_rejects

NOT_SELECTED, NO_SCORE = "not_selected", "no_score"


def batch_key(batch: pa.RecordBatch) -> int:
    """A stable 64-bit key of a batch, from its document ids."""
    return xxhash.xxh3_64_intdigest("\0".join(map(str, batch.column(ID).to_pylist())).encode(
        "utf-8", "surrogatepass"))


def random_keys(batch: pa.RecordBatch, seed: int) -> np.ndarray:
    """One uniform [0, 1) number per row, reproducible from the seed and the batch's ids."""
    return np.random.default_rng([seed, batch_key(batch)]).random(batch.num_rows)


def float_column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A column as float64; nulls, a missing column and values that are not numbers give NaN."""
    if name not in batch.schema.names:
        return np.full(batch.num_rows, np.nan)
    column = batch.column(name)
    try:
        column = column.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        column = pa.array([v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
                           for v in column.to_pylist()], pa.float64())
    return column.to_numpy(zero_copy_only=False)


def reject_unkept(stage: str, batch: pa.RecordBatch, keep: np.ndarray, scores: np.ndarray,
                  score_field: str, describe) -> Rejects:
    """Drop every row not kept: `not_selected`, or `no_score` when its score is missing.

    The payload is id, source and score only; `describe(row)` gives the detail text.
    """
    rejects = Rejects(stage)
    ids = batch.column(ID).to_pylist()
    sources = (batch.column(SOURCE).to_pylist() if SOURCE in batch.schema.names
               else [None] * len(ids))
    for row in np.flatnonzero(~keep):
        score = float(scores[row]) if np.isfinite(scores[row]) else None
        rejects.drop(NOT_SELECTED if score is not None else NO_SCORE, ids[row], sources[row],
                     {ID: ids[row], SOURCE: sources[row], score_field: score}, describe(row))
    return rejects


class BottomK(beam.CombineFn):
    """A uniform sample without replacement of at most `size` items: those with the smallest
    random keys. Inputs and output are `(keys, values)` pairs of equal-length numpy arrays; it
    merges in any order, so it scales like any combiner."""

    def __init__(self, size: int):
        self.size = size

    def create_accumulator(self):
        return None

    def _keep(self, keys, values):
        if len(keys) > self.size:
            smallest = np.argpartition(keys, self.size - 1)[: self.size]
            return keys[smallest], values[smallest]
        return keys, values

    def add_input(self, accumulator, element):
        return self.merge_accumulators([accumulator, element])

    def merge_accumulators(self, accumulators):
        parts = [a for a in accumulators if a is not None and len(a[0])]
        if not parts:
            return None
        return self._keep(np.concatenate([p[0] for p in parts]),
                          np.concatenate([p[1] for p in parts]))

    def extract_output(self, accumulator):
        if accumulator is None:
            return np.zeros(0), np.zeros(0)
        order = np.argsort(accumulator[0], kind="stable")  # a deterministic order
        return accumulator[0][order], accumulator[1][order]


# --- weighted sampling ----------------------------------------------------------------------

def stratum_masses(key: int, values: np.ndarray, strata: np.ndarray) -> list[tuple]:
    """`(batch key, stratum, sum of values, documents)` for each stratum present in one batch."""
    present, inverse = np.unique(strata, return_inverse=True)
    mass = np.bincount(inverse, values, len(present))
    documents = np.bincount(inverse, minlength=len(present))
    return [(key, int(s), float(v), int(n)) for s, v, n in zip(present, mass, documents)]


def systematic_allocation(masses: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draws per stratum: `size` equally spaced points with one random offset over the cumulative
    masses, so stratum j gets floor or ceil of `size * P_j` draws and exactly `size * P_j` on
    average (systematic PPS sampling, Madow 1949)."""
    cumulative = np.concatenate([[0.0], np.cumsum(masses)]) * (size / masses.sum())
    cumulative[-1] = size
    return np.diff(np.searchsorted(rng.random() + np.arange(size), cumulative))


def draw_plan(masses: list[tuple], size: int, seed: int) -> dict:
    """How many of the `size` draws fall in each (batch, stratum), from `stratum_masses` rows.

    Draws are spread over strata by `systematic_allocation` (strata in order of their mean value,
    so similar strata are neighbours), then a stratum's draws over its batches by a multinomial on
    the batch masses, then (`draw_in_batch`) over its documents by a multinomial on the values.
    Every document x is therefore drawn `size * p(x)` times on average, `p(x) = v(x) / sum v`, as
    in i.i.d. sampling, but no stratum gets more or fewer draws than its mass calls for. With one
    stratum this is exactly `size` i.i.d. draws with probability `p(x)`.
    """
    rows = [r for r in masses if r[2] > 0]
    total = float(sum(r[2] for r in rows))
    if total <= 0:
        return {"total": total, "counts": {}}
    by_stratum: dict[int, list] = {}
    for row in sorted(rows):
        by_stratum.setdefault(row[1], []).append(row)
    strata = sorted(by_stratum)
    mass = np.array([sum(r[2] for r in by_stratum[s]) for s in strata])
    documents = np.array([sum(r[3] for r in by_stratum[s]) for s in strata])
    order = np.lexsort((strata, mass / documents))
    rng = np.random.default_rng([seed, 0])
    allocated = np.zeros(len(strata), dtype=np.int64)
    allocated[order] = systematic_allocation(mass[order], size, rng)
    counts = {}
    for stratum, stratum_mass, draws in zip(strata, mass, allocated):
        if draws:
            parts = by_stratum[stratum]
            split = rng.multinomial(draws, np.array([r[2] for r in parts]) / stratum_mass)
            counts.update({(r[0], stratum): int(c) for r, c in zip(parts, split) if c})
    return {"total": total, "counts": counts}


def draw_in_batch(values: np.ndarray, strata: np.ndarray, key: int, plan: dict,
                  seed: int) -> np.ndarray:
    """This batch's share of the plan: per stratum a multinomial over its documents by value."""
    counts = np.zeros(len(values), dtype=np.int64)
    rng = np.random.default_rng([seed, key, 1])
    for stratum in np.unique(strata):
        draws = plan["counts"].get((key, int(stratum)), 0)
        if draws:
            rows = np.flatnonzero(strata == stratum)
            counts[rows] = rng.multinomial(draws, values[rows] / values[rows].sum())
    return counts


def sampling_values(batch: pa.RecordBatch, column: str) -> np.ndarray:
    values = float_column(batch, column)
    return np.where(np.isfinite(values) & (values > 0), values, 0.0)


def strata_of(batch: pa.RecordBatch, column: Optional[str]) -> np.ndarray:
    """Stratum of each row: the `column` (e.g. a k-means cluster), or 0 for all."""
    if column is None:
        return np.zeros(batch.num_rows, dtype=np.int64)
    return batch.column(column).to_numpy(zero_copy_only=False).astype(np.int64)


class DrawFn(beam.DoFn):
    """Draw this batch's share of the sample; unselected documents are dropped (not_selected)."""

    def __init__(self, stage: str, value_column: str, size: int, seed: int,
                 stratum_column: Optional[str] = None):
        self.stage = stage
        self.value_column = value_column
        self.size = size
        self.seed = seed
        self.stratum_column = stratum_column

    def process(self, batch, plan, forced_ids=()):
        raw = float_column(batch, self.value_column)
        values = sampling_values(batch, self.value_column)
        counts = draw_in_batch(values, strata_of(batch, self.stratum_column), batch_key(batch),
                               plan, self.seed)
        total = plan["total"]
        probability = values / total if total > 0 else np.zeros(batch.num_rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where(counts > 0, counts / (self.size * probability), 0.0)
        forced = np.array([i in forced_ids for i in batch.column(ID).to_pylist()], dtype=bool)
        keep = (counts > 0) | forced
        rejects = reject_unkept(self.stage, batch, keep, raw, self.value_column,
                                lambda row: f"p={probability[row]:.3g}")
        if keep.any():
            kept = batch.filter(pa.array(keep))
            kept = with_column(kept, SELECTION_COUNT, pa.array(counts[keep]))
            kept = with_column(kept, SELECTION_PROBABILITY, pa.array(probability[keep]))
            kept = with_column(kept, SELECTION_WEIGHT, pa.array(weight[keep]))
            if forced_ids:
                kept = with_column(kept, SELECTION_REPRESENTATIVE, pa.array(forced[keep]))
            yield kept
        if len(rejects):
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())


class WeightedSample(beam.PTransform):
    """(documents, rejects): `size` draws with probability proportional to `value_column`,
    weights in `selection_weight`; balanced over the strata of `stratum_column` when given (see
    `draw_plan`). `forced_ids` (a singleton PCollection of a set of ids) are kept even when not
    drawn, with weight 0 unless drawn, so `sum w f` stays an unbiased estimate."""

    def __init__(self, stage: str, value_column: str, size: int, seed: int,
                 forced_ids: Optional[beam.PCollection] = None,
                 stratum_column: Optional[str] = None):
        super().__init__()
        self.stage = stage
        self.value_column = value_column
        self.size = size
        self.seed = seed
        self.forced_ids = forced_ids
        self.stratum_column = stratum_column

    def expand(self, batches):
        column, strata, size, seed = self.value_column, self.stratum_column, self.size, self.seed
        plan = (batches
                | "StratumMass" >> beam.FlatMap(lambda b: stratum_masses(
                    batch_key(b), sampling_values(b, column), strata_of(b, strata)))
                | "CollectMasses" >> beam.combiners.ToList()
                | "DrawPlan" >> beam.Map(draw_plan, size, seed))
        side = [beam.pvalue.AsSingleton(plan)]
        if self.forced_ids is not None:
            side.append(beam.pvalue.AsSingleton(self.forced_ids))
        return documents_and_rejects(batches, "Draw",
                                     DrawFn(self.stage, column, size, seed, strata), *side)


# --- fraction policies ----------------------------------------------------------------------

def score_bounds(sample: tuple[np.ndarray, np.ndarray], policy: str,
                 fraction: float) -> tuple[float, float]:
    """Inclusive (low, high) score bounds keeping `fraction` of the sampled scores."""
    scores = sample[1]
    if not len(scores):
        return math.inf, -math.inf
    quantile = lambda q: float(np.quantile(scores, min(max(q, 0.0), 1.0), method="inverted_cdf"))
    if policy == "top":
        return (quantile(1 - fraction) if fraction < 1 else -math.inf), math.inf
    if policy == "bottom":
        return -math.inf, quantile(fraction)
    return quantile((1 - fraction) / 2), quantile((1 + fraction) / 2)


class KeepInBoundsFn(beam.DoFn):
    def __init__(self, stage: str, score_field: str):
        self.stage = stage
        self.score_field = score_field

    def process(self, batch, bounds):
        scores = float_column(batch, self.score_field)
        low, high = bounds
        keep = np.isfinite(scores) & (scores >= low) & (scores <= high)
        rejects = reject_unkept(self.stage, batch, keep, scores, self.score_field,
                                lambda row: f"outside [{low:.6g}, {high:.6g}]")
        if keep.all():
            yield batch
        elif keep.any():
            yield batch.filter(pa.array(keep))
        if len(rejects):
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())


class KeepFraction(beam.PTransform):
    """(documents, rejects): keep the top, bottom or middle `fraction` by `score_field`."""

    def __init__(self, stage: str, score_field: str, policy: str, fraction: float, seed: int,
                 sample_size: int):
        super().__init__()
        self.stage, self.score_field, self.policy = stage, score_field, policy
        self.fraction, self.seed, self.sample_size = fraction, seed, sample_size

    def expand(self, batches):
        field, seed = self.score_field, self.seed

        def keyed_scores(batch):
            scores = float_column(batch, field)
            finite = np.isfinite(scores)
            return random_keys(batch, seed)[finite], scores[finite]

        bounds = (batches
                  | "SampleScores" >> beam.Map(keyed_scores)
                  | "ScoreSample" >> beam.CombineGlobally(BottomK(self.sample_size))
                  | "Bounds" >> beam.Map(score_bounds, self.policy, self.fraction))
        return documents_and_rejects(batches, "Keep", KeepInBoundsFn(self.stage, field),
                                     beam.pvalue.AsSingleton(bounds))


@config_dataclass
class SelectConfig:
    score_field: str
    policy: Literal["top", "bottom", "middle", "weighted"] = "top"
    fraction: float = 0.5          # top/bottom/middle: share of documents kept
    size: Optional[int] = None     # weighted: number of i.i.d. draws
    seed: int = 0
    sample_size: int = 200_000     # scores sampled to place the cut points

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.policy == "weighted" and (self.size is None or self.size < 1):
            raise ValueError("policy 'weighted' needs size >= 1")


class Select(Stage):
    """Keep documents by a score column (see module docstring)."""

    Config = SelectConfig

    def contract(self) -> Contract:
        weights = ((SELECTION_COUNT, SELECTION_PROBABILITY, SELECTION_WEIGHT)
                   if self.config.policy == "weighted" else ())
        return Contract(reads=(self.config.score_field,), writes=weights)

    def expand(self, documents):
        c = self.config
        if c.policy == "weighted":
            return documents | WeightedSample("select", c.score_field, c.size, c.seed)
        return documents | KeepFraction("select", c.score_field, c.policy, c.fraction, c.seed,
                                        c.sample_size)
