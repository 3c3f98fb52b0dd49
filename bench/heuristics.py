"""Sluice `heuristics: {profile: fineweb}` vs datatrove 0.10.1's FineWeb filter chain, in one run.

    python bench/heuristics.py [--datatrove-python /tmp/dtvenv/bin/python] [--write-fixture]

The reference is datatrove's own code, run in its own venv (CI has none; make it with
`python -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install "datatrove[processing]==0.10.1" spacy`;
its English word tokenizer is spaCy's blank English pipeline, no model download):
GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
FineWebQualityFilter(), all defaults, in that order, each document through `filter()` until one
drops it. Pages: every real page under ../shared/data: the 499 DCLM pages (dclm_quality), the HTTP
responses of the web_samples WARCs (main text by resiliparse, as `sluice` ingests them), the WET
conversion records and the cc_net / dolma Common Crawl documents. Prints keep/drop agreement, the
confusion by rule (datatrove's reason -> Sluice's first failing rule) and CPU throughput of both
on one core (documents per CPU second, the same pages, tokenizer loading excluded for both).
`--write-fixture` writes datatrove's decision per page to
tests/quality/data/datatrove_fineweb_decisions.json (page key -> "kept" or datatrove's reason),
with the page texts' SHA-1 so the test can check it reads the same pages.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.argv[1:2] != ["_datatrove"]:
    sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("SLUICE_SHARED_DATA", REPO.parent / "shared" / "data"))
FIXTURE = REPO / "tests" / "quality" / "data" / "datatrove_fineweb_decisions.json"

# datatrove's drop reasons -> the Sluice `fineweb` profile's rule names
REASONS = {
    "dup_para_frac": "gopher_duplicate_paragraphs", "dup_para_char_frac":
    "gopher_duplicate_paragraph_chars", "dup_line_frac": "gopher_duplicate_lines",
    "dup_line_char_frac": "gopher_duplicate_line_chars", "empty": "empty",
    **{f"top_{n}_gram": f"gopher_top_{n}gram_char_fraction" for n in (2, 3, 4)},
    **{f"duplicated_{n}_n_grams": f"gopher_duplicate_{n}gram_char_fraction" for n in range(5, 11)},
    "gopher_short_doc": "gopher_word_count", "gopher_long_doc": "gopher_word_count",
    "gopher_below_avg_threshold": "gopher_mean_word_length",
    "gopher_above_avg_threshold": "gopher_mean_word_length",
    "gopher_too_many_hashes": "gopher_hash_ratio", "gopher_too_many_ellipsis":
    "gopher_ellipsis_ratio", "gopher_too_many_bullets": "gopher_bullet_lines",
    "gopher_too_many_end_ellipsis": "gopher_ellipsis_lines",
    "gopher_below_alpha_threshold": "gopher_alphabetic_words",
    "gopher_enough_stop_words": "gopher_stop_words", "lorem_ipsum": "c4_lorem_ipsum",
    "curly_bracket": "c4_curly_brace", "too_few_sentences": "c4_sentences",
    "line_punct_ratio": "fineweb_punctuation_lines", "short_line_ratio": "fineweb_short_lines",
    "char_dup_ratio": "fineweb_duplicate_line_chars", "list_ratio": "fineweb_list_ratio",
}


def _wet_records(path: Path) -> list[tuple[str, str]]:
    """Conversion records of a WET file, also one whose CRLFs became LFs (cc_net's sample)."""
    data = path.read_bytes().replace(b"\r\n", b"\n")
    out = []
    for record in re.split(rb"(?m)^WARC/1\.0\n", data)[1:]:
        head, _, body = record.partition(b"\n\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\n") if ": " in line)
        if fields.get("WARC-Type") == "conversion":
            length = int(fields["Content-Length"])
            out.append((fields["WARC-Record-ID"], body[:length].decode("utf-8", "replace")))
    return out


