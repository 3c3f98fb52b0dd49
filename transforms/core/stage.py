"""Stages: composite PTransforms configured by a dataclass, built by name from a YAML job.

A stage takes a PCollection of document batches and returns `(documents, rejects)`; rejects are
dead-letter batches (`accounting.REJECT_SCHEMA`). Stages that write extra outputs (dedup clusters,
say) ask the `JobContext` for a sink, which the job finalizes with the documents.

Each stage declares its `Contract`: the columns it reads (required or optional) and writes.
`check_chain` walks a job's stages over the columns the input provides before anything runs, so
a filter on a misspelt column or two stages that disagree on a column's name fail at once, naming
the stage, the column and the nearest existing names.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Optional

import apache_beam as beam

from transforms.core.config import ConfigError, parse
from transforms.core.documents import CORE_FIELDS, TEXT
from transforms.io.sink import SHARD_INDEX, SinkConfig, WriteArrowShards, WriteShardIndex

REJECTS = "rejects"


def documents_and_rejects(batches, label: str, fn: beam.DoFn, *side_inputs):
    """`(documents, rejects)` of a DoFn that yields document batches and tags dead-letter
    batches with REJECTS: the shape of every stage's output."""
    out = batches | label >> beam.ParDo(fn, *side_inputs).with_outputs(REJECTS, main="documents")
    return out.documents, out[REJECTS]

# Stage name in YAML -> "module:Class". Modules import lazily so a job loads only what it uses.
STAGES: dict[str, str] = {
    "mixture": "transforms.mixture.sampling:MixtureStage",
    "license_filter": "transforms.mixture.licenses:LicenseFilter",
    "el2n": "transforms.selection.el2n:El2n",
    "sensitivity": "transforms.selection.sensitivity:Sensitivity",
    "select": "transforms.selection.select:Select",
    "balance": "transforms.selection.pruning:Balance",
    "prototypes": "transforms.selection.pruning:Prototypes",
    "semdedup": "transforms.selection.pruning:SemDedup",
    "cluster_complexity": "transforms.selection.pruning:ClusterComplexity",
    "dedup": "transforms.dedup.stage:Dedup",
    "decontaminate": "transforms.decontam.stage:Decontaminate",
    "rephrase": "transforms.llm.rephrase:Rephrase",
    "lm_perplexity": "transforms.llm.lm_perplexity:LMPerplexity",
    "heuristics": "transforms.quality.heuristics:HeuristicsStage",
    "langid": "transforms.quality.langid:LangIdStage",
    "quality": "transforms.quality.classifier:QualityStage",
    "embedding_quality": "transforms.quality.embedding_quality:EmbeddingQualityStage",
    "buckets": "transforms.quality.buckets:BucketsStage",
    "perplexity": "transforms.quality.perplexity:PerplexityStage",
    "filter": "transforms.quality.filter:FilterStage",
    "tokenize": "transforms.tokens.tokenize:Tokenize",
    "url_filter": "transforms.cleaning.url_filter:UrlFilter",
    "line_dedup": "transforms.cleaning.line_dedup:LineDedup",
    "pii": "transforms.cleaning.pii:Pii",
    "substring_dedup": "transforms.cleaning.substring_dedup:SubstringDedup",
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


@dataclass(frozen=True)
class Contract:
    """The columns a stage reads and writes. `reads` must exist when the stage runs; `optional`
    change what it does when present (e.g. rephrase routes by a quality bucket if there is one)."""

    reads: tuple[str, ...] = (TEXT,)
    optional: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


class Stage(beam.PTransform):
    """Base of configured stages. Subclasses set `Config`, implement `expand`, and override
    `contract` when they read more than the text or write columns."""

    Config: ClassVar[type]

    def __init__(self, config: Any, context: JobContext | None = None):
        super().__init__()
        self.config = config
        self.context = context

    def contract(self) -> Contract:
        return Contract()


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


def check_chain(stages: Iterable[tuple[str, Stage]], input_fields: Optional[Iterable[str]] = None,
                ) -> list[str]:
    """Check that every stage finds the columns it reads; returns notes on optional columns
    nothing provides. `input_fields` are the columns the input is known to carry besides the
    core fields; None when the input is not known yet (given at run time), so a column no stage
    writes may still come from it: a note, not an error. Raises ConfigError naming each missing
    column and the nearest existing names."""
    available = set(CORE_FIELDS) | set(input_fields or ())
    problems, notes = [], []
    unknown_input = input_fields is None
    for label, stage in stages:
        label = _config_key(label)
        contract = stage.contract()
        for column in contract.reads:
            if column not in available and unknown_input:
                notes.append(f"{label} reads column '{column}', which no earlier stage writes: "
                             "the input must carry it")
            elif column not in available:
                near = difflib.get_close_matches(column, sorted(available), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
                problems.append(f"{label} reads column '{column}', which neither the input "
                                f"nor an earlier stage provides (available: "
                                f"{', '.join(sorted(available))}){hint}")
        notes += [f"{label}: optional column '{column}' is not provided; the stage runs "
                  "without it" for column in contract.optional if column not in available]
        available |= set(contract.writes)
    if problems:
        raise ConfigError("; ".join(problems))
    return notes


def _config_key(label: str) -> str:
    """A stage's graph label (`01-filter`) as the config key a user edits (`stages.1.filter`)."""
    index, _, name = label.partition("-")
    return f"stages.{int(index)}.{name}" if index.isdigit() else label
