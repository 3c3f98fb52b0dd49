"""Heuristic rules: each signal on texts whose value is worked out by hand, then the stage on the
real DCLM pages (per-rule drop counters, dead-letter reasons, annotate-only columns)."""
from __future__ import annotations

import json

import pytest

from pipelines.job import run_job
from transforms.core.config import ConfigError, parse
from transforms.io.sink import read_output
from transforms.quality.heuristics import (ALL_RULES, Heuristics, HeuristicsConfig, Page,
                                           alphabetic_word_fraction, bullet_line_fraction,
                                           c4_clean_lines, duplicate_line_char_fraction,
                                           duplicate_line_fraction, duplicate_ngram_char_fraction,
                                           duplicate_paragraph_fraction, ellipsis_line_fraction,
                                           mean_word_length, punctuation_line_fraction,
                                           sentence_count, short_line_fraction, stop_word_count,
                                           symbol_word_ratio, top_ngram_char_fraction)

BEAM = ["--direct_num_workers", "1"]


def test_gopher_quality_signals():
    page = Page("The cat sat.\n• one #tag\n• two...\nand that is all")
    assert page.words == ["The", "cat", "sat.", "•", "one", "#tag", "•", "two...", "and",
                          "that", "is", "all"]
    assert mean_word_length(page) == pytest.approx(sum(map(len, page.words)) / 12)
    assert symbol_word_ratio(page) == pytest.approx(2 / 12)          # one '#', one '...'
    assert bullet_line_fraction(page) == pytest.approx(2 / 4)
    assert ellipsis_line_fraction(page) == pytest.approx(1 / 4)
    assert alphabetic_word_fraction(page) == pytest.approx(10 / 12)  # the two bullets
    assert stop_word_count(page) == 3                                # The, and, that


def test_repetition_signals_by_hand():
    text = "a b c\nx y\na b c\n\nz\n\nz"
    page = Page(text)
    assert duplicate_line_fraction(page) == pytest.approx(2 / 5)     # "a b c" and "z" again
    assert duplicate_line_char_fraction(page) == pytest.approx(6 / 15)
    assert duplicate_paragraph_fraction(page) == pytest.approx(1 / 3)
    words = Page("aa bb aa bb aa bb cc")
    # most frequent 2-gram "aa bb" x3: 3 * 4 chars / 14 word chars
    assert top_ngram_char_fraction(words, 2) == pytest.approx(12 / 14)
    # 5-grams: (aa bb aa bb aa), (bb aa bb aa bb), (aa bb aa bb cc): none repeats
    assert duplicate_ngram_char_fraction(words, 5) == 0.0
    # 3-grams "aa bb aa" x2 and "bb aa bb" x2 cover words 0..5 (not "cc"): 12 / 14
    assert duplicate_ngram_char_fraction(words, 3) == pytest.approx(12 / 14)
    assert top_ngram_char_fraction(Page("one two"), 3) == 0.0


def test_c4_line_cleaning_and_page_rules():
    text = "\n".join([
        "This line has enough words and ends well.",
        "Too short.",
        "Please enable JavaScript to view this page properly.",
        "Read our privacy policy before you continue here.",
        "Cited facts stay after the marker goes[1].",
        "No terminal punctuation here at all",
        "It ends with an ellipsis so it goes...",
        "A question is fine too, is it not?",
    ])
    assert c4_clean_lines(text).split("\n") == [
        "This line has enough words and ends well.", "Cited facts stay after the marker goes.",
        "A question is fine too, is it not?"]
    assert sentence_count(Page("One. Two! Three? Four.\nFive.")) == 5


def test_fineweb_signals():
    page = Page("short\nanother short one\nThis line is long enough and it ends with a stop.")
    assert punctuation_line_fraction(page) == pytest.approx(1 / 3)
    assert short_line_fraction(page) == pytest.approx(2 / 3)


def long_text() -> str:
    return "\n".join([
        "The river rises in the northern hills and flows south for about two hundred miles.",
        "Fishermen have worked its lower reaches with small wooden boats for many centuries.",
        "In the spring the water runs high, and the old stone bridges are often closed.",
        "Most of the towns along the banks grew up around mills that were built to grind grain.",
        "Today visitors come to walk the towpath, to watch birds and to eat in quiet inns.",
        "A museum near the estuary tells the story of the trade that once made the port rich.",
    ])


