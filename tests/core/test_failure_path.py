"""One failure path for every batch stage: a model that raises on some documents costs exactly
those documents, each a failed `<stage>_error` dead-letter record with the message, and the run
goes on; models load once per worker process.

The models are the real ones built from the sample data (tests/support/models.py); the fault
is injected by wrapping each in `Poisoned`, which raises for any call that sees the marker."""
from __future__ import annotations

import pickle

import apache_beam as beam
import pytest

from tests.support import Collected, test_pipeline
from tests.support.models import wiki_lines
from transforms.core.config import parse
from transforms.core.documents import batch_from_rows
from transforms.core.stage import REJECTS
from transforms.quality.buckets import BucketFn, BucketsConfig
from transforms.quality.classifier import QualityConfig, QualityFn
from transforms.quality.filter import FilterConfig, FilterFn
from transforms.quality.heuristics import HeuristicsConfig, HeuristicsFn
from transforms.quality.langid import LangIdConfig, LangIdFn
from transforms.quality.perplexity import PerplexityConfig, PerplexityFn, PerplexityModel
from transforms.selection.el2n import El2nConfig, ScoreFn, TrainProxy

POISON = "zzpoisonzz"


class Poisoned:
    """A real model whose every method raises when its arguments contain the marker."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        attribute = getattr(self._model, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            if POISON in repr((args, kwargs)).lower():
                raise RuntimeError(f"model failed on {name}")
            return attribute(*args, **kwargs)
        return call


class PoisonedQualityFn(QualityFn):
    def load_model(self):
        return Poisoned(super().load_model())


class PoisonedLangIdFn(LangIdFn):
    def load_model(self):
        return Poisoned(super().load_model())


class PoisonedHeuristicsFn(HeuristicsFn):
    def load_model(self):
        return Poisoned(super().load_model())


class PoisonedPerplexityFn(PerplexityFn):
    def load_model(self):
        model = super().load_model()
        return PerplexityModel(Poisoned(model.lm), model.tokenizer)


class PoisonedEl2nFn(ScoreFn):
    def setup(self):
        super().setup()
        get = self.proxy.get
        self.proxy.get = lambda data: Poisoned(get(data))


def documents(shared_data, n: int = 40, poisoned=(3, 17, 29)) -> list[dict]:
    lines = wiki_lines(shared_data, 30)
    return [{"id": f"d{i}", "source": "wiki", "label": i % 2,
             "text": " ".join(lines[i * 5:(i + 1) * 5]) + (f" {POISON}" if i in poisoned else "")}
            for i in range(n)]


def run_fn(fn, docs: list[dict], *side_inputs):
    with test_pipeline() as p:
        batches = p | beam.Create([batch_from_rows(docs[:25]), batch_from_rows(docs[25:])])
        side = [beam.pvalue.AsSingleton(s(p)) for s in side_inputs]
        out = batches | beam.ParDo(fn, *side).with_outputs(REJECTS, main="documents")
        kept, rejected = Collected(out.documents, "kept"), Collected(out[REJECTS], "rejects")
    return kept.rows(), rejected.rows()


def assert_only_poisoned_failed(stage: str, kept: list[dict], rejected: list[dict]):
    assert sorted(r["id"] for r in rejected) == ["d17", "d29", "d3"]
    assert {(r["kind"], r["reason"]) for r in rejected} == {("failed", f"{stage}_error")}
    assert all("RuntimeError" in r["detail"] and POISON in r["payload"].decode()
               for r in rejected)
    assert len(kept) == 37 and not any(POISON in d["text"] for d in kept)


def test_fasttext_quality(quality_model, shared_data):
    fn = PoisonedQualityFn(parse(QualityConfig, {"model": str(quality_model)}))
    kept, rejected = run_fn(fn, documents(shared_data))
    assert_only_poisoned_failed("quality", kept, rejected)
    assert all(0 <= d["quality_score"] <= 1 for d in kept)


def test_langid(langid_model, shared_data):
    fn = PoisonedLangIdFn(parse(LangIdConfig, {"model": str(langid_model)}))
    kept, rejected = run_fn(fn, documents(shared_data))
    assert_only_poisoned_failed("langid", kept, rejected)
    assert {d["language"] for d in kept} == {"en"}


def test_heuristics(shared_data):
    fn = PoisonedHeuristicsFn(parse(HeuristicsConfig, {"drop": False}))
    kept, rejected = run_fn(fn, documents(shared_data))
    assert_only_poisoned_failed("heuristics", kept, rejected)


def test_kenlm_perplexity(wiki_lm, shared_data):
    fn = PoisonedPerplexityFn(parse(PerplexityConfig, {"model": str(wiki_lm)}))
    kept, rejected = run_fn(fn, documents(shared_data))
    assert_only_poisoned_failed("perplexity", kept, rejected)
    assert all(d["perplexity"] > 1 for d in kept)


def test_el2n_proxy(shared_data):
    config = parse(El2nConfig, {"proxy": {"label_field": "label", "models": 1, "epochs": 1,
                                          "threads": 1}})
    docs = documents(shared_data)
    proxy = lambda p: (p | "Docs" >> beam.Create([batch_from_rows(docs)])  # noqa: E731
                       | TrainProxy(config.proxy))
    kept, rejected = run_fn(PoisonedEl2nFn(config), docs, proxy)
    assert_only_poisoned_failed("el2n", kept, rejected)
    assert all(d["el2n"] >= 0 for d in kept)


def test_a_batch_error_without_a_model_dead_letters_its_rows(shared_data):
    """`filter` and `buckets` on a column of text where numbers are expected: Arrow raises for the
    whole batch; every row fails with the message, instead of the job."""
    docs = [d | {"score": "high"} for d in documents(shared_data, poisoned=())]
    kept, rejected = run_fn(FilterFn(parse(FilterConfig, {"column": "score", "min": 0.5})), docs)
    assert not kept and len(rejected) == 40
    assert {r["reason"] for r in rejected} == {"filter_error"}
    table = {"thresholds": {"score": [0.1, 0.5, 0.9]}}
    fn = BucketFn(parse(BucketsConfig, {"columns": ["score"], "table": "unused.json"}))
    kept, rejected = run_fn(fn, docs, lambda p: p | "Table" >> beam.Create([table]))
    assert not kept and {r["reason"] for r in rejected} == {"buckets_error"}


def test_model_loads_once_per_process_for_every_instance(quality_model, langid_model):
    """Beam unpickles one DoFn instance per bundle processor and thread; they share the model."""
    fn = QualityFn(parse(QualityConfig, {"model": str(quality_model)}))
    first, second = pickle.loads(pickle.dumps(fn)), pickle.loads(pickle.dumps(fn))
    first.setup()
    second.setup()
    assert first.model is second.model
    # another stage reading the same file (another label, say) shares it; another file does not
    same_file = QualityFn(parse(QualityConfig, {"model": str(quality_model), "label": "cc",
                                                "column": "cc_score"}))
    other_file = LangIdFn(parse(LangIdConfig, {"model": str(langid_model)}))
    for fn in (same_file, other_file):
        pickle.loads(pickle.dumps(fn)).setup()
        fn.setup()
    assert same_file.model is first.model and other_file.model is not first.model


@pytest.mark.parametrize("fn_class", [QualityFn, LangIdFn, PerplexityFn, HeuristicsFn, FilterFn,
                                      BucketFn, ScoreFn])
def test_every_batch_stage_uses_the_base_failure_path(fn_class):
    assert "process" not in vars(fn_class)  # the base's process is the one failure path
