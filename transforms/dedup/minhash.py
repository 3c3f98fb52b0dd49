"""MinHash signatures, LSH band keys and the band/row choice, vectorised over record batches.

Shingles as docs/dedup.md defines them (step 2, "Near"): word n-grams (default 5) over the
lowercased `\\w+` tokens of a document; a document with fewer than n tokens gives one shingle of
all its tokens, and one with no tokens gives none. Character n-grams over the normalised text
are the alternative (NeMo Curator uses 24-grams).

Everything that touches every token runs in Arrow or numpy, never per token in Python:
tokenising is one byte-table pass and whitespace split over the whole text column (a Unicode
regex only for pieces with non-ASCII characters), each distinct token of a batch is
hashed once with xxh3-64 (Arrow's dictionary encoding finds them), n-gram hashes are rolled from
token hashes with numpy, and the permutations are one matrix operation per chunk of shingles.
The permutations are datasketch's default `affine32` scheme (MurmurHash3 finaliser, then
`a*h + b mod 2^32`, Broder 1997 min-wise hashing), so a signature equals
`datasketch.MinHash(num_perm, seed, hashfunc=...).update_batch(shingle_hashes)` bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

# Separators between tokens: the complement of Python's Unicode `\w` ([\p{L}\p{N}_]) in RE2.
TOKEN_SEPARATOR = r"[^\p{L}\p{N}_]+"
EMPTY = np.uint32(0xFFFFFFFF)  # the signature value of a document without shingles
_ROLL = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier that rolls token hashes into n-grams
_LOW32 = np.uint64(0xFFFFFFFF)
_CHUNK_ELEMENTS = 1 << 21  # permutations x shingles per matrix operation (8 MiB of uint32)


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: an avalanching bijection on uint64 (wraps by design)."""
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


