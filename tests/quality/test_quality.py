"""Quality scoring on real text: fastText quality and language ID models trained here, a KenLM
model estimated here, the stages run as real jobs, filter and ensemble buckets on their output."""
from __future__ import annotations

import json
from pathlib import Path

import kenlm
import numpy as np
import pyarrow as pa
import pytest

from classifiers import fasttext_quality, kenlm_model
from classifiers.arpa import build_arpa
from pipelines.cli import main as sluice
from pipelines.job import run_job
from tests.support.models import SMALL, cc_net_sample, web_lines, wiki_lines, write_jsonl
from transforms.core.config import ConfigError
from transforms.io.sink import read_output
from transforms.quality.buckets import ensemble_buckets, weighted_percentiles
from transforms.quality.perplexity import (LineTokenizer, bucket, load_cutoffs, normalize_line,
                                           perplexity)

BEAM = ["--direct_num_workers", "1"]


def job(inputs: list[Path], output: Path, stages: list[dict]) -> dict:
    return run_job({"input": [{"path": str(p)} for p in inputs], "output": str(output),
                    "stages": stages}, BEAM, log=lambda *_: None)


# --- fastText quality classifier ----------------------------------------------------------------

def test_train_and_score_keep_every_field_and_rank_real_labels(quality_model, shared_data,
                                                               tmp_path):
    data = shared_data / "dclm_quality" / "agreement_data.jsonl"
    assert sluice(["quality", "score", str(data), "--model", str(quality_model),
                   "--output", str(tmp_path / "out"), *BEAM]) == 0
    table = read_output(str(tmp_path / "out" / "documents"))
    assert table.num_rows == 281 and "label" in table.column_names  # input fields kept
    scores = np.asarray(table.column("quality_score").to_pylist())
    labels = np.asarray(table.column("label").to_pylist())
    assert np.all((scores >= 0) & (scores <= 1))
    # The agreement pages are in the training set: the classifier must rank them well.
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(labels, scores) > 0.8
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["balanced"] and stats["input"] == 281


def test_batched_score_equals_fasttext_one_text_at_a_time(quality_model, shared_data):
    texts = [json.loads(line)["text"] for line in
             (shared_data / "dclm_quality" / "agreement_data.jsonl").open()][:50]
    classifier = fasttext_quality.Classifier.from_path(str(quality_model))
    batched = classifier.probability(texts, "hq")
    dclm_loop, both_labels = [], []
    for text in texts:
        (top,), (probability,) = classifier.model.predict(text.replace("\n", " "))
        dclm_loop.append(probability if top == "__label__hq" else 1 - probability)
        labels, probs = classifier.model.predict(text.replace("\n", " "), k=2)
        both_labels.append(dict(zip(labels, probs))["__label__hq"])
    np.testing.assert_allclose(batched, dclm_loop, rtol=1e-12)
    # fastText adds 1e-5 inside its log-probabilities, so P(hq) and 1 - P(cc) differ that much.
    np.testing.assert_allclose(batched, both_labels, atol=1e-4)


def test_train_from_positive_and_negative_files(shared_data, tmp_path):
    rows = [json.loads(line) for line in
            (shared_data / "dclm_quality" / "agreement_data.jsonl").open()]
    positive = write_jsonl(tmp_path / "hq.jsonl", [r for r in rows if r["label"] == 1])
    negative = write_jsonl(tmp_path / "cc.jsonl", [r for r in rows if r["label"] == 0])
    out = tmp_path / "model.bin"
    assert sluice(["quality", "train", "--positive", str(positive), "--negative", str(negative),
                   "--output", str(out), *SMALL]) == 0
    assert sorted(fasttext_quality.Classifier.from_path(str(out)).labels) == ["cc", "hq"]


def test_training_without_both_classes_is_an_error(shared_data, tmp_path):
    rows = [json.loads(line) for line in
            (shared_data / "dclm_quality" / "agreement_data.jsonl").open()][:20]
    data = write_jsonl(tmp_path / "one.jsonl", [{**r, "label": 1} for r in rows])
    assert sluice(["quality", "train", "--data", str(data), "--output",
                   str(tmp_path / "m.bin")]) == 2


