"""Dedup at a size that takes minutes: memory flat, time linear, beside datatrove's MinHash dedup.

    python bench/large_dedup.py [--block-mb 125] [--blocks 2 4 8] [--workers 2]
                                [--datatrove-python /tmp/dtvenv4/bin/python] [--no-datatrove]
                                [--work /tmp/sluice-large-dedup] [--keep]

The corpus is generated into `--work` (not committed) from the 2,504 real Wikipedia revisions of
../shared/data/wiki_versions, in blocks of about `--block-mb` MB of JSONL text, each block four
files; a run at k blocks reads the first k blocks (so the sizes share their files). A block is
made of clusters with a known structure: each cluster's base is a real revision with 20% of its
words deleted, 20% replaced by random vocabulary words and 20% repeated (bases drawn from one
revision share few 5-grams: distinct documents); half the clusters are the base alone, the others have 1-20 further members
(geometric sizes), and one cluster per block has 500; a member is an exact copy (20%) or a near
copy with word deletions, substitutions and repeats at a rate uniform in [0, 2%] (Jaccard to its
base ~0.8-1). Members are spread over the block's four files in random order. Ids are
`b<block>/c<cluster>/m<member>`, so the expected removals are documents minus clusters (near
copies with the highest edit rates can fall below 0.8 and stay, so a little under that is right).

Both systems read the same JSONL files with the same number of workers: Sluice through
`sluice dedup` on Beam's local FnApiRunner, datatrove 0.10.1 (its own venv, e.g.
`python -m venv /tmp/dtvenv4 && /tmp/dtvenv4/bin/pip install "datatrove[processing]==0.10.1"
psutil`) with the four-step pipeline and config of bench/dedup.py. Measured per run: wall time,
CPU-seconds of the whole process tree (user+system: the larger of the `wait4` rusage of the
command, which includes every descendant it waited for, and the sum of psutil's cpu_times of
every process of the tree, sampled every 0.2 s, which counts datatrove's pool workers that
rusage misses; the cores are shared, so CPU-seconds are the comparable number), and peak memory (sum of the tree's RSS, sampled every 0.2 s).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SLUICE_SHARED_DATA", REPO.parent / "shared" / "data"))
FILES_PER_BLOCK = 4
BOILERPLATE = ["Home | About | Contact | Privacy policy", "Share this article on social media",
               "Copyright (c) All rights reserved.", "Skip to main content", "Subscribe"]


# --- corpus -------------------------------------------------------------------------------------

def revisions() -> list[np.ndarray]:
    paths = sorted((SHARED / "wiki_versions" / "version_documents").glob("*/*.txt"))
    return [np.array(p.read_text(encoding="utf-8", errors="replace").split(" "), dtype=object)
            for p in paths]


def edited(words: np.ndarray, rng: np.random.Generator, rate: float,
           vocabulary: np.ndarray) -> np.ndarray:
    """Deletions, substitutions and repeats, each at rate/3 per word."""
    roll = rng.random(len(words))
    words = words.copy()
    substitute = (roll >= rate / 3) & (roll < 2 * rate / 3)
    words[substitute] = vocabulary[rng.integers(len(vocabulary), size=int(substitute.sum()))]
    kept = roll >= rate / 3
    repeats = np.where(roll[kept] >= 2 * rate / 3, np.where(roll[kept] < rate, 2, 1), 1)
    return np.repeat(words[kept], repeats)


def write_block(block: int, folder: Path, target_bytes: int, sources: list[np.ndarray],
                vocabulary: np.ndarray) -> dict:
    rng = np.random.default_rng(1000 + block)
    handles = [open(folder / f"block{block:03d}-part{f}.jsonl", "w", encoding="utf-8")
               for f in range(FILES_PER_BLOCK)]
    written, clusters, documents, cluster = 0, 0, 0, 0
    pending: list[tuple[int, str]] = []
    while written < target_bytes:
        base = edited(sources[rng.integers(len(sources))], rng, 0.6, vocabulary)  # 20% replaced
        base_text = " ".join(base)
        if cluster == 0:
            size = 500
        elif rng.random() < 0.5:
            size = 1
        else:
            size = 1 + min(20, int(rng.geometric(0.25)))
        for member in range(size):
            if member == 0 or rng.random() < 0.2:
                text = base_text
            else:
                text = " ".join(edited(base, rng, float(rng.uniform(0, 0.02)), vocabulary))
                if rng.random() < 0.5:
                    text = f"{BOILERPLATE[rng.integers(5)]}\n{text}"
            line = json.dumps({"id": f"b{block}/c{cluster}/m{member}", "text": text}) + "\n"
            pending.append((int(rng.integers(FILES_PER_BLOCK)), line))
            written += len(line.encode())
            documents += 1
        clusters += 1
        cluster += 1
        if len(pending) > 20000:
            _flush(pending, handles, rng)
    _flush(pending, handles, rng)
    for handle in handles:
        handle.close()
    return {"documents": documents, "clusters": clusters, "bytes": written}


def _flush(pending: list, handles: list, rng: np.random.Generator) -> None:
    for i in rng.permutation(len(pending)):
        handles[pending[i][0]].write(pending[i][1])
    pending.clear()


def build(work: Path, blocks: int, block_mb: float) -> list[dict]:
    """The first `blocks` blocks under work/blocks (reused when already there)."""
    folder = work / "blocks"
    folder.mkdir(parents=True, exist_ok=True)
    sources = None
    meta = []
    for block in range(blocks):
        info = folder / f"block{block:03d}.json"
        if info.exists() and json.loads(info.read_text()).get("block_mb") == block_mb:
            meta.append(json.loads(info.read_text()))
            continue
        if sources is None:
            sources = revisions()
            vocabulary = np.array(sorted({w for words in sources[:300] for w in words if w}),
                                  dtype=object)
        start = time.perf_counter()
        m = write_block(block, folder, int(block_mb * 1e6), sources, vocabulary)
        m["block_mb"] = block_mb
        info.write_text(json.dumps(m))
        meta.append(m)
        print(f"  generated block {block}: {m['documents']:,} documents, "
              f"{m['bytes'] / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
    return meta


def corpus_folder(work: Path, blocks: int) -> Path:
    """A folder with hard links to the first `blocks` blocks' files."""
    folder = work / f"corpus-{blocks}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for block in range(blocks):
        for part in range(FILES_PER_BLOCK):
            name = f"block{block:03d}-part{part}.jsonl"
            os.link(work / "blocks" / name, folder / name)
    return folder


