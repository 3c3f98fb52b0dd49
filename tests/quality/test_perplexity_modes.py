"""Perplexity: cc_net's document-as-one-line mode, cutoffs from the model's own scores (saved
and reused), and the warning when cc_net's cutoffs meet a model that is not cc_net's. Real data:
an LM estimated here from the bundled Wikipedia revisions, the bundled cc_net documents (which
carry cc_net's own perplexity and bucket) and Common Crawl documents."""
from __future__ import annotations

import json
from pathlib import Path

import kenlm
import pytest

from classifiers import kenlm_model
from pipelines.job import run_job
from tests.support import REPO
from transforms.core.config import ConfigError, parse
from transforms.io.sink import read_output
from transforms.quality.classifier import read_records
from transforms.quality.perplexity import (LineTokenizer, PerplexityConfig,
                                           cc_net_cutoffs_warning, is_cc_net_model,
                                           normalize_line)

BEAM = ["--direct_num_workers", "1"]
DEMO = REPO / "data" / "demo"
CC_NET_DOCS = sorted(DEMO.glob("cc_net_en_head-*.jsonl"))
WEB_DOCS = [*CC_NET_DOCS, DEMO / "common_crawl_documents.jsonl.gz"]


def job(inputs: list[Path], output: Path, stages: list[dict]) -> dict:
    return run_job({"input": [{"path": str(p)} for p in inputs], "output": str(output),
                    "stages": stages}, BEAM, log=lambda *_: None)


@pytest.fixture(scope="module")
def demo_lm(tmp_path_factory) -> Path:
    """A 3-gram LM of the bundled Wikipedia revisions (the demo corpus's own text)."""
    tokenizer = LineTokenizer()
    sentences = [line.split()
                 for record in read_records([str(DEMO / "wikipedia_revisions.jsonl.zst")])
                 for line in tokenizer.lines(record["text"])]
    out = tmp_path_factory.mktemp("lm") / "wiki.arpa"
    kenlm_model.build(sentences, str(out), order=3)
    return out


def by_id(output: Path, column: str) -> dict:
    table = read_output(str(output / "documents"))
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist()))


def test_cc_net_mode_glues_the_lines_into_one_normalised_line():
    # cc_net normalises the whole document; deleting control characters deletes the newlines.
    assert LineTokenizer().document("Hello World\nSecond 42 line\n") == [
        "hello worldsecond 00 line"]
    assert LineTokenizer().document("Hello World\nSecond 42 line") == [
        normalize_line("Hello World\nSecond 42 line")]
    assert LineTokenizer().lines("Hello World\nSecond 42 line") == [
        "hello world", "second 00 line"]
    assert LineTokenizer().document("\n\x07\n") == []


def test_cc_net_mode_scores_each_real_document_as_one_kenlm_sentence(demo_lm, tmp_path):
    stats = job(CC_NET_DOCS, tmp_path / "out",
                [{"perplexity": {"model": str(demo_lm), "mode": "cc_net"}}])
    assert stats["balanced"] and stats["kept"] == 20
    ppl = by_id(tmp_path / "out", "perplexity")
    model = kenlm.Model(str(demo_lm))
    for record in (json.loads(line) for path in CC_NET_DOCS for line in path.open()):
        line = normalize_line(record["text"])
        # cc_net's DocLM: 10 ** (-score / (words + 1)) of the one line, <s> and </s> around it
        expected = 10 ** (-model.score(line) / (len(line.split()) + 1))
        assert ppl[record["id"]] == pytest.approx(expected, rel=1e-9)


