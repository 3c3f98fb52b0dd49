"""Models built here from the real sample data for the tests that need them: a fastText
quality classifier (DCLM recipe), a fastText language-ID model, a KenLM model of Wikipedia text.
Nothing is downloaded. The fixtures are module-scoped and imported by tests/conftest.py."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from classifiers import fasttext_quality, kenlm_model
from pipelines.cli import main as sluice
from tests.support import SHARED_DATA
from transforms.io.ingest import Failure, read_warc
from transforms.quality.perplexity import LineTokenizer

SMALL = ["--bucket", "200000"]  # 80 MB models instead of fastText's default 800 MB


def wiki_lines(shared: Path, articles: int) -> list[str]:
    """Lines of the oldest revision of the first `articles` Wikipedia articles."""
    folders = sorted((shared / "wiki_versions" / "version_documents").iterdir())[:articles]
    return [line.strip() for folder in folders
            for line in (folder / "0.txt").read_text(encoding="utf-8").splitlines()
            if len(line.split()) >= 4]


def shared_data_dir() -> Path:
    """The real data for module-scoped fixtures (the `shared_data` fixture is per test)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory) -> Path:
    shared = shared_data_dir()
    out = tmp_path_factory.mktemp("quality") / "dclm.bin"
    assert sluice(["quality", "train", "--data",
                   str(shared / "dclm_quality" / "majority_data.jsonl"), "--output",
                   str(out), *SMALL]) == 0
    return out


def web_lines(shared: Path, domain_suffix: str) -> list[str]:
    """Lines of the real pages from one country domain in the resiliparse WARC excerpt."""
    path = shared / "web_samples" / "resiliparse" / "tests" / "data" / "warcfile.warc.gz"
    return [line.strip() for r in read_warc(str(path))
            if not isinstance(r, Failure) and domain_suffix in r["url"]
            for line in r["text"].splitlines() if len(line.strip()) >= 4]


def cc_net_sample(shared: Path) -> dict[str, str]:
    """url -> text of cc_net's test WET sample (the same quotes in English, Chinese, Russian)."""
    raw = (shared / "web_samples" / "cc_net" / "tests" / "data" / "sample.warc.txt").read_text(
        encoding="utf-8")
    pages = {}
    for record in raw.split("WARC/1.0\n")[1:]:
        headers, _, body = record.partition("\n\n")
        url = re.search(r"WARC-Target-URI: (\S+)", headers)
        if url:
            pages[url.group(1)] = body.strip()
    return pages


@pytest.fixture(scope="module")
def langid_model(tmp_path_factory) -> Path:
    shared = shared_data_dir()
    examples = ([(line, "en") for line in wiki_lines(shared, 40)]
                + [(line, "zh") for line in web_lines(shared, ".cn/")]
                + [(line, "ru") for line in web_lines(shared, ".ru/")])
    out = tmp_path_factory.mktemp("langid") / "lid.bin"
    texts, labels = zip(*examples)
    fasttext_quality.train(texts, labels, str(out), minn=1, maxn=3, wordNgrams=1, epoch=25,
                           lr=0.5, dim=16)
    return out


@pytest.fixture(scope="module")
def wiki_lm(tmp_path_factory) -> Path:
    shared = shared_data_dir()
    tokenizer = LineTokenizer()
    out = tmp_path_factory.mktemp("lm") / "wiki.arpa"
    sentences = [line.split() for text in wiki_lines(shared, 200)
                 for line in tokenizer.lines(text)]
    kenlm_model.build(sentences, str(out), order=4)
    return out
