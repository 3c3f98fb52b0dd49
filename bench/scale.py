"""Scaling bench: end-to-end wall time and peak memory of one job at 1x, 2x, 4x and 8x input.

Input: the real Wikipedia revisions of ../shared/data/wiki_versions (2,504 documents) as JSONL;
the k-th copy of the corpus has every fifth word replaced (seeded), so copies are distinct
documents rather than duplicates that dedup would collapse. The job (heuristics + dedup by
default) runs as users run it, `python -m pipelines run`, on the local multi-process runner;
peak memory is the largest sum of RSS over the whole process tree (driver + Beam workers),
sampled every 0.1 s. Linear cost shows as a flat "s per 1k docs"; bounded memory as a flat peak.

    python bench/scale.py [--scales 1 2 4] [--workers 2] [--config configs/scale.yaml]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from measure import measured  # bench/measure.py

REPO = Path(__file__).resolve().parent.parent
WIKI = REPO.parent / "shared" / "data" / "wiki_versions" / "version_documents"


def write_corpus(path: Path, scale: int) -> int:
    originals = sorted(WIKI.glob("*/*.txt"))
    texts = [p.read_text(encoding="utf-8") for p in originals]
    vocabulary = sorted({w for t in texts[:200] for w in t.split()})
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for copy in range(scale):
            rng = random.Random(copy)
            for source, text in zip(originals, texts):
                words = text.split(" ")
                if copy:
                    for i in range(0, len(words), 5):
                        words[i] = rng.choice(vocabulary)
                out.write(json.dumps({"id": f"{source.parent.name}/{source.stem}/copy{copy}",
                                      "text": " ".join(words), "source": "wikipedia"}) + "\n")
                count += 1
    return count


def run(config: str, corpus: Path, output: Path, workers: int) -> tuple[float, float, dict]:
    wall, peak = measured([sys.executable, "-m", "pipelines", "run", config, "--input",
                           str(corpus), "--output", str(output), f"--direct_num_workers={workers}"])
    with open(output / "stats.json") as f:
        return wall, peak, json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--config", default=str(REPO / "configs" / "scale.yaml"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            corpus = Path(tmp) / f"corpus-{scale}x.jsonl"
            docs = write_corpus(corpus, scale)
            wall, peak, stats = run(args.config, corpus, Path(tmp) / f"out-{scale}", args.workers)
            rows.append((scale, docs, corpus.stat().st_size, wall, peak, stats["kept"]))
            print(f"  {scale}x done: {wall:.1f} s", file=sys.stderr)
    base = rows[0]
    print(f"config {os.path.relpath(args.config, REPO)}, {args.workers} worker process(es)")
    print("marginal = (wall - wall at 1x) per 1k documents added: the per-document cost once "
          "Beam's fixed start-up is taken out; flat means linear")
    print(f"{'scale':>5} {'docs':>7} {'MB':>6} {'kept':>7} {'wall s':>7} {'s/1k docs':>9} "
          f"{'marginal':>8} {'time ratio':>10} {'peak MiB':>9} {'mem ratio':>9}")
    for scale, docs, size, wall, peak, kept in rows:
        marginal = f"{1000 * (wall - base[3]) / (docs - base[1]):>8.2f}" if docs > base[1] else \
            f"{'-':>8}"
        print(f"{scale:>4}x {docs:>7} {size / 1e6:>6.1f} {kept:>7} {wall:>7.1f} "
              f"{1000 * wall / docs:>9.2f} {marginal} {wall / base[3]:>10.2f} "
              f"{peak:>9.0f} {peak / base[4]:>9.2f}")


if __name__ == "__main__":
    main()