# --- measuring ----------------------------------------------------------------------------------

def measured(command: list[str]) -> dict:
    """Wall, CPU-seconds and peak RSS (MiB) of a command's tree. rusage misses descendants
    nobody waited for (datatrove's pool workers); the samples miss at most each process's last
    0.2 s: take the larger."""
    from measure import measured_tree  # bench/measure.py (psutil: the Sluice side only)

    result = measured_tree(command, interval=0.2)
    return {"wall": result["wall"], "peak": result["peak_mib"],
            "cpu": max(result["cpu"], result["cpu_sampled"])}


def run_sluice(corpus: Path, out: Path, workers: int) -> dict:
    result = measured([sys.executable, "-m", "pipelines", "dedup", str(corpus / "*.jsonl"),
                       "--output", str(out), f"--direct_num_workers={workers}"])
    stats = json.loads((out / "stats.json").read_text())
    result["removed"] = sum(v for k, v in stats["dropped"].items()
                            if k in ("exact_duplicate", "near_duplicate"))
    result["largest_cluster"] = stats.get("counters", {}).get("dedup.largest_cluster")
    shutil.rmtree(out, ignore_errors=True)
    return result


def run_datatrove(python: str, corpus: Path, out: Path, workers: int) -> dict:
    result = measured([python, str(Path(__file__).with_name("datatrove_side.py")), str(corpus),
                       str(out), str(workers)])
    result["removed"] = 0
    for path in (out / "removed").glob("*.jsonl*"):
        import gzip
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
            result["removed"] += sum(1 for _ in f)
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--block-mb", type=float, default=125.0)
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--datatrove-python", default="/tmp/dtvenv4/bin/python")
    parser.add_argument("--no-datatrove", action="store_true")
    parser.add_argument("--work", default="/tmp/sluice-large-dedup")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpus")
    args = parser.parse_args()
    work = Path(args.work)
    rows = []
    try:
        meta = build(work, max(args.blocks), args.block_mb)
        for blocks in args.blocks:
            corpus = corpus_folder(work, blocks)
            docs = sum(m["documents"] for m in meta[:blocks])
            expected = docs - sum(m["clusters"] for m in meta[:blocks])
            gb = sum(m["bytes"] for m in meta[:blocks]) / 1e9
            sluice = run_sluice(corpus, work / "out-sluice", args.workers)
            print(f"  {gb:.2f} GB sluice: {sluice['wall']:.0f} s wall, {sluice['cpu']:.0f} CPU s",
                  file=sys.stderr, flush=True)
            datatrove = None
            if not args.no_datatrove:
                datatrove = run_datatrove(args.datatrove_python, corpus, work / "out-datatrove",
                                          args.workers)
                print(f"  {gb:.2f} GB datatrove: {datatrove['wall']:.0f} s wall, "
                      f"{datatrove['cpu']:.0f} CPU s", file=sys.stderr, flush=True)
            rows.append((blocks, docs, gb, expected, sluice, datatrove))
            shutil.rmtree(corpus, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.workers} workers each; CPU = user+system seconds of the whole process tree; "
          f"peak = largest sum of the tree's RSS; per GB = of JSONL input")
    print(f"{'GB':>5} {'docs':>9} {'expected':>9} | {'sluice wall':>11} {'CPU s':>7} "
          f"{'CPU s/GB':>8} {'peak MiB':>8} {'removed':>8} {'largest':>7} | {'dt wall':>8} "
          f"{'CPU s':>7} {'CPU s/GB':>8} {'peak MiB':>8} {'removed':>8} | {'wall':>5} {'CPU':>5} "
          f"{'peak':>5}")
    for blocks, docs, gb, expected, s, d in rows:
        line = (f"{gb:>5.2f} {docs:>9,} {expected:>9,} | {s['wall']:>11.0f} {s['cpu']:>7.0f} "
                f"{s['cpu'] / gb:>8.0f} {s['peak']:>8.0f} {s['removed']:>8,} "
                f"{s['largest_cluster'] or 0:>7} |")
        if d:
            line += (f" {d['wall']:>8.0f} {d['cpu']:>7.0f} {d['cpu'] / gb:>8.0f} "
                     f"{d['peak']:>8.0f} {d['removed']:>8,} | {s['wall'] / d['wall']:>5.2f} "
                     f"{s['cpu'] / d['cpu']:>5.2f} {s['peak'] / d['peak']:>5.2f}")
        print(line)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        grow = last[2] / first[2]
        print(f"from {first[2]:.2f} to {last[2]:.2f} GB ({grow:.1f}x): sluice CPU "
              f"{last[4]['cpu'] / first[4]['cpu']:.2f}x, wall {last[4]['wall'] / first[4]['wall']:.2f}x, "
              f"peak {last[4]['peak'] / first[4]['peak']:.2f}x" + (
                  f"; datatrove CPU {last[5]['cpu'] / first[5]['cpu']:.2f}x, wall "
                  f"{last[5]['wall'] / first[5]['wall']:.2f}x, peak "
                  f"{last[5]['peak'] / first[5]['peak']:.2f}x" if last[5] else ""))
    print("ratios are sluice / datatrove from the same run (below 1: sluice cheaper)")


if __name__ == "__main__":
    main()
