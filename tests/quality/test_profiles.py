"""Heuristic profiles: the `fineweb` profile against datatrove 0.10.1's own decisions on the real
pages (a committed fixture made by `python bench/heuristics.py --write-fixture`, so no datatrove
venv is needed), its word tokens against hand-checked spaCy tokens, and the other profiles'
pinned definitions worked out by hand."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from transforms.core.config import ConfigError, parse
from transforms.quality.heuristics import (DatatrovePage, Heuristics, HeuristicsConfig, Page,
                                           dt_duplicate_ngram_char_fraction,
                                           dt_top_ngram_char_fraction, sentencizer_count,
                                           spacy_english_words)

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "data" / "datatrove_fineweb_decisions.json"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_heuristics", REPO / "bench" /
                                                  "heuristics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fineweb_profile_agrees_with_datatrove_on_real_pages(shared_data, monkeypatch):
    monkeypatch.setenv("SLUICE_SHARED_DATA", str(shared_data))
    bench = _bench()
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    pages = bench.real_pages()
    assert set(pages) == set(fixture["decisions"])
    assert bench.text_digest(pages) == fixture["pages_sha1"]
    ours, _ = bench.sluice_decisions(pages)
    theirs = fixture["decisions"]
    agree = sum((theirs[k] == "kept") == (ours[k] == "kept") for k in pages)
    assert agree / len(pages) >= 0.99, agree
    same_rule = sum(bench.REASONS.get(theirs[k], theirs[k]) == ours[k] for k in pages)
    assert same_rule / len(pages) >= 0.99
    assert len(pages) >= 580 and sum(v == "kept" for v in theirs.values()) > 300


def test_spacy_english_words_by_hand():
    # what datatrove 0.10.1 (spaCy 3.8 `spacy.blank("en")`) returns for the same texts
    assert spacy_english_words("Hello, world. I don't think it's (really) 10km... U.S.A. e.g. "
                               "Mr. Smith said: \"well-known\" https://x.com/a-b. Couldn't've "
                               "gonna 5pm dont") == [
        "Hello", ",", "world", ".", "I", "do", "n't", "think", "it", "'s", "(", "really", ")",
        "10", "km", "...", "U.S.A.", "e.g.", "Mr.", "Smith", "said", ":", '"', "well", "-",
        "known", '"', "https://x.com/a-b", ".", "Could", "n't", "'ve", "gon", "na", "5", "pm",
        "do", "nt"]
    assert sentencizer_count(spacy_english_words("One. Two! Three? (Four.) Five...")) == 5


def test_fineweb_profile_definitions_by_hand():
    words = DatatrovePage("aa bb aa bb aa bb cc")
    # top 2-gram "aa bb" x3, space-joined (5 chars), over all 20 characters of the text
    assert dt_top_ngram_char_fraction(words, 2) == pytest.approx(15 / 20)
    # 2-grams scanned left to right: (aa bb) new, (bb aa) new, (aa bb) seen: +4, jump 2,
    # (aa bb) seen: +4, jump 2 -> past the end
    assert dt_duplicate_ngram_char_fraction(words, 2) == pytest.approx(8 / 20)
    heuristics = Heuristics(parse(HeuristicsConfig, {"profile": "fineweb"}))
    text = ("The cat, the dog and the bird sat with a view of the sea. " * 3).strip()
    _, signals, _ = heuristics.evaluate(text)
    # 14 words + ',' + '.' per sentence: alphabetic 14/16, stop words the/and/of/with (distinct)
    assert signals["gopher_alphabetic_words"] == pytest.approx(14 / 16)
    assert signals["gopher_stop_words"] == 4
    assert signals["c4_sentences"] == 3


def test_profile_config_defaults_and_overrides():
    fineweb = Heuristics(parse(HeuristicsConfig, {"profile": "fineweb"}))
    assert [name for name, _ in fineweb.rule_sets] == ["gopher_repetition", "gopher_quality",
                                                       "c4", "fineweb"]
    assert fineweb.bounds["fineweb_duplicate_line_chars"] == (None, 0.01)
    assert fineweb.rewrites  # datatrove's C4 step always rewrites the text
    only = Heuristics(parse(HeuristicsConfig, {
        "profile": "fineweb", "rule_sets": ["fineweb"], "c4_clean_lines": False,
        "thresholds": {"fineweb_duplicate_line_chars": {"max": 0.1}},
        "disable": ["fineweb_list_ratio"]}))
    assert only.rule_names == ["fineweb_punctuation_lines", "fineweb_short_lines",
                               "fineweb_duplicate_line_chars"]
    assert only.bounds["fineweb_duplicate_line_chars"] == (None, 0.1) and not only.rewrites
    with pytest.raises(ConfigError, match="has no rule set 'fineweb'"):
        Heuristics(parse(HeuristicsConfig, {"profile": "gopher", "rule_sets": ["fineweb"]}))
    with pytest.raises(ConfigError, match="unknown rule 'gopher_symbol_word_ratio'"):
        Heuristics(parse(HeuristicsConfig, {"profile": "fineweb",
                                            "disable": ["gopher_symbol_word_ratio"]}))
    with pytest.raises(ConfigError):
        parse(HeuristicsConfig, {"profile": "nope"})


def test_gopher_c4_and_dclm_profiles_by_hand():
    text = "# one ... two # the and\n" + " ".join(["word"] * 60)
    gopher = Heuristics(parse(HeuristicsConfig, {"profile": "gopher"})).evaluate(text)[1]
    words = len(text.split())
    assert gopher["gopher_hash_ratio"] == pytest.approx(2 / words)   # '#' alone
    assert gopher["gopher_ellipsis_ratio"] == pytest.approx(1 / words)
    assert gopher["gopher_stop_words"] == 2                           # the, and: distinct
    dclm = Heuristics(parse(HeuristicsConfig, {"profile": "dclm"})).evaluate(
        "the the x\n" + "a b\n" * 3)[1]
    assert dclm["gopher_stop_words"] == 2                   # occurrences, as DCLM counts them
    assert dclm["gopher_duplicate_lines"] == pytest.approx(3 / 4)  # first occurrence counts
    c4 = Heuristics(parse(HeuristicsConfig, {"profile": "c4"}))
    cleaned, signals, failed = c4.evaluate("Too short.\nThis line has no stop\n"
                                           "One line. Two lines here! Three? Four. Five.")
    assert cleaned == "One line. Two lines here! Three? Four. Five."
    assert signals["c4_sentences"] == 5 and failed == []
    assert isinstance(Page("x"), Page)
