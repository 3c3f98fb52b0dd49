"""Stages: composite PTransforms configured by a dataclass, built by name from a YAML job.

A stage takes a PCollection of document batches and returns `(documents, rejects)`; rejects are
dead-letter batches (`accounting.REJECT_SCHEMA`). Stages that write extra outputs (dedup clusters,
say) ask the `JobContext` for a sink, which the job finalizes with the documents.

Per-document logic is a plain function `doc -> [docs]` that raises `Drop(reason)` to remove a
document (DCLM's mapper shape); `MapDocuments` applies it batch by batch and counts every drop.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import apache_beam as beam

from transforms.core.accounting import Drop, Rejects
from transforms.core.config import ConfigError, parse
from transforms.core.documents import ID, SOURCE, batch_from_rows, rows
from transforms.io.sink import SHARD_INDEX, SinkConfig, WriteArrowShards, WriteShardIndex

REJECTS = "rejects"

# Stage name in YAML -> "module:Class". Modules import lazily so a job loads only what it uses.
STAGES: dict[str, str] = {
    "mixture": "transforms.mixture.sampling:MixtureStage",
    "el2n": "transforms.selection.el2n:El2n",
    "sensitivity": "transforms.selection.sensitivity:Sensitivity",
    "select": "transforms.selection.select:Select",
    "dedup": "transforms.dedup.stage:Dedup",
    "rephrase": "transforms.llm.rephrase:Rephrase",
    "lm_perplexity": "transforms.llm.lm_perplexity:LMPerplexity",
    "heuristics": "transforms.quality.heuristics:HeuristicsStage",
    "langid": "transforms.quality.langid:LangIdStage",
    "quality": "transforms.quality.classifier:QualityStage",
    "buckets": "transforms.quality.buckets:BucketsStage",
    "perplexity": "transforms.quality.perplexity:PerplexityStage",
    "filter": "transforms.quality.filter:FilterStage",
}


@dataclass
class JobContext:
    """What stages need from the job: where outputs go and how shards are written."""

    output_dir: str
    staging_dir: str
    sink_config: SinkConfig
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> split
    shard_entries: list = field(default_factory=list)  # PCollections of (name, shard entry)

    def sink(self, name: str, split: str, count_kept: bool = False) -> beam.PTransform:
        """A shard sink for output folder `name` (finalized into `output_dir/name`)."""
        if name in self.outputs:
            raise ValueError(f"output '{name}' is written twice")
        self.outputs[name] = split
        return _OutputSink(self, name, split, count_kept)

    @property
    def shard_index(self) -> str:
        return f"{self.staging_dir}/{SHARD_INDEX}"

    def write_shard_index(self) -> None:
        """After every sink is built: the one index of all outputs' shards."""
        self.shard_entries | "AllShards" >> beam.Flatten() | WriteShardIndex(self.shard_index)


class _OutputSink(beam.PTransform):
    def __init__(self, context: JobContext, name: str, split: str, count_kept: bool):
        super().__init__()
        self.context, self.name, self.split, self.count_kept = context, name, split, count_kept

    def expand(self, batches):
        context, name = self.context, self.name
        entries = (batches
                   | WriteArrowShards(f"{context.staging_dir}/{name}", self.split,
                                      context.sink_config, self.count_kept)
                   | "Named" >> beam.Map(lambda entry: (name, entry)))
        context.shard_entries.append(entries)
        return entries


class Stage(beam.PTransform):
    """Base of configured stages. Subclasses set `Config` and implement `expand`."""

    Config: ClassVar[type]

    def __init__(self, config: Any, context: JobContext | None = None):
        super().__init__()
        self.config = config
        self.context = context


def stage_class(name: str) -> type[Stage]:
    if name not in STAGES:
        raise ConfigError(f"unknown stage '{name}' (known: {', '.join(sorted(STAGES)) or 'none'})")
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_stage(entry: Any, index: int, context: JobContext) -> tuple[str, Stage]:
    """A YAML stage entry `{name: {params}}` -> (label, configured stage)."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"'stages.{index}' must be a mapping with one stage name, got {entry!r}")
    (name, params), = entry.items()
    cls = stage_class(name)
    config = parse(cls.Config, params, where=f"stages.{index}.{name}")
    return f"{index:02d}-{name}", cls(config, context)


class MapDocumentsFn(beam.DoFn):
    """Apply `fn: doc -> [docs]` to every document of every batch; drops and errors dead-letter."""

    def __init__(self, stage: str, fn: Callable[[dict], list[dict]]):
        self.stage = stage
        self.fn = fn

    def process(self, batch):
        rejects = Rejects(self.stage)
        out: list[dict] = []
        for doc in rows(batch):
            try:
                out.extend(self.fn(doc))
            except Drop as drop:
                rejects.drop(drop.reason, doc.get(ID), doc.get(SOURCE), doc, drop.detail)
            except Exception as exc:  # one bad document must not kill the run
                rejects.fail(f"{self.stage}_error", doc.get(ID), doc.get(SOURCE), doc,
                             f"{type(exc).__name__}: {exc}")
        if out:
            yield batch_from_rows(out)
        if len(rejects):
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())


class MapDocuments(beam.PTransform):
    """(documents, rejects) from a per-document function."""

    def __init__(self, stage: str, fn: Callable[[dict], list[dict]]):
        super().__init__()
        self.stage = stage
        self.fn = fn

    def expand(self, batches):
        out = batches | beam.ParDo(MapDocumentsFn(self.stage, self.fn)).with_outputs(
            REJECTS, main="documents")
        return out.documents, out[REJECTS]