def fmix32(values: np.ndarray) -> np.ndarray:
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def candidate_probability(similarity, bands: int, rows: int):
    """The LSH S-curve: P(two documents share a band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=float) ** rows) ** bands


def choose_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                 false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows), bands*rows <= num_perm, minimising the weighted areas of false positives
    (the S-curve below the threshold) and false negatives (one minus it above), as in
    Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets" ch. 3 and datasketch's MinHashLSH.
    """
    bands, rows = np.array([(b, r) for b in range(1, num_perm + 1)
                            for r in range(1, num_perm // b + 1)]).T[:, :, None]
    below = np.linspace(0.0, threshold, 513)
    above = np.linspace(threshold, 1.0, 513)
    fp = np.trapezoid(candidate_probability(below, bands, rows), below, axis=-1)
    fn = np.trapezoid(1.0 - candidate_probability(above, bands, rows), above, axis=-1)
    best = np.argmin(false_positive_weight * fp + false_negative_weight * fn)  # first minimum
    return int(bands[best, 0]), int(rows[best, 0])


@dataclass(frozen=True)
class Shingling:
    """How a document becomes a set of shingle hashes: word or character n-grams."""

    ngram: int = 5
    unit: Literal["word", "char"] = "word"

    def tokens(self, texts: pa.Array) -> pa.ListArray:
        """Lowercased `\\w+` tokens of every text, as one list array.

        ASCII separators become spaces on the raw UTF-8 bytes and the text is split on them; only
        the few pieces that hold non-ASCII characters are split again with the Unicode separator
        pattern, and the pieces are put back in order (~1.8x one RE2 split, `bench/kernels.py`).
        """
        pieces = pc.ascii_split_whitespace(_ascii_separators_to_spaces(
            pc.utf8_lower(texts.fill_null(""))))
        flat = pieces.flatten()
        # int32 positions (these arrays are the batch's largest temporaries): there are fewer
        # pieces than bytes of text, which Arrow's int32 string offsets already bound by 2^31
        counts = np.asarray(pc.binary_length(flat), dtype=np.int32).clip(max=1)  # drop "" pieces
        starts = np.arange(len(flat), dtype=np.int32)
        source = flat
        wide = np.flatnonzero(~np.asarray(pc.string_is_ascii(flat), dtype=bool))
        if len(wide):
            parts = pc.split_pattern_regex(flat.take(wide), TOKEN_SEPARATOR)
            words = parts.flatten()
            is_word = np.asarray(pc.binary_length(words), dtype=np.int32) > 0
            counts[wide] = _segment_sum(is_word, _list_offsets(parts))
            starts[wide] = len(flat) + np.cumsum(counts[wide]) - counts[wide]
            source = pa.concat_arrays([flat, words.filter(pa.array(is_word))])
        ends = np.cumsum(counts, dtype=np.int32)
        index = np.repeat(starts - (ends - counts), counts)
        index += np.arange(len(index), dtype=np.int32)
        values = source.take(index)
        lengths = _segment_sum(counts, _list_offsets(pieces))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), values)

    def normalised(self, tokens: pa.ListArray) -> pa.Array:
        """The text every duplicate test sees: tokens joined by one space."""
        return pc.binary_join(tokens, " ")

    def shingle_hashes(self, tokens: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
        """(64-bit shingle hashes, per-document offsets into them)."""
        if self.unit == "word":
            unit_hashes, offsets = _token_hashes(tokens)
        else:
            unit_hashes, offsets = _char_hashes(self.normalised(tokens))
        return unit_ngram_hashes(unit_hashes, offsets, self.ngram)


# UTF-8 byte -> itself, except ASCII bytes outside `\\w` ([0-9A-Za-z_]), which become a space
_ASCII_SEPARATOR_TO_SPACE = np.array(
    [ord(" ") if b < 128 and not (chr(b).isalnum() or chr(b) == "_") else b for b in range(256)],
    dtype=np.uint8)


def _ascii_separators_to_spaces(strings: pa.Array) -> pa.Array:
    validity, offsets, values = strings.buffers()
    if values is None:
        return strings
    mapped = _ASCII_SEPARATOR_TO_SPACE[np.frombuffer(values, dtype=np.uint8)]
    return pa.Array.from_buffers(strings.type, len(strings),
                                 [validity, offsets, pa.py_buffer(mapped)], offset=strings.offset)


def _list_offsets(lists: pa.ListArray) -> np.ndarray:
    return np.asarray(lists.offsets, dtype=np.int64) - lists.offsets[0].as_py()


def _segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of `values` within each [offsets[i], offsets[i+1]) segment (empty segments give 0)."""
    totals = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return totals[offsets[1:]] - totals[offsets[:-1]]


def _token_hashes(tokens: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """xxh3-64 of every token; each distinct token of the batch is hashed once."""
    encoded = pc.dictionary_encode(tokens.flatten())
    words = encoded.dictionary.cast(pa.binary()).to_pylist()
    distinct = np.fromiter((xxhash.xxh3_64_intdigest(w) for w in words), dtype=np.uint64,
                           count=len(words))
    codes = np.asarray(encoded.indices.fill_null(0), dtype=np.int64)
    return distinct[codes], _list_offsets(tokens)


def _char_hashes(normalised: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Mixed code points of every character of every normalised text."""
    points = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32) for t in
              normalised.to_pylist()]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in points])]).astype(np.int64)
    flat = np.concatenate(points) if points else np.zeros(0, np.uint32)
    return fmix64(flat.astype(np.uint64) + np.uint64(1)), offsets


def unit_ngram_hashes(units: np.ndarray, offsets: np.ndarray,
                      n: int) -> tuple[np.ndarray, np.ndarray]:
    """Roll unit hashes into n-gram hashes per document; short documents give one shingle."""
    lengths = np.diff(offsets)
    counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    out_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    padded = np.concatenate([units, np.zeros(n, np.uint64)])
    # every window of n consecutive units, from contiguous slices (no gathers)
    windows = len(units)
    rolled = np.zeros(windows, dtype=np.uint64)
    for k in range(n):
        rolled = rolled * _ROLL + padded[k:k + windows]
    rolled = fmix64(rolled ^ np.uint64(n))
    # keep the windows that start in a document and end in it; a short document's one shingle
    # rolls only its own units
    doc_of_window = np.repeat(np.arange(len(counts)), counts)
    starts = offsets[:-1][doc_of_window] + (np.arange(int(out_offsets[-1]))
                                             - out_offsets[:-1][doc_of_window])
    hashes = rolled[np.minimum(starts, max(windows - 1, 0))] if windows else np.zeros(0, np.uint64)
    short = np.flatnonzero((lengths < n) & (lengths > 0))
    rolled_short = np.zeros(len(short), dtype=np.uint64)
    for k in range(n - 1):
        rolled_short = np.where(k < lengths[short],
                                rolled_short * _ROLL + padded[offsets[short] + k], rolled_short)
    hashes[out_offsets[short]] = fmix64(rolled_short ^ lengths[short].astype(np.uint64))
    return hashes, out_offsets