def real_pages() -> dict[str, str]:
    """page key -> text, every real page under ../shared/data (see the module docstring)."""
    from transforms.io.ingest import Failure, read_warc

    pages: dict[str, str] = {}
    with open(SHARED / "dclm_quality" / "majority_data.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            pages[f"dclm_quality/majority_data.jsonl:{i}"] = json.loads(line)["text"]
    web = SHARED / "web_samples"
    for path in sorted(web.rglob("*.warc.gz")):
        for doc in read_warc(str(path)):
            if not isinstance(doc, Failure) and doc["text"].strip():
                pages[f"{path.relative_to(SHARED)}:{doc['id']}"] = doc["text"]
    for path in (web / "cc_whirlwind" / "whirlwind.warc.wet", web / "cc_net" / "tests" / "data" /
                 "sample.warc.txt"):
        for record_id, text in _wet_records(path):
            if text.strip():
                pages[f"{path.relative_to(SHARED)}:{record_id}"] = text
    for path in sorted(web.rglob("*.jsonl")) + sorted(web.rglob("*.json.gz")):
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
            for i, line in enumerate(f):
                text = json.loads(line).get("text") or ""
                if text.strip():
                    pages[f"{path.relative_to(SHARED)}:{i}"] = text
    return pages


def text_digest(pages: dict[str, str]) -> str:
    digest = hashlib.sha1()
    for key in sorted(pages):
        digest.update(key.encode() + b"\0" + pages[key].encode() + b"\0")
    return digest.hexdigest()


def datatrove_decisions(pages_file: str, out_file: str) -> None:
    """Runs inside datatrove's venv: the FineWeb chain's decision per page, and CPU time."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter,
                                            GopherQualityFilter, GopherRepetitionFilter)
    from datatrove.pipeline.filters.base_filter import get_filter_result
    from datatrove.utils.text import split_into_words

    pages = json.load(open(pages_file, encoding="utf-8"))
    chain = [GopherRepetitionFilter(), GopherQualityFilter(),
             C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter()]
    split_into_words("Load the tokenizer. Not timed.")
    decisions = {}
    start = time.process_time()
    for key, text in pages.items():
        doc, decision = Document(text=text, id=key), "kept"
        for step in chain:
            keep, reason = get_filter_result(step.filter(doc))
            if not keep:
                decision = reason
                break
        decisions[key] = decision
    cpu = time.process_time() - start
    json.dump({"decisions": decisions, "cpu_s": cpu}, open(out_file, "w", encoding="utf-8"))


def sluice_decisions(pages: dict[str, str], rounds: int = 1) -> tuple[dict[str, str], float]:
    from transforms.core.config import parse
    from transforms.quality.heuristics import Heuristics, HeuristicsConfig, spacy_english_words

    heuristics = Heuristics(parse(HeuristicsConfig, {"profile": "fineweb"}))
    spacy_english_words("Build the tokenizer. Not timed.")
    best = float("inf")
    for _ in range(rounds):
        _clear_caches()
        start = time.process_time()
        decisions = {}
        for key, text in pages.items():
            failed = heuristics.evaluate(text)[2]
            decisions[key] = failed[0] if failed else "kept"
        best = min(best, time.process_time() - start)
    return decisions, best


def _clear_caches() -> None:
    from transforms.quality.heuristics import _spacy_english
    _spacy_english().cache.clear()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_datatrove":
        datatrove_decisions(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datatrove-python", default="/tmp/dtvenv/bin/python")
    parser.add_argument("--write-fixture", action="store_true")
    args = parser.parse_args()
    pages = real_pages()
    chars = sum(map(len, pages.values()))
    print(f"{len(pages)} real pages, {chars / len(pages):,.0f} characters on average")
    with tempfile.TemporaryDirectory(prefix="sluice-bench-heuristics-") as work:
        pages_file, out_file = Path(work) / "pages.json", Path(work) / "datatrove.json"
        pages_file.write_text(json.dumps(pages), encoding="utf-8")
        subprocess.run([args.datatrove_python, __file__, "_datatrove", str(pages_file),
                        str(out_file)], check=True)
        reference = json.loads(out_file.read_text(encoding="utf-8"))
    dt, dt_cpu = reference["decisions"], reference["cpu_s"]
    ours, our_cpu = sluice_decisions(pages)
    dt_rule = {k: "kept" if v == "kept" else REASONS.get(v, v) for k, v in dt.items()}
    agree = sum((dt_rule[k] == "kept") == (ours[k] == "kept") for k in pages)
    same_rule = sum(dt_rule[k] == ours[k] for k in pages)
    print(f"keep/drop agreement: {agree}/{len(pages)} = {agree / len(pages):.2%} "
          f"(same first rule: {same_rule / len(pages):.2%}); datatrove keeps "
          f"{sum(v == 'kept' for v in dt.values())}, sluice keeps "
          f"{sum(v == 'kept' for v in ours.values())}")
    confusion = collections.Counter((dt_rule[k], ours[k]) for k in pages if dt_rule[k] != ours[k])
    print("confusion by rule (datatrove -> sluice: pages), disagreements only:")
    for (theirs, mine), n in confusion.most_common():
        print(f"  {theirs:36s} -> {mine:36s} {n}")
    print(f"throughput, one core: datatrove {len(pages) / dt_cpu:,.0f} docs/s, sluice "
          f"{len(pages) / our_cpu:,.0f} docs/s, ratio {dt_cpu / our_cpu:.2f}x")
    if args.write_fixture:
        FIXTURE.write_text(json.dumps({
            "note": "datatrove 0.10.1 FineWeb chain (GopherRepetitionFilter, GopherQualityFilter, "
                    "C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter; "
                    "defaults, English: spaCy 3 blank 'en' tokenizer) on the real pages of "
                    "../shared/data, written by `python bench/heuristics.py --write-fixture`; "
                    "value: 'kept' or datatrove's drop reason",
            "pages_sha1": text_digest(pages), "decisions": dict(sorted(dt.items()))},
            indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {FIXTURE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
