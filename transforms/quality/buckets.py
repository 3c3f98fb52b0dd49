"""Nemotron-CC ensemble buckets: several quality scores mapped to one integer 0-19.

Su et al. 2024, "Nemotron-CC: Transforming Common Crawl into a Refined Long-Horizon Pretraining
Dataset", Sec. 2: for each classifier, the length-weighted 5th, 10th, ..., 95th percentiles of its
scores on a reference sample are thresholds; a document's score maps to the integer 0-19 of the
interval it falls in, and its bucket is the maximum over classifiers. Buckets 0-11 are treated as
low quality, 12-19 as high quality (rephrased differently downstream).

The percentile table is computed once by a Beam combine (a mergeable bottom-k sample by id hash,
weighted by text length in characters), saved as JSON at `table`, and reused by later runs that
find it there, so buckets stay comparable across runs. With `low_output`, low-quality documents
are routed to that extra output instead of the main one (both count as kept).
"""
from __future__ import annotations

from dataclasses import field
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from apache_beam.io.filesystems import FileSystems

from transforms.core.columns import HIGH_QUALITY_MIN_BUCKET, QUALITY_BUCKET, QUALITY_TIER
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import ID, TEXT
from transforms.core.files import read_json, write_json_atomic
from transforms.core.scoring import ScoreBatchFn, Scored
from transforms.core.stage import Contract, Stage, documents_and_rejects

LOW = "low"


@config_dataclass
class BucketsConfig:
    columns: list[str]                     # one score column per classifier (higher = better)
    table: str                             # percentile table (JSON): reused if present
    recompute: bool = False                # recompute and overwrite an existing table
    percentiles: list[int] = field(default_factory=lambda: list(range(5, 100, 5)))
    max_sample: int = 1_000_000            # documents kept in the reference sample
    column: str = QUALITY_BUCKET
    high_min: int = HIGH_QUALITY_MIN_BUCKET  # buckets >= high_min are high quality
    tier_column: str = QUALITY_TIER
    low_output: Optional[str] = None       # route low-quality documents to this output
    split: str = "train"                   # split name of the low-quality output's shards


# --- the reference sample: a mergeable bottom-k sample by id hash ------------------------------

def sample_of(batch: pa.RecordBatch, columns: list[str]) -> dict[str, np.ndarray]:
    """One batch's candidates: id hash keys, text lengths and scores (NaN for null)."""
    keys = np.fromiter((xxhash.xxh64_intdigest(i.encode("utf-8", "surrogatepass"))
                        for i in batch.column(ID).to_pylist()),
                       dtype=np.uint64, count=batch.num_rows)
    sample = {"key": keys,
              "weight": pc.utf8_length(batch.column(TEXT)).to_numpy(zero_copy_only=False)
              .astype(np.float64)}
    for name in columns:
        index = batch.schema.get_field_index(name)
        values = (batch.column(index).cast(pa.float64()).to_numpy(zero_copy_only=False)
                  if index >= 0 else np.full(batch.num_rows, np.nan))
        sample[name] = np.asarray(values, dtype=np.float64)
    return sample


def merge_samples(samples: list[dict[str, np.ndarray]], limit: int) -> Optional[dict]:
    samples = [s for s in samples if s is not None and len(s["key"])]
    if not samples:
        return None
    merged = {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}
    if len(merged["key"]) > limit:
        keep = np.argpartition(merged["key"], limit - 1)[:limit]
        merged = {name: values[keep] for name, values in merged.items()}
    return merged


class ReferenceSample(beam.CombineFn):
    """Up to `limit` documents with the smallest id hashes: a uniform sample, mergeable."""

    def __init__(self, columns: list[str], limit: int):
        self.columns = columns
        self.limit = limit

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, batch):
        return merge_samples([accumulator, sample_of(batch, self.columns)], self.limit)

    def merge_accumulators(self, accumulators):
        return merge_samples(list(accumulators), self.limit)

    def extract_output(self, accumulator):
        return accumulator