def test_missing_model_path_fails_before_the_run_with_a_clear_error(shared_data, tmp_path,
                                                                    capsys):
    data = shared_data / "dclm_quality" / "agreement_data.jsonl"
    for command in ("score", "langid", "perplexity"):
        assert sluice(["quality", command, str(data), "--model", str(tmp_path / "nope.bin"),
                       "--output", str(tmp_path / "out")]) == 2
        assert f"not found: '{tmp_path / 'nope.bin'}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_corrupt_model_file_is_refused(shared_data, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"this is not a fastText model")
    with pytest.raises(ValueError):
        fasttext_quality.Classifier.from_path(str(bad))


# --- language ID ----------------------------------------------------------------------------

def test_langid_stage_labels_unseen_real_pages(langid_model, shared_data, tmp_path):
    pages = cc_net_sample(shared_data)
    data = write_jsonl(tmp_path / "pages.jsonl",
                       [{"id": url, "text": text, "url": url} for url, text in pages.items()])
    job([data], tmp_path / "out", [{"langid": {"model": str(langid_model)}}])
    table = read_output(str(tmp_path / "out" / "documents"))
    found = dict(zip(table.column("id").to_pylist(), table.column("language").to_pylist()))
    assert found == {"http://sample_english.com": "en", "http://sample_chinese.zh": "zh",
                     "http://sample_russian.ru": "ru"}
    assert all(0 < s <= 1 for s in table.column("language_score").to_pylist())


def test_filter_keeps_one_language_and_dead_letters_the_rest(langid_model, shared_data,
                                                             tmp_path):
    pages = cc_net_sample(shared_data)
    data = write_jsonl(tmp_path / "pages.jsonl",
                       [{"id": url, "text": text} for url, text in pages.items()])
    stats = job([data], tmp_path / "out", [{"langid": {"model": str(langid_model)}},
                                           {"filter": {"column": "language", "values": ["en"]}}])
    assert stats["dropped"] == {"language_not_allowed": 2} and stats["balanced"]
    dead = read_output(str(tmp_path / "out" / "dead_letter"))
    assert sorted(dead.column("id").to_pylist()) == ["http://sample_chinese.zh",
                                                     "http://sample_russian.ru"]
    payload = json.loads(dead.column("payload")[0].as_py())
    assert payload["language"] in ("zh", "ru")  # the scores travel with the dropped document


# --- filter ---------------------------------------------------------------------------------

def test_filter_rethresholds_scored_output_without_rescoring(quality_model, shared_data,
                                                             tmp_path):
    data = shared_data / "dclm_quality" / "agreement_data.jsonl"
    job([data], tmp_path / "scored", [{"quality": {"model": str(quality_model)}}])
    scored = read_output(str(tmp_path / "scored" / "documents"))
    scores = np.asarray(scored.column("quality_score").to_pylist())
    threshold = float(np.median(scores))
    stats = job([tmp_path / "scored" / "documents" / "*.arrow"], tmp_path / "kept",
                [{"filter": {"column": "quality_score", "min": threshold, "reason": "dclm"}}])
    assert stats["dropped"] == {"dclm": int((scores < threshold).sum())}
    kept = read_output(str(tmp_path / "kept" / "documents"))
    assert min(kept.column("quality_score").to_pylist()) >= threshold


def test_filter_needs_a_bound(tmp_path, shared_data):
    data = shared_data / "dclm_quality" / "agreement_data.jsonl"
    with pytest.raises(ConfigError, match="give min, max or values"):
        job([data], tmp_path / "out", [{"filter": {"column": "quality_score"}}])


# --- KenLM: the project's ARPA estimator and the perplexity stage ------------------------------

def unigram_vocabulary(arpa: Path) -> list[str]:
    words, inside = [], False
    for line in arpa.open(encoding="utf-8"):
        if line.startswith("\\1-grams"):
            inside = True
        elif line.startswith("\\2-grams"):
            break
        elif inside and line.strip():
            words.append(line.rstrip("\n").split("\t")[1])
    return words


def test_arpa_model_loads_in_kenlm_and_every_context_sums_to_one(wiki_lm):
    model = kenlm.Model(str(wiki_lm))
    assert model.order == 4
    vocabulary = [w for w in unigram_vocabulary(wiki_lm) if w != "<s>"]
    for context in ([], ["of", "the"], ["in", "the", "united"], ["<s>", "the"]):
        state = kenlm.State()
        if context[:1] == ["<s>"]:
            model.BeginSentenceWrite(state)
            context = context[1:]
        else:
            model.NullContextWrite(state)
        for word in context:
            nxt = kenlm.State()
            model.BaseScore(state, word, nxt)
            state = nxt
        total = sum(10 ** model.BaseScore(state, w, kenlm.State()) for w in vocabulary)
        assert total == pytest.approx(1.0, abs=1e-4), context


