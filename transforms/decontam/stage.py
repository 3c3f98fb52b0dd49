"""The `decontaminate` stage: drop (or redact) documents that contain evaluation-set items.

    stages:
      - decontaminate:
          eval_sets:
            - {name: humaneval, path: evals/HumanEval.jsonl.gz, text_field: prompt}
            - {name: mmlu, path: evals/mmlu/*.parquet, template: "{question} {choices}"}
          rule: any          # any: one shared n-gram (GPT-3, 13-grams); fraction: TULU 3 (8-grams)
          action: drop       # or redact: cut the overlapping spans, keep the rest

The eval items' n-grams are the stage's model (`transforms/decontam/ngrams.py`): `load_model` reads
the eval files and hashes them once per worker process (the base's shared-model handle), and
documents stream past them batch by batch. A document in which an item is found is dropped as
`contaminated` (the detail names the eval sets and item ids), or with `action: redact` keeps its
text minus the overlapping n-gram spans (dropped as `contaminated` only if nothing but
whitespace is left).

Every (document, eval set, items, source) hit also leaves on a side output, combined into one
report written as `decontamination.json` in the job's output folder: per eval set the items, the
items found, the documents affected, and both by source.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from transforms.core.accounting import count
from transforms.core.config import ConfigError, config_dataclass, to_dict
from transforms.core.documents import SOURCE, TEXT
from transforms.core.files import write_json_atomic
from transforms.core.scoring import ScoreBatchFn, Scored
from transforms.core.stage import REJECTS, Contract, Stage
from transforms.decontam.ngrams import EvalIndex, ngram_hashes, read_eval_items, redact

CONTAMINATED = "contaminated"
REPORT_FILE = "decontamination.json"
HITS = "hits"
DEFAULT_NGRAM = {"any": 13, "fraction": 8}
NORMALISATION = ("lowercase; every character outside [\\p{L}\\p{N}_] separates words; words "
                 "are the runs between separators; xxh3-64 word hashes rolled into 64-bit "
                 "n-gram hashes")


@config_dataclass
class EvalSetConfig:
    name: Annotated[str, Field(pattern=r"^[\w.-]+$")]
    path: str                               # a glob of JSONL (.gz, .zst) or Parquet files
    text_field: Optional[str] = None        # the item's text ...
    template: Optional[str] = None          # ... or a template: "{question} {choices}"
    id_field: Optional[str] = None          # default: id, task_id, question_id or idx, else the row
    format: Literal["auto", "jsonl", "parquet"] = "auto"

    @model_validator(mode="after")
    def _check(self):
        if (self.text_field is None) == (self.template is None):
            raise ValueError(f"eval set '{self.name}': give text_field or template (one of them)")
        return self


@config_dataclass
class DecontamConfig:
    eval_sets: Annotated[list[EvalSetConfig], Field(min_length=1)]
    rule: Literal["any", "fraction"] = "any"
    ngram: Optional[Annotated[int, Field(ge=1)]] = None  # 13 for `any`, 8 for `fraction`
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5  # word coverage, rule `fraction`
    action: Literal["drop", "redact"] = "drop"
    replacement: str = ""                    # what a redacted span becomes

    @model_validator(mode="after")
    def _check(self):
        names = [s.name for s in self.eval_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"eval set names must be unique, got {names}")
        return self

    @property
    def n(self) -> int:
        return self.ngram or DEFAULT_NGRAM[self.rule]

    def describe(self) -> dict:
        return {"rule": self.rule, "ngram": self.n,
                "threshold": self.threshold if self.rule == "fraction" else None,
                "action": self.action, "normalisation": NORMALISATION}


def load_index(config: DecontamConfig) -> EvalIndex:
    sets = [read_eval_items(s.name, s.path, s.text_field, s.template, s.id_field, s.format)
            for s in config.eval_sets]
    return EvalIndex(sets, config.n)


class DecontamFn(ScoreBatchFn):
    """Batches -> batches without contaminated documents (or with them redacted); the hits of
    each batch leave on the HITS output."""

    stage = "decontaminate"

    def __init__(self, config: DecontamConfig):
        super().__init__(config)
        self._hits: list[dict] = []

    def load_model(self) -> EvalIndex:
        return load_index(self.config)

    def model_key(self) -> str:
        return repr((to_dict(self.config.eval_sets), self.config.n))

    def process(self, batch, *side_inputs):
        self._hits: list[dict] = []
        yield from super().process(batch, *side_inputs)
        if self._hits:
            yield beam.pvalue.TaggedOutput(HITS, self._hits)

    def score(self, batch: pa.RecordBatch) -> Scored:
        index, config = self.model, self.config
        text = batch.column(TEXT)
        hashes, offsets, _ = ngram_hashes(text, index.n)
        doc_of = np.repeat(np.arange(batch.num_rows), np.diff(offsets))
        docs, items, positions = index.hits(hashes, doc_of)
        threshold = config.threshold if config.rule == "fraction" else None
        found_docs, found_items, coverage = index.found(docs, items, positions, threshold)
        if not len(found_docs):
            return Scored()
        sources = (batch.column(SOURCE).to_pylist() if SOURCE in batch.schema.names
                   else [None] * batch.num_rows)
        drops: list[Optional[str]] = [None] * batch.num_rows
        details: list[str] = [""] * batch.num_rows
        texts = None
        hits = []
        bounds = np.flatnonzero(np.r_[True, found_docs[1:] != found_docs[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:]):
            doc = int(found_docs[a])
            by_set: dict[str, list[str]] = {}
            for item in found_items[a:b].tolist():
                by_set.setdefault(index.set_names[index.item_set[item]], []).append(
                    index.item_ids[item])
            hits.append({"source": sources[doc], "sets": by_set})
            detail = "; ".join(f"{name}: {', '.join(ids[:10])}"
                               + (f" (+{len(ids) - 10} more)" if len(ids) > 10 else "")
                               for name, ids in by_set.items())
            if config.action == "drop":
                drops[doc], details[doc] = CONTAMINATED, detail
                continue
            if texts is None:
                texts = text.to_pylist()
            # cut this document's n-grams that belong to the items found in it
            wanted = np.unique(index.hashes[np.isin(index.items, found_items[a:b])])
            redacted, removed = redact(texts[doc], index.n, wanted, config.replacement)
            if not redacted.strip():
                drops[doc], details[doc] = CONTAMINATED, detail + " (nothing left once redacted)"
            else:
                texts[doc] = redacted
                count("decontaminate.redacted_documents")
                count("decontaminate.redacted_chars", removed)
        self._hits += hits  # only once the batch scored without raising
        columns = {TEXT: pa.array(texts, text.type)} if texts is not None else {}
        return Scored(columns, drops if any(drops) else None, details)


class HitsCombine(beam.CombineFn):
    """Hits -> {eval set: {documents, items (set), by_source: {source: {documents, items}}}}."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, hits):
        for hit in hits:
            source = str(hit["source"])
            for name, ids in hit["sets"].items():
                entry = accumulator.setdefault(name, {"documents": 0, "items": set(),
                                                      "by_source": {}})
                entry["documents"] += 1
                entry["items"].update(ids)
                by = entry["by_source"].setdefault(source, {"documents": 0, "items": set()})
                by["documents"] += 1
                by["items"].update(ids)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for name, entry in accumulator.items():
                into = merged.setdefault(name, {"documents": 0, "items": set(), "by_source": {}})
                into["documents"] += entry["documents"]
                into["items"] |= entry["items"]
                for source, by in entry["by_source"].items():
                    target = into["by_source"].setdefault(source, {"documents": 0,
                                                                   "items": set()})
                    target["documents"] += by["documents"]
                    target["items"] |= by["items"]
        return merged

    def extract_output(self, accumulator):
        return accumulator


