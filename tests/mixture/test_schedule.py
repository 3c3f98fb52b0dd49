"""Generated phase schedules (`sluice mixture schedule`) and the mixture stage on a schedule."""
from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that

from pipelines.cli import main
from tests.mixture.test_mixture import BEAM, _corpus
from tests.support import test_pipeline
from transforms.core.config import ConfigError, parse
from transforms.mixture.sampling import MixtureStage, load_schedule, load_weights
from transforms.mixture.schedule import (overall_weights, temperature_schedule,
                                         upsampling_schedule)

BASE = {"web": 0.7, "code": 0.2, "math": 0.1}


def entropy(weights):
    import math
    return -sum(w * math.log(w) for w in weights.values() if w > 0)


def test_upsampling_raises_the_named_domains_in_the_final_phase_only():
    first, final = upsampling_schedule(BASE, {"math": 3.0}, final_fraction=0.2)
    assert (first["fraction"], final["fraction"]) == (0.8, 0.2)
    assert first["weights"] == pytest.approx(BASE)
    # math x3 then renormalised: 0.3 / 1.2.
    assert final["weights"]["math"] == pytest.approx(0.25)
    assert final["weights"]["web"] / final["weights"]["code"] == pytest.approx(3.5)


def test_keep_overall_compensates_earlier_and_fails_when_it_cannot():
    phases = upsampling_schedule(BASE, {"math": 3.0}, final_fraction=0.2, keep_overall=True)
    assert overall_weights(phases) == pytest.approx(BASE)
    assert phases[0]["weights"]["math"] < BASE["math"] < phases[1]["weights"]["math"]
    # math at x20 over the last 50% would need more math than the whole run has.
    with pytest.raises(ConfigError, match="more of math"):
        upsampling_schedule(BASE, {"math": 20.0}, final_fraction=0.5, keep_overall=True)
    with pytest.raises(ConfigError, match="not in the mixture: wiki"):
        upsampling_schedule(BASE, {"wiki": 2.0})


def test_temperature_cools_down_to_the_base_mixture():
    phases = temperature_schedule(BASE, temperature=3.0, cooldown=0.2, steps=4)
    assert sum(p["fraction"] for p in phases) == pytest.approx(1.0)
    assert [p["fraction"] for p in phases[1:]] == pytest.approx([0.05] * 4)
    entropies = [entropy(p["weights"]) for p in phases]
    assert entropies == sorted(entropies, reverse=True)  # flatter first, then cooling
    assert phases[-1]["weights"] == pytest.approx(BASE)
    assert phases[0]["weights"]["math"] > BASE["math"]  # the small domain raised
    assert len(temperature_schedule(BASE, 2.0, cooldown=0.0)) == 1


def test_schedule_cli_writes_a_mixture_that_apply_follows(tmp_path):
    paths = _corpus(tmp_path)
    base = tmp_path / "mixture.json"
    base.write_text(json.dumps({"weights": {"web": 0.9, "books": 0.1}, "predicted": 3.2}))
    scheduled = tmp_path / "scheduled.json"
    assert main(["mixture", "schedule", "--mixture", str(base), "--upsample", "books=4",
                 "--final-fraction", "0.2", "--output", str(scheduled)]) == 0
    document = json.loads(scheduled.read_text())
    assert document["predicted"] == 3.2  # the rest of the base file is carried
    assert document["schedule_recipe"]["recipe"] == "upsample_end"
    assert load_weights(str(scheduled)) == pytest.approx(overall_weights(load_schedule(
        str(scheduled))))
    out = tmp_path / "out"
    assert main(["mixture", "apply", "--mixture", str(scheduled), "--inputs",
                 f"web={paths['web']}", f"books={paths['books']}", "--tokens", "20000",
                 "--output", str(out), *BEAM]) == 0
    summary = json.loads((out / "schedule.json").read_text())
    assert [p["fraction"] for p in summary["phases"]] == pytest.approx([0.8, 0.2])
    share = [json.loads((out / f"phase-{k}" / "manifest.json").read_text())["sources"]
             ["books"]["tokens"] / summary["phases"][k]["written_tokens"] for k in (0, 1)]
    assert share[1] > 2.5 * share[0]
    # One recipe, from a plain mixture.
    assert main(["mixture", "schedule", "--mixture", str(base), "--output",
                 str(tmp_path / "x.json")]) == 2
    assert main(["mixture", "schedule", "--mixture", str(scheduled), "--temperature", "2",
                 "--output", str(tmp_path / "y.json")]) == 2


def test_the_stage_samples_one_phase_and_refuses_to_drop_a_schedule(tmp_path):
    mixture = tmp_path / "scheduled.json"
    mixture.write_text(json.dumps({"weights": {"web": 0.5, "books": 0.5}, "schedule": [
        {"fraction": 0.5, "weights": {"web": 1.0}},
        {"fraction": 0.5, "weights": {"books": 1.0}}]}))
    with pytest.raises(ConfigError, match="2-phase schedule"):
        MixtureStage(parse(MixtureStage.Config, {"mixture": str(mixture), "tokens": 10}))
    with pytest.raises(ConfigError, match="'phase' must be in 0-1"):
        MixtureStage(parse(MixtureStage.Config, {"mixture": str(mixture), "tokens": 10,
                                                 "phase": 2}))
    with pytest.raises(ConfigError, match="no schedule"):
        MixtureStage(parse(MixtureStage.Config, {"mixture": {"web": 1.0}, "tokens": 10,
                                                 "phase": 0}))
    batch = pa.RecordBatch.from_pylist(
        [{"id": f"{s}-{i}", "text": "a b c d", "source": s} for s in ("web", "books")
         for i in range(20)])
    config = parse(MixtureStage.Config, {"mixture": str(mixture), "tokens": 160, "phase": 1})
    with test_pipeline() as p:
        documents, _ = p | beam.Create([batch]) | MixtureStage(config)

        def only_books(batches):
            sources = pa.Table.from_batches(batches).column("source").to_pylist()
            assert set(sources) == {"books"} and len(sources) == 40  # 2 epochs of 80 tokens

        assert_that(documents, only_books)
