"""Sluice dedup vs HF datatrove's MinHash pipeline on the same real corpus, in one run.

    python bench/dedup.py [--scales 1 2 4] [--workers 2]

Corpus at scale 1: every Wikipedia revision of ../shared/data/wiki_versions (2,504 documents,
real near-duplicates across the whole Jaccard range) plus web-like perturbed copies of half of
them (boilerplate lines, word deletions/substitutions/repeats). Scale k adds k-1 perturbed
replicas of that whole corpus (k times the documents and bytes). Both systems read the same JSONL files with the same number of workers:
Sluice through `sluice dedup` on Beam's local FnApiRunner (as users run it), datatrove with its
default 14x8 MinHash config, word 5-grams, and a `\\w+` word tokenizer (like for like; its
default needs spaCy). Prints, per scale, wall time and peak memory (sum of the RSS of the
process tree, sampled every 0.1 s) and their ratios; at scale 1, pair recall at Jaccard >= 0.8
and the share of same-cluster pairs with Jaccard >= 0.5, against exact all-pairs Jaccard; and
signature throughput (MB/s on one core) beside rensa's native MinHash. Timings from other
engineers' jobs on the same cores are noise: compare the ratios, measured in the same run.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from measure import measured  # noqa: E402  (bench/measure.py)

from transforms.dedup import eval as dedup_eval  # noqa: E402
from transforms.dedup.minhash import MinHasher, Shingling  # noqa: E402
from transforms.io.sink import read_output  # noqa: E402

SHARED = Path(os.environ.get("SLUICE_SHARED_DATA", REPO.parent / "shared" / "data"))
FILES = 4


def build_corpus(scale: int) -> list[dict]:
    docs = dedup_eval.wiki_documents(SHARED / "wiki_versions")
    base = docs + dedup_eval.perturbed_copies(docs, np.random.default_rng(0), fraction=0.5)
    corpus = list(base)
    for k in range(1, scale):
        corpus += dedup_eval.perturbed_copies(base, np.random.default_rng(k), fraction=1.0,
                                              tag=f"replica{k}")
    return corpus


def write_corpus(corpus: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True)
    for part in range(FILES):
        with open(folder / f"part-{part}.jsonl", "w", encoding="utf-8") as f:
            for doc in corpus[part::FILES]:
                f.write(json.dumps(doc) + "\n")


def run_sluice(corpus: Path, out: Path, workers: int) -> tuple[float, float, dict]:
    wall, peak = measured([sys.executable, "-m", "pipelines", "dedup", str(corpus / "*.jsonl"),
                           "--output", str(out), f"--direct_num_workers={workers}"])
    clusters = read_output(str(out / "clusters"))
    return wall, peak, dict(zip(clusters.column("id").to_pylist(),
                                clusters.column("cluster_id").to_pylist()))


def run_datatrove(corpus: Path, out: Path, workers: int) -> tuple[float, float, dict]:
    # datatrove_side.py imports no Sluice, Beam or pyarrow: datatrove's memory is its own
    wall, peak = measured([sys.executable, str(Path(__file__).with_name("datatrove_side.py")),
                           str(corpus), str(out), str(workers)])
    cluster_of = {}
    for folder in ("kept", "removed"):
        for path in (out / folder).glob("*.jsonl*"):
            with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
                for line in f:
                    doc = json.loads(line)
                    cluster = doc.get("metadata", {}).get("minhash_cluster_id", -1)
                    if cluster != -1:
                        cluster_of[doc["id"]] = cluster
    return wall, peak, cluster_of


def quality(corpus: list[dict], cluster_of: dict, pairs) -> dict:
    labels = np.unique([str(cluster_of.get(d["id"], "doc:" + d["id"])) for d in corpus],
                       return_inverse=True)[1]
    return dedup_eval.cluster_metrics(labels, *pairs)


def signature_throughput(corpus: list[dict]) -> tuple[float, float]:
    """MB/s on one core: Sluice's text -> signature path (batches of 1,000) and rensa's
    RMinHash fed the same 5-gram strings (tokenising and joining not timed for rensa)."""
    import rensa

    texts = [d["text"] for d in corpus]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    shingling, hasher = Shingling(5), MinHasher(128)
    start = time.process_time()
    for lo in range(0, len(texts), 1000):
        hashes, offsets = shingling.shingle_hashes(shingling.tokens(pa.array(texts[lo:lo + 1000])))
        hasher.signatures(hashes, offsets)
    sluice = megabytes / (time.process_time() - start)
    shingles = [sorted(dedup_eval.word_shingles(t)) for t in texts]
    start = time.process_time()
    for doc_shingles in shingles:
        rensa.RMinHash(num_perm=128, seed=1).update(doc_shingles)
    return sluice, megabytes / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-dedup-"))
    try:
        for scale in args.scales:
            corpus = build_corpus(scale)
            folder = work / f"corpus{scale}"
            write_corpus(corpus, folder)
            megabytes = sum(len(d["text"].encode()) for d in corpus) / 1e6
            s_wall, s_peak, s_clusters = run_sluice(folder, work / f"sluice{scale}", args.workers)
            d_wall, d_peak, d_clusters = run_datatrove(folder, work / f"datatrove{scale}",
                                                       args.workers)
            print(f"scale {scale}x: {len(corpus):,} documents, {megabytes:.1f} MB, "
                  f"{args.workers} workers")
            print(f"  wall   sluice {s_wall:7.1f} s   datatrove {d_wall:7.1f} s   "
                  f"ratio sluice/datatrove {s_wall / d_wall:.2f}")
            print(f"  memory sluice {s_peak:7.0f} MiB datatrove {d_peak:7.0f} MiB "
                  f"ratio {s_peak / d_peak:.2f}")
            if scale == args.scales[0]:
                pairs = dedup_eval.jaccard_pairs([d["text"] for d in corpus])
                oracle = dedup_eval.oracle_removed(len(corpus), *pairs)
                for name, clusters in (("sluice", s_clusters), ("datatrove", d_clusters)):
                    m = quality(corpus, clusters, pairs)
                    print(f"  {name:9s} recall@J>=0.8 {m['recall']:.4f} "
                          f"(of {m['pairs_at_threshold']:,} pairs)  same-cluster pairs with "
                          f"J>=0.5 {m['precision_at_similar']:.4f}  removed {m['removed']:,} "
                          f"(exact oracle at 0.8: {oracle:,})")
                sluice_rate, rensa_rate = signature_throughput(corpus)
                print(f"  signatures (128 perms, one core): sluice {sluice_rate:.1f} MB/s, "
                      f"rensa {rensa_rate:.1f} MB/s, ratio {sluice_rate / rensa_rate:.2f}")
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