def report(combined: dict, config: DecontamConfig, totals: dict[str, dict]) -> dict:
    """The `decontamination.json` content."""
    sets = {}
    for spec in config.eval_sets:
        entry = combined.get(spec.name, {"documents": 0, "items": set(), "by_source": {}})
        sets[spec.name] = {
            "path": spec.path,
            "text": spec.template if spec.template is not None else f"{{{spec.text_field}}}",
            "items": totals[spec.name]["items"],
            "too_short": totals[spec.name]["too_short"],
            "items_found": len(entry["items"]),
            "documents_affected": entry["documents"],
            "found_item_ids": sorted(entry["items"]),
            "by_source": {source: {"documents_affected": by["documents"],
                                   "items_found": len(by["items"])}
                          for source, by in sorted(entry["by_source"].items())},
        }
    return {"config": config.describe(), "eval_sets": sets}


class Decontaminate(Stage):
    """See the module docstring."""

    Config = DecontamConfig

    def __init__(self, config: DecontamConfig, context=None):
        super().__init__(config, context)
        # a job-level check before anything runs: every eval file readable, every field there
        index = load_index(config)
        short = index.too_short()
        self.totals = {name: {"items": int(np.sum(index.item_set_array == k)),
                              "too_short": short[k]}
                       for k, name in enumerate(index.set_names)}
        if not len(index):
            raise ConfigError("decontaminate: the eval sets hold no items")

    def contract(self) -> Contract:
        return Contract()

    def expand(self, documents):
        out = documents | "Decontaminate" >> beam.ParDo(DecontamFn(self.config)).with_outputs(
            REJECTS, HITS, main="documents")
        if self.context is not None and self.context.output_dir:
            path = f"{self.context.output_dir}/{REPORT_FILE}"
            config, totals = self.config, self.totals
            (out[HITS]
             | "CombineHits" >> beam.CombineGlobally(HitsCombine())
             | "WriteReport" >> beam.Map(
                 lambda combined: write_json_atomic(path, report(combined, config, totals))))
        return out.documents, out[REJECTS]