def weighted_percentiles(values: np.ndarray, weights: np.ndarray,
                         percentiles: list[int]) -> list[float]:
    """The smallest value whose cumulative weight share reaches each percentile."""
    present = ~np.isnan(values)
    values, weights = values[present], weights[present]
    if not len(values):
        raise ValueError("no scores to compute percentiles from")
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    shares = cumulative / cumulative[-1]
    index = np.searchsorted(shares, np.asarray(percentiles) / 100.0, side="left")
    return values[order][np.minimum(index, len(values) - 1)].tolist()


def percentile_table(sample: Optional[dict], columns: list[str], percentiles: list[int]) -> dict:
    if sample is None:
        raise ValueError("no documents to compute the percentile table from")
    return {"method": "Nemotron-CC length-weighted percentiles", "weight": "characters",
            "percentiles": percentiles, "documents": int(len(sample["key"])),
            "thresholds": {c: weighted_percentiles(sample[c], sample["weight"], percentiles)
                           for c in columns}}


# --- applying the table ---------------------------------------------------------------------------

def ensemble_buckets(scores: dict[str, np.ndarray], thresholds: dict[str, list[float]]) -> np.ndarray:
    """Max over classifiers of each score's interval index 0..len(thresholds); -1 if all null."""
    result = None
    for name, values in scores.items():
        bucket = np.digitize(values, thresholds[name]).astype(np.int64)
        bucket[np.isnan(values)] = -1
        result = bucket if result is None else np.maximum(result, bucket)
    return result


class BucketFn(ScoreBatchFn):
    stage = "buckets"

    def score(self, batch, table) -> Scored:
        missing = [c for c in self.config.columns if c not in table["thresholds"]]
        if missing:
            raise ConfigError(f"buckets: percentile table has no thresholds for {missing}")
        sample = sample_of(batch, self.config.columns)
        buckets = ensemble_buckets({c: sample[c] for c in self.config.columns},
                                   table["thresholds"])
        tiers = np.where(buckets >= self.config.high_min, "high", LOW).astype(object)
        tiers[buckets < 0] = None
        return Scored(columns={
            self.config.column: pa.array(buckets, mask=buckets < 0),
            self.config.tier_column: pa.array(tiers.tolist(), type=pa.string())})


def write_table(table: dict, path: str) -> None:
    write_json_atomic(path, table)


def split_low(batch: pa.RecordBatch, tier_column: str):
    """Low-quality rows to the `low` output, the rest (including unscored) to the main output."""
    low = pc.fill_null(pc.equal(batch.column(tier_column), LOW), False)
    high = batch.filter(pc.invert(low))
    if high.num_rows:
        yield high
    low_rows = batch.filter(low)
    if low_rows.num_rows:
        yield beam.pvalue.TaggedOutput(LOW, low_rows)


class BucketsStage(Stage):
    """Nemotron-CC ensemble buckets (see the module docstring)."""

    Config = BucketsConfig

    def __init__(self, config: BucketsConfig, context=None):
        super().__init__(config, context)
        if not config.columns:
            raise ConfigError("buckets: give at least one score column")
        if config.low_output and context is None:
            raise ConfigError("buckets: low_output needs a job to write the extra output")

    def contract(self) -> Contract:
        return Contract(reads=tuple(self.config.columns),
                        writes=(self.config.column, self.config.tier_column))

    def expand(self, documents):
        config = self.config
        if FileSystems.exists(config.table) and not config.recompute:
            table = read_json(config.table)
            table_input = documents.pipeline | "Table" >> beam.Create([table])
        else:
            table_input = (documents
                           | "Sample" >> beam.CombineGlobally(
                               ReferenceSample(config.columns, config.max_sample))
                           | "Percentiles" >> beam.Map(percentile_table, config.columns,
                                                       config.percentiles))
            table_input | "SaveTable" >> beam.Map(write_table, config.table)
        kept, rejects = documents_and_rejects(documents, "Bucket", BucketFn(config),
                                              beam.pvalue.AsSingleton(table_input))
        if config.low_output:
            routed = kept | "Route" >> beam.ParDo(split_low, config.tier_column).with_outputs(
                LOW, main="high")
            routed[LOW] | "WriteLow" >> self.context.sink(config.low_output, config.split,
                                                          count_kept=True)
            kept = routed.high
        return kept, rejects