def test_own_cutoffs_are_computed_saved_and_reused(demo_lm, tmp_path):
    table_path = tmp_path / "cutoffs.json"
    stage = {"perplexity": {"model": str(demo_lm), "table": str(table_path)}}
    stats = job(WEB_DOCS, tmp_path / "a", [stage])
    assert stats["balanced"] and stats["kept"] == 30
    table = json.loads(table_path.read_text())
    assert table["model"] == "wiki.arpa" and table["mode"] == "lines" and table["documents"] == 30
    head, tail = table["percentiles"]["30"], table["percentiles"]["60"]
    ppl, buckets = by_id(tmp_path / "a", "perplexity"), by_id(tmp_path / "a", "perplexity_bucket")
    for doc, value in ppl.items():
        assert buckets[doc] == ("head" if value < head else "middle" if value < tail else "tail")
    counts = {b: list(buckets.values()).count(b) for b in ("head", "middle", "tail")}
    # 30 documents: the 30th percentile is the 9th smallest value, the 60th the 18th
    assert counts == {"head": 8, "middle": 9, "tail": 13}
    # A second run reuses the saved table (edited here so that every document is head) ...
    table["percentiles"].update({"30": 1e12, "60": 2e12})
    table_path.write_text(json.dumps(table))
    job(WEB_DOCS, tmp_path / "b", [stage])
    assert set(by_id(tmp_path / "b", "perplexity_bucket").values()) == {"head"}
    # ... unless told to recompute it.
    job(WEB_DOCS, tmp_path / "c", [{"perplexity": {**stage["perplexity"], "recompute": True}}])
    assert by_id(tmp_path / "c", "perplexity_bucket") == buckets
    assert json.loads(table_path.read_text())["percentiles"]["30"] == head


def test_a_table_without_the_configured_percentiles_is_refused(demo_lm, tmp_path):
    table_path = tmp_path / "cutoffs.json"
    table_path.write_text(json.dumps({"percentiles": {"50": 100.0}}))
    with pytest.raises(ConfigError, match="no percentile 30 or 60"):
        job(WEB_DOCS, tmp_path / "out",
            [{"perplexity": {"model": str(demo_lm), "table": str(table_path)}}])


def config(**values) -> PerplexityConfig:
    return parse(PerplexityConfig, {"model": "models/wiki.arpa", **values})


def test_which_models_count_as_cc_nets():
    assert not is_cc_net_model(config())
    assert is_cc_net_model(config(model="lm/en.arpa.bin", sentencepiece="lm/en.sp.model"))
    assert not is_cc_net_model(config(model="lm/en.arpa.bin"))          # no SentencePiece
    assert not is_cc_net_model(config(model="lm/de.arpa.bin", sentencepiece="lm/de.sp.model"))
    assert is_cc_net_model(config(cc_net_model=True))
    cc_net = dict(model="lm/en.arpa.bin", sentencepiece="lm/en.sp.model")
    assert cc_net_cutoffs_warning(config(**cc_net, mode="cc_net")) is None
    assert "mode is 'lines'" in cc_net_cutoffs_warning(config(**cc_net))
    assert cc_net_cutoffs_warning(config(table="t.json")) is None      # own cutoffs
    assert cc_net_cutoffs_warning(config(cutoffs="my.csv")) is None    # the user's own table


def test_cc_nets_cutoffs_on_another_model_warn_once_in_one_line(demo_lm, tmp_path, capsys):
    job(CC_NET_DOCS, tmp_path / "out", [{"perplexity": {"model": str(demo_lm)}}])
    lines = [line for line in capsys.readouterr().err.splitlines() if "cc_net's cutoffs" in line]
    assert len(lines) == 1
    assert "sluice: warning:" in lines[0] and "'wiki.arpa' is not one of cc_net's" in lines[0]
    job(CC_NET_DOCS, tmp_path / "declared",
        [{"perplexity": {"model": str(demo_lm), "cc_net_model": True, "mode": "cc_net"}}])
    job(CC_NET_DOCS, tmp_path / "own", [{"perplexity": {"model": str(demo_lm),
                                                        "table": str(tmp_path / "t.json")}}])
    assert "cc_net's cutoffs" not in capsys.readouterr().err
