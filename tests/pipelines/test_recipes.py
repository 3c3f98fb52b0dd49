"""The reference recipes (configs/recipes/) run offline on the bundled demo corpus, balance, and
keep something; each does its reference's characteristic step. Outputs, cached models and
percentile tables are redirected into the test's folder."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from pipelines.job import load_config, run_job
from tests.support import REPO
from transforms.core.config import parse
from transforms.core.stage import stage_class
from transforms.io.sink import read_output

BEAM = ["--direct_num_workers", "1"]
RECIPES = REPO / "configs" / "recipes"


def recipe(name: str, out, models) -> dict:
    data = yaml.safe_load((RECIPES / f"{name}.yaml").read_text(encoding="utf-8"))
    data["output"] = str(out / name)
    for entry in data["stages"]:
        (stage, params), = entry.items()
        if stage == "quality":
            params["model"] = str(models / "dclm_majority.bin")  # shared, as the recipes share it
        if stage == "buckets":
            params["table"] = str(out / f"{name}_percentiles.json")
    return data


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def run(name, tmp_path, models) -> dict:
    cwd = os.getcwd()
    os.chdir(REPO)  # the recipes name their inputs relative to the repository, as a user runs them
    try:
        stats = run_job(recipe(name, tmp_path, models), BEAM, log=lambda *_: None)
    finally:
        os.chdir(cwd)
    assert stats["balanced"] and stats["failed"] == 0 and stats["kept"] > 0
    assert stats["input"] == 615   # every demo document: JSONL, Parquet, WARC, WET
    return stats


def test_fineweb(tmp_path, models):
    stats = run("fineweb", tmp_path, models)
    dropped = stats["dropped"]
    assert dropped["language_not_allowed"] > 0 and dropped["near_duplicate"] > 0
    assert any(r.startswith("gopher_") for r in dropped) and any(
        r.startswith(("c4_", "fineweb_")) for r in dropped)
    kept = read_output(str(tmp_path / "fineweb" / "documents"))
    assert min(kept.column("language_score").to_pylist()) >= 0.65


def test_dclm(tmp_path, models):
    stats = run("dclm", tmp_path, models)
    assert stats["dropped"]["dclm_not_top_10_percent"] > 0
    table = json.loads((tmp_path / "dclm_percentiles.json").read_text())
    kept = read_output(str(tmp_path / "dclm" / "documents"))
    assert min(kept.column("quality_score").to_pylist()) >= table["thresholds"]["quality_score"][0]
    # the top 10% of characters: a small share of the deduplicated documents
    assert stats["kept"] < 0.2 * (stats["kept"] + stats["dropped"]["dclm_not_top_10_percent"])


def test_nemotron_cc(tmp_path, models):
    stats = run("nemotron_cc", tmp_path, models)
    assert not any(r.startswith(("gopher_", "c4_", "fineweb_")) for r in stats["dropped"])
    high = read_output(str(tmp_path / "nemotron_cc" / "documents"))
    low = read_output(str(tmp_path / "nemotron_cc" / "low_quality"))
    assert high.num_rows and low.num_rows
    assert min(high.column("quality_bucket").to_pylist()) >= 12
    assert max(low.column("quality_bucket").to_pylist()) < 12


def test_nemotron_cc_rephrase_takes_the_endpoint_from_set():
    path = str(RECIPES / "nemotron_cc_rephrase.yaml")
    rephrase = stage_class("rephrase").Config
    (params,) = load_config(path)["stages"][0].values()
    assert parse(rephrase, params).vllm.endpoint == "http://127.0.0.1:8000/v1"  # vllm serve's
    data = load_config(path, sets=["stages.0.rephrase.vllm.endpoint=http://10.1.2.3:8000/v1",
                                   "stages.0.rephrase.vllm.model=m"])
    (params,) = data["stages"][0].values()
    assert parse(rephrase, params).vllm.endpoint == "http://10.1.2.3:8000/v1"
    assert [i["path"] for i in data["input"]] == ["out/recipes/nemotron_cc/documents/*.arrow",
                                                  "out/recipes/nemotron_cc/low_quality/*.arrow"]
