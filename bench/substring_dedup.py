"""Speed and memory of `substring_dedup` (suffix array, pydivsufsort) against a naive baseline
(every whitespace 50-gram hashed with a Python dict of first positions: what a hand-written
rolling hash costs in Python), on real web pages repeated with their boilerplate.

    python bench/substring_dedup.py [--mb 20] [--k 50]

The corpus is the real pages of ../shared/data (WARC/WET + DCLM), concatenated until `--mb` MB of
text, each copy of a page with a fresh number line so only long spans repeat. Each method runs in
its own process (peak RSS from `resource.getrusage` of the child, less the child's RSS after
loading the corpus). Per-GB figures are extrapolated linearly from the measured size: the suffix
array is O(n log n) in practice and its memory linear, so treat them as estimates.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def corpus(mb: float) -> list[str]:
    from tests.cleaning.corpus import real_pages
    from tests.support import SHARED_DATA

    pages = [d["text"] for d in real_pages(SHARED_DATA)]
    texts, size, copy = [], 0, 0
    while size < mb * 1e6:
        for text in pages:
            doc = f"copy {copy} page {len(texts)}\n{text}"
            texts.append(doc)
            size += len(doc.encode())
            if size >= mb * 1e6:
                break
        copy += 1
    return texts


def naive(texts: list[str], k: int) -> list[int]:
    """Later occurrences of every k-gram (hash of its tokens) removed: a dict of all k-grams."""
    seen: dict[int, int] = {}
    removed = []
    for d, text in enumerate(texts):
        tokens = text.split()
        cut = bytearray(len(tokens))
        for i in range(len(tokens) - k + 1):
            h = hash(tuple(tokens[i:i + k]))
            if seen.setdefault(h, d) != d:
                cut[i:i + k] = b"\1" * k
        removed.append(sum(cut))
    return removed


def _run(method: str, mb: float, k: int, queue) -> None:
    from transforms.cleaning.substring_dedup import dedup_texts

    texts = corpus(mb)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    removed = dedup_texts(texts, k)[1] if method == "suffix_array" else naive(texts, k)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = sum(len(t.split()) for t in texts)
    queue.put({"method": method, "mb": sum(len(t.encode()) for t in texts) / 1e6,
               "tokens": tokens, "seconds": round(seconds, 2),
               "extra_peak_mb": round((peak - base) / 1024, 1),
               "removed_tokens": int(sum(removed))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()
    from transforms.core.extras import require

    require("cleaning", "pydivsufsort", by="bench/substring_dedup.py")
    results = []
    for method in ("suffix_array", "naive_hash"):
        queue = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=_run, args=(method, args.mb, args.k, queue))
        proc.start()
        result = queue.get()
        proc.join()
        scale = 1000 / result["mb"]
        result["s_per_gb_extrapolated"] = round(result["seconds"] * scale)
        result["gb_mem_per_gb_extrapolated"] = round(result["extra_peak_mb"] * scale / 1024, 1)
        results.append(result)
        print(json.dumps(result))
    sa, nv = results
    print(f"suffix array {sa['seconds']} s vs naive {nv['seconds']} s on {sa['mb']:.1f} MB "
          f"({nv['seconds'] / max(sa['seconds'], 1e-9):.1f}x); extra memory {sa['extra_peak_mb']} "
          f"vs {nv['extra_peak_mb']} MB; removed tokens {sa['removed_tokens']} vs "
          f"{nv['removed_tokens']}")


if __name__ == "__main__":
    main()