@dataclass(frozen=True)
class MinHasher:
    """Signatures and band keys with fixed permutations (datasketch's, from `seed`)."""

    num_perm: int = 128
    seed: int = 1

    @cached_property
    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        # imported here: the datasketch package pulls in scipy.optimize (~0.4 s), which a job's
        # driver never needs
        from datasketch import MinHash

        a, b = MinHash(num_perm=self.num_perm, seed=self.seed).permutations
        return a.astype(np.uint32), b.astype(np.uint32)

    def signatures(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(documents x num_perm) uint32 minima; a document without shingles is all EMPTY.

        The permuted values are laid out permutations x shingles, so each document's minimum
        is a reduction over a contiguous run of one row (~10x reducing down the columns of the
        transposed layout, `bench/kernels.py`).
        """
        a, b = self.permutations
        docs = len(offsets) - 1
        minima = np.full((self.num_perm, docs), EMPTY, dtype=np.uint32)
        mixed = fmix32((hashes & _LOW32).astype(np.uint32))
        chunk = max(1, _CHUNK_ELEMENTS // self.num_perm)
        starts = offsets[:-1]
        has_any = np.diff(offsets) > 0
        buffer = np.empty((self.num_perm, min(chunk, len(mixed))), dtype=np.uint32)
        for lo in range(0, len(mixed), chunk):
            hi = min(lo + chunk, len(mixed))
            permuted = np.multiply(a[:, None], mixed[None, lo:hi], out=buffer[:, : hi - lo])
            permuted += b[:, None]
            # documents whose shingles overlap [lo, hi), and where each starts within the chunk
            first = np.searchsorted(offsets, lo, side="right") - 1
            last = np.searchsorted(offsets, hi - 1, side="right") - 1
            docs_here = np.arange(first, last + 1)
            docs_here = docs_here[has_any[docs_here]]
            local = np.maximum(starts[docs_here], lo) - lo
            chunk_minima = np.minimum.reduceat(permuted, local, axis=1)
            minima[:, docs_here] = np.minimum(minima[:, docs_here], chunk_minima)
        return np.ascontiguousarray(minima.T)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents x bands) uint64 keys: band b's rows and b itself, mixed into 64 bits.

    Two documents share a key when they agree on all `rows` values of that band (a 2^-64 chance
    otherwise, harmless because every candidate pair is verified).
    """
    grouped = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    keys = np.broadcast_to(np.arange(bands, dtype=np.uint64) + np.uint64(1),
                           grouped.shape[:2]).copy()
    for r in range(rows):
        keys = fmix64(keys * _ROLL + grouped[:, :, r])
    return keys


def estimated_jaccard(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Fraction of agreeing minima, row by row: an unbiased estimate of Jaccard similarity."""
    return np.mean(left == right, axis=-1)


BITS = 8


def low_bits(signatures: np.ndarray) -> np.ndarray:
    """b-bit minwise hashing (Li & Koenig 2010): the lowest 8 bits of each minimum, a quarter of
    the bytes, which is what the LSH shuffle carries for verification."""
    return (signatures & np.uint32((1 << BITS) - 1)).astype(np.uint8)


def bbit_jaccard(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Jaccard estimate from b-bit minima: unequal minima still agree on b bits with
    probability 2^-b, so P(agree) = J + (1 - J) 2^-b; invert that."""
    chance = 2.0 ** -BITS
    return (estimated_jaccard(left, right) - chance) / (1.0 - chance)