def test_kneser_ney_on_a_hand_checked_corpus(tmp_path):
    """Two sentences, bigram model: the numbers below are worked out by hand."""
    path = tmp_path / "tiny.arpa"
    with path.open("w") as out:
        build_arpa([["a", "b"], ["a", "c"]], out, order=2)
    model = kenlm.Model(str(path))
    # Unigram continuation counts: a 1 (after <s>), b 1, c 1, </s> 2 (after b, c), total 5;
    # too few counts to estimate discounts, so lmplz's fallback D1 0.5, D2 1.0: the discounted
    # mass 3 * 0.5 + 1.0 = 2.5 gives gamma = 0.5, spread over 5 words (all but <s>).
    # p(b) = (1 - 0.5)/5 + 0.5/5 = 0.2
    state, out_state = kenlm.State(), kenlm.State()
    model.NullContextWrite(state)
    assert 10 ** model.BaseScore(state, "b", out_state) == pytest.approx(0.2, abs=1e-5)
    # Bigrams "a b", "a c" once each: p(b | a) = (1 - 0.5)/2 + gamma(a) p(b),
    # gamma(a) = 2 * 0.5 / 2 = 0.5, so 0.25 + 0.5 * 0.2 = 0.35.
    model.BeginSentenceWrite(state)
    model.BaseScore(state, "a", out_state)
    after_a = kenlm.State()
    assert 10 ** model.BaseScore(out_state, "b", after_a) == pytest.approx(0.35, abs=1e-5)


def test_ccnet_normalisation():
    assert normalize_line("  Élan “42” km—Ünïcode…\x07 ") == 'elan "00" km - unicode...'
    assert normalize_line("\t") == ""


def test_cutoffs_match_the_published_english_values_and_real_cc_net_buckets(shared_data):
    cutoffs = load_cutoffs()
    assert cutoffs["en"] == (340.0, 520.0)
    assert bucket(float("nan"), cutoffs["en"]) == "all" and bucket(600, None) == "all"
    # Real cc_net output documents carry the perplexity and bucket cc_net gave them.
    folder = shared_data / "web_samples" / "dolma" / "tests" / "data" / "multiple_files"
    documents = [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in
                 path.open()]
    assert len(documents) == 20
    for document in documents:
        meta = document["metadata"]
        assert bucket(meta["perplexity"], cutoffs[meta["language"]]) == meta["bucket"]


def test_perplexity_stage_matches_kenlm_and_ranks_wikipedia_below_spam(wiki_lm, shared_data,
                                                                      tmp_path):
    shared = shared_data
    held_out = "\n".join(wiki_lines(shared, 260)[-40:])          # articles not in the LM
    spam = "\n".join(web_lines(shared, "044545.com"))            # Chinese gambling page
    boilerplate = "Login\nRegister\nHome\nContact us\nCopyright 2020 All rights reserved"
    data = write_jsonl(tmp_path / "docs.jsonl", [
        {"id": "wiki", "text": held_out}, {"id": "spam", "text": spam},
        {"id": "menu", "text": boilerplate}, {"id": "blank", "text": "\x07\n\x08"}])
    stats = job([data], tmp_path / "out", [{"perplexity": {"model": str(wiki_lm)}}])
    assert stats["balanced"]
    table = read_output(str(tmp_path / "out" / "documents"))
    ppl = dict(zip(table.column("id").to_pylist(), table.column("perplexity").to_pylist()))
    buckets = dict(zip(table.column("id").to_pylist(),
                       table.column("perplexity_bucket").to_pylist()))
    assert ppl["wiki"] < ppl["menu"] < ppl["spam"]
    # The stage's number is CCNet's formula over KenLM's own per-line scores.
    model = kenlm.Model(str(wiki_lm))
    lines = LineTokenizer().lines(held_out)
    expected = 10 ** (-sum(model.score(line) for line in lines)
                      / sum(len(line.split()) + 1 for line in lines))
    assert ppl["wiki"] == pytest.approx(expected, rel=1e-9)
    assert buckets["spam"] == "tail"
    assert (ppl["blank"], buckets["blank"]) == (None, "all")  # nothing left to score


