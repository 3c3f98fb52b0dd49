"""Dedup's per-batch kernels against the straightforward versions they replaced, in one run.

    python bench/kernels.py [--repeats 5]

Corpus: the dedup bench's 1x corpus (every Wikipedia revision of ../shared/data/wiki_versions
plus perturbed copies of half of them, 3,756 documents, 15.3 MB) in batches of 1,000. Each
kernel is checked to give exactly its baseline's output, then both are timed (best of
`--repeats`, one core) and the ratio printed:

- tokens: `Shingling.tokens` (byte table + whitespace split, RE2 only for non-ASCII pieces) vs
  one RE2 Unicode split of the whole column, the tokeniser it replaced;
- signatures: `MinHasher.signatures` (permutations x shingles, rows reduced) vs the same
  arithmetic laid out shingles x permutations and reduced down columns, the layout it replaced,
  and vs datasketch's `MinHash.bulk` (one numpy pass per document);
- whitespace tokens: `sink.whitespace_tokens` vs counting `\\S+` regex matches.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from transforms.dedup import eval as dedup_eval  # noqa: E402
from transforms.dedup.minhash import (EMPTY, TOKEN_SEPARATOR, MinHasher, Shingling,  # noqa: E402
                                      fmix32)
from transforms.io.sink import whitespace_tokens  # noqa: E402

SHARED = Path(os.environ.get("SLUICE_SHARED_DATA", REPO.parent / "shared" / "data"))
PERMUTATIONS = 256  # the dedup default


def regex_split_tokens(texts: pa.Array) -> pa.ListArray:
    """Baseline: one RE2 split on the Unicode separator class, empty pieces dropped."""
    parts = pc.split_pattern_regex(pc.utf8_lower(texts.fill_null("")), TOKEN_SEPARATOR)
    flat = parts.flatten()
    keep = np.asarray(pc.binary_length(flat)) > 0
    offsets = np.asarray(parts.offsets)
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    return pa.ListArray.from_arrays(pa.array(kept_before[offsets].astype(np.int32)),
                                    flat.filter(pa.array(keep)))


def column_reduce_signatures(hasher: MinHasher, hashes: np.ndarray,
                             offsets: np.ndarray) -> np.ndarray:
    """Baseline: the same permutations laid out shingles x permutations and reduced down the
    columns, in matrices of about 2^20 values (session 3's size), whole documents each."""
    a, b = hasher.permutations
    mixed = fmix32((hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    signatures = np.full((len(offsets) - 1, hasher.num_perm), EMPTY, dtype=np.uint32)
    documents = np.flatnonzero(np.diff(offsets) > 0)
    groups = offsets[documents] // max(1, (1 << 20) // hasher.num_perm)
    for group in np.unique(groups):
        members = documents[groups == group]
        lo, hi = offsets[members[0]], offsets[members[-1] + 1]
        permuted = mixed[lo:hi, None] * a[None, :] + b[None, :]
        signatures[members] = np.minimum.reduceat(permuted, offsets[members] - lo, axis=0)
    return signatures


def datasketch_bulk(hasher: MinHasher, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Baseline: datasketch's `MinHash.bulk`, one `update_batch` per document."""
    from datasketch import MinHash

    documents = [hashes[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    sketches = MinHash.bulk(documents, num_perm=hasher.num_perm, seed=hasher.seed,
                            hashfunc=lambda h: h & np.uint64(0xFFFFFFFF))
    return np.stack([s.hashvalues for s in sketches]).astype(np.uint32)


def best_time(fn, inputs, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in inputs:
            fn(*item)
        best = min(best, time.perf_counter() - start)
    return best


def compare(name: str, seconds: float, baseline, inputs, repeats: int, megabytes: float,
            baseline_name: str) -> None:
    theirs = best_time(baseline, inputs, repeats)
    print(f"{name:18s} sluice {megabytes / seconds:7.1f} MB/s   {baseline_name:16s} "
          f"{megabytes / theirs:7.1f} MB/s   speed-up {theirs / seconds:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    docs = dedup_eval.wiki_documents(SHARED / "wiki_versions")
    docs += dedup_eval.perturbed_copies(docs, np.random.default_rng(0), fraction=0.5)
    texts = [pa.array([d["text"] for d in docs[i:i + 1000]]) for i in range(0, len(docs), 1000)]
    megabytes = sum(len(d["text"].encode()) for d in docs) / 1e6
    print(f"{len(docs):,} documents, {megabytes:.1f} MB, batches of 1,000, best of "
          f"{args.repeats}")

    shingling, hasher = Shingling(5), MinHasher(PERMUTATIONS)
    tokens = [shingling.tokens(t) for t in texts]
    assert all(ours.equals(regex_split_tokens(t)) for ours, t in zip(tokens, texts))
    batches = [(t,) for t in texts]
    compare("tokens", best_time(shingling.tokens, batches, args.repeats), regex_split_tokens,
            batches, args.repeats, megabytes, "one RE2 split")

    shingles = [(hasher,) + shingling.shingle_hashes(t) for t in tokens]
    for _, hashes, offsets in shingles:
        ours = hasher.signatures(hashes, offsets)
        assert np.array_equal(ours, column_reduce_signatures(hasher, hashes, offsets))
    first = shingles[0]
    assert np.array_equal(hasher.signatures(*first[1:]), datasketch_bulk(*first))
    ours = best_time(lambda _, hashes, offsets: hasher.signatures(hashes, offsets), shingles,
                     args.repeats)
    compare(f"signatures ({PERMUTATIONS})", ours, column_reduce_signatures, shingles,
            args.repeats, megabytes, "column reduce")
    compare(f"signatures ({PERMUTATIONS})", ours, datasketch_bulk, shingles, 1, megabytes,
            "datasketch bulk")

    regex_count = lambda t: pc.count_substring_regex(t, r"\S+")  # noqa: E731
    assert all(whitespace_tokens(t).equals(regex_count(t)) for t in texts)
    compare("whitespace tokens", best_time(whitespace_tokens, batches, args.repeats), regex_count,
            batches, args.repeats, megabytes, "\\S+ regex count")


if __name__ == "__main__":
    main()
