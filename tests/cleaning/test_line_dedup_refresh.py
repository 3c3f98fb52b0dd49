"""`line_dedup` in a scheduled refresh: lines already in the committed corpus count as seen, so a
new version loses the boilerplate the corpus already holds, and keeps its own new lines."""
from __future__ import annotations

import json

import pyarrow as pa

from pipelines.corpus import Corpus
from pipelines.refresh import LINE_INDEX, refresh
from tests.support.models import wiki_lines
from transforms.cleaning.line_dedup import normalised
from transforms.io.sink import read_output

BOILERPLATE = "Subscribe to our newsletter for the latest updates from the editorial team"


def snapshot(path, prefix: str, lines: list[str]) -> str:
    """Real Wikipedia lines, 8 a page, each page with the same boilerplate line."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(6):
            text = "\n".join([*lines[i * 8:(i + 1) * 8], BOILERPLATE])
            f.write(json.dumps({"id": f"{prefix}-{i}", "text": text}) + "\n")
    return str(path)


def test_second_version_drops_lines_the_corpus_holds(shared_data, tmp_path):
    lines = list(dict.fromkeys(wiki_lines(shared_data, 40)))
    config = tmp_path / "refresh.yaml"
    config.write_text(json.dumps({"input": [], "output": "unused", "stages": [
        {"line_dedup": {}}, {"dedup": {"threshold": 0.8}}]}))
    corpus = str(tmp_path / "corpus")
    quiet = dict(beam_args=["--direct_num_workers=1"], log=lambda *_: None)
    first = refresh(corpus, str(config), [snapshot(tmp_path / "a.jsonl", "first", lines[:48])],
                    **quiet)
    second = refresh(corpus, str(config), [snapshot(tmp_path / "b.jsonl", "second", lines[48:96])],
                     **quiet)
    store = Corpus(corpus)
    texts = {v.version: [r["text"] for r in read_output(
        f"{store.version_dir(v)}/documents").to_pylist()] for v in (first, second)}
    # version 1 keeps the boilerplate once (its first page); version 2 never: the index has it
    assert sum(BOILERPLATE in t for t in texts[1]) == 1
    assert sum(BOILERPLATE in t for t in texts[2]) == 0 and len(texts[2]) == 6
    # the same snapshot as a first version elsewhere keeps the boilerplate once: the index did it
    alone = refresh(str(tmp_path / "alone"), str(config),
                    [snapshot(tmp_path / "c.jsonl", "second", lines[48:96])], **quiet)
    control = [r["text"] for r in read_output(
        f"{Corpus(str(tmp_path / 'alone')).version_dir(alone)}/documents").to_pylist()]
    assert sum(BOILERPLATE in t for t in control) == 1
    # what the index removed beyond that are exactly the lines version 1 had (normalised as
    # CCNet does: case, digits to 0, punctuation; so "33.66 births" is "22.10 births")
    kept = {line for text in texts[2] for line in text.split("\n")}
    alone_kept = {line for text in control for line in text.split("\n")}
    removed = sorted(alone_kept - kept)
    seen = set(normalised(pa.array(lines[:48] + [BOILERPLATE])).to_pylist())
    assert kept <= alone_kept and BOILERPLATE in removed
    assert all(key in seen for key in normalised(pa.array(removed)).to_pylist())
    assert len(kept) >= 30
    assert (tmp_path / "corpus" / LINE_INDEX).is_dir()