def test_a_clean_page_passes_every_rule_set():
    text, signals, failed = Heuristics(HeuristicsConfig()).evaluate(long_text())
    assert failed == [] and text == long_text()
    assert set(signals) == set(ALL_RULES)


def test_thresholds_override_and_disable_by_rule_name():
    text = long_text()
    strict = Heuristics(parse(HeuristicsConfig, {"thresholds": {"gopher_word_count":
                                                                {"min": 1000}}}))
    assert strict.evaluate(text)[2] == ["gopher_word_count"]
    off = Heuristics(parse(HeuristicsConfig, {"thresholds": {"gopher_word_count": {"min": 1000}},
                                              "disable": ["gopher_word_count"]}))
    assert off.evaluate(text)[2] == []
    with pytest.raises(ConfigError, match="unknown rule 'gopher_wordcount'"):
        Heuristics(HeuristicsConfig(disable=["gopher_wordcount"]))


def test_bad_words_list_drops_pages(tmp_path):
    words = tmp_path / "bad.txt"
    words.write_text("fishermen\nstone bridges\n", encoding="utf-8")
    heuristics = Heuristics(HeuristicsConfig(c4_bad_words=str(words)))
    assert heuristics.evaluate(long_text())[2] == ["c4_bad_words"]
    assert heuristics.evaluate(long_text().replace("Fishermen", "Sailors"))[2] == [
        "c4_bad_words"]  # the phrase "stone bridges" is still there
    assert heuristics.evaluate(long_text().replace("Fishermen", "Sailors").replace(
        "stone bridges", "bridges"))[2] == []


def test_stage_on_real_pages_counts_each_drop_once_under_its_first_rule(shared_data, tmp_path):
    data = shared_data / "dclm_quality" / "majority_data.jsonl"
    texts = [json.loads(line)["text"] for line in data.open()]
    heuristics = Heuristics(HeuristicsConfig())
    expected: dict[str, int] = {}
    for text in texts:
        failed = heuristics.evaluate(text)[2]
        if failed:
            expected[failed[0]] = expected.get(failed[0], 0) + 1
    stats = run_job({"input": [{"path": str(data)}], "output": str(tmp_path / "out"),
                     "stages": [{"heuristics": {}}]}, BEAM, log=lambda *_: None)
    assert stats["dropped"] == dict(sorted(expected.items()))
    assert stats["balanced"] and stats["kept"] == len(texts) - sum(expected.values())
    assert len(expected) >= 5  # real pages fail many different rules
    dead = read_output(str(tmp_path / "out" / "dead_letter")).to_pylist()
    assert all(row["stage"] == "heuristics" and row["kind"] == "dropped" for row in dead)
    assert all(row["detail"].startswith(row["reason"] + "=") for row in dead)
    kept = read_output(str(tmp_path / "out" / "documents"))
    assert all("\n" not in t or all(line.rstrip().endswith((".", "!", "?", '"'))
                                    for line in t.split("\n"))
               for t in kept.column("text").to_pylist())  # C4 kept only terminated lines


def test_annotate_only_keeps_every_page_with_one_column_per_rule(shared_data, tmp_path):
    data = shared_data / "dclm_quality" / "agreement_data.jsonl"
    stats = run_job({"input": [{"path": str(data)}], "output": str(tmp_path / "out"),
                     "stages": [{"heuristics": {"drop": False, "columns": True,
                                                "c4_clean_lines": False,
                                                "rule_sets": ["gopher_quality", "fineweb"]}}]},
                    BEAM, log=lambda *_: None)
    assert stats["kept"] == 281 and stats["dropped"] == {}
    table = read_output(str(tmp_path / "out" / "documents"))
    first = table.slice(0, 1).to_pylist()[0]
    signals = Heuristics(HeuristicsConfig(rule_sets=["gopher_quality", "fineweb"])).evaluate(
        first["text"])[1]
    assert {k: first[k] for k in signals} == pytest.approx(signals)
    assert "gopher_duplicate_lines" not in table.column_names