def test_perplexity_with_a_sentencepiece_model(shared_data, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    lines = wiki_lines(shared_data, 60)
    tokenizer = LineTokenizer()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(line for text in lines for line in tokenizer.lines(text)),
                      encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=800, model_type="unigram", minloglevel=2)
    pieces = LineTokenizer(str(tmp_path / "sp.model"))
    sentences = [line.split() for text in lines for line in pieces.lines(text)]
    kenlm_model.build(sentences, str(tmp_path / "sp.arpa"), order=3)
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "w", "text": "\n".join(lines[:20])}])
    job([data], tmp_path / "out", [{"perplexity": {"model": str(tmp_path / "sp.arpa"),
                                                   "sentencepiece": str(tmp_path / "sp.model")}}])
    value = read_output(str(tmp_path / "out" / "documents")).column("perplexity")[0].as_py()
    model = kenlm.Model(str(tmp_path / "sp.arpa"))
    scored = pieces.lines("\n".join(lines[:20]))
    assert value == pytest.approx(perplexity(
        np.array([model.score(s) for s in scored]), scored), rel=1e-9)
    assert "▁" in scored[0]  # scored on pieces, not words


# --- Nemotron-CC ensemble buckets --------------------------------------------------------------

def test_weighted_percentiles_weigh_by_length():
    values = np.array([0.1, 0.2, 0.9])
    weights = np.array([1.0, 1.0, 8.0])
    assert weighted_percentiles(values, weights, [5, 10, 20, 50, 95]) == [0.1, 0.1, 0.2, 0.9, 0.9]
    buckets = ensemble_buckets({"a": np.array([0.05, 0.5, np.nan]),
                                "b": np.array([0.9, 0.1, np.nan])},
                               {"a": [0.1, 0.2, 0.3], "b": [0.5, 0.95, 0.99]})
    assert buckets.tolist() == [1, 3, -1]


def test_buckets_compute_save_reuse_and_route(quality_model, shared_data,
                                              tmp_path):
    data = shared_data / "dclm_quality" / "majority_data.jsonl"
    table_path = tmp_path / "percentiles.json"
    scoring = [{"quality": {"model": str(quality_model)}},
               {"heuristics": {"drop": False, "columns": True, "c4_clean_lines": False,
                               "rule_sets": ["gopher_quality"]}}]
    ensemble = {"buckets": {"columns": ["quality_score", "gopher_stop_words"],
                            "table": str(table_path), "low_output": "low_quality"}}
    stats = job([data], tmp_path / "first", [*scoring, ensemble])
    assert stats["balanced"] and stats["kept"] == 499
    table = json.loads(table_path.read_text())
    assert table["documents"] == 499 and len(table["thresholds"]["quality_score"]) == 19
    high = read_output(str(tmp_path / "first" / "documents"))
    low = read_output(str(tmp_path / "first" / "low_quality"))
    assert high.num_rows + low.num_rows == 499 and high.num_rows and low.num_rows
    assert min(high.column("quality_bucket").to_pylist()) >= 12
    assert max(low.column("quality_bucket").to_pylist()) <= 11
    assert set(high.column("quality_tier").to_pylist()) == {"high"}
    # Bucket = max over classifiers of each score's percentile interval.
    rows = pa.concat_tables([high, low]).to_pylist()
    thresholds = table["thresholds"]
    for row in rows[:50]:
        assert row["quality_bucket"] == max(
            int(np.digitize(row[c], thresholds[c])) for c in thresholds)
    # A second run on a small subset reuses the saved table (its thresholds, not the subset's).
    subset = write_jsonl(tmp_path / "subset.jsonl",
                         [json.loads(line) for line in data.open()][:25])
    table_path.chmod(0o444)
    job([subset], tmp_path / "second", [*scoring, {"buckets": {
        "columns": ["quality_score", "gopher_stop_words"], "table": str(table_path)}}])
    again = {r["id"]: r["quality_bucket"] for r in
             read_output(str(tmp_path / "second" / "documents")).to_pylist()}
    first = {r["id"]: r["quality_bucket"] for r in rows}
    assert again and all(first[i] == b for i, b in again.items())
    assert json.loads(table_path.read_text()) == table
