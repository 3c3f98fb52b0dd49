"""Write an ARPA n-gram language model from token counts: interpolated modified Kneser-Ney.

KenLM's `lmplz` (Heafield et al. 2013, "Scalable Modified Kneser-Ney Language Model
Estimation") is not packaged on PyPI; the `kenlm` module only loads models. This builds the same
kind of model in numpy so `kenlm.Model` can score with it:

- highest order and n-grams starting with `<s>`: raw counts; lower orders: continuation counts
  (the number of distinct words seen before the n-gram), as in Kneser & Ney (1995);
- three discounts per order from the counts-of-counts t1..t4 (Chen & Goodman 1998):
  Y = t1/(t1 + 2 t2), D_k = k - (k+1) Y t_{k+1}/t_k for k = 1, 2, 3+ (lmplz's fallback
  0.5/1/1.5 where the counts are too few to estimate them);
- p(w|h) = (a(hw) - D(a(hw))) / sum_x a(hx) + gamma(h) p(w|h'), with
  gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) / sum_x a(hx); unigrams interpolate with the
  uniform distribution. gamma(h) is exactly the ARPA back-off weight of h.

N-grams are numbered order by order: an n-gram's id comes from (id of its first n-1 words, last
word), so each order is one `np.unique` over integer keys and suffix/prefix links are arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, TextIO

import numpy as np

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
NEVER = -99.0  # ARPA's log10 probability for <s>, which is never predicted


@dataclass
class Order:
    """The distinct n-grams of one order: raw counts and links to order n-1."""

    counts: np.ndarray   # raw count of each n-gram
    prefix: np.ndarray   # id (order n-1) of its first n-1 words
    suffix: np.ndarray   # id (order n-1) of its last n-1 words
    last: np.ndarray     # word id of its last word
    first: np.ndarray    # word id of its first word


def _encode(sentences: Iterable[list[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(vocabulary, token ids with <s>/</s> around each sentence, sentence index per token)."""
    vocabulary = {UNK: 0, BOS: 1, EOS: 2}
    tokens: list[int] = []
    sentence: list[int] = []
    for index, words in enumerate(sentences):
        ids = [1, *(vocabulary.setdefault(w, len(vocabulary)) for w in words), 2]
        tokens += ids
        sentence += [index] * len(ids)
    return list(vocabulary), np.asarray(tokens, dtype=np.int64), np.asarray(sentence, np.int64)


def count_ngrams(tokens: np.ndarray, sentence: np.ndarray, vocab_size: int,
                 order: int) -> list[Order]:
    """Orders 1..`order` of the n-grams inside sentences."""
    words = np.arange(vocab_size, dtype=np.int64)
    orders = [Order(np.bincount(tokens, minlength=vocab_size), np.zeros(vocab_size, np.int64),
                    np.zeros(vocab_size, np.int64), words, words)]
    position_ids = tokens  # id of the n-gram starting at each position (-1: none)
    for n in range(2, order + 1):
        length = len(tokens) - n + 1
        if length <= 0:
            break
        valid = (sentence[:length] == sentence[n - 1:]) & (position_ids[:length] >= 0)
        starts = np.flatnonzero(valid)
        keys = position_ids[starts] * vocab_size + tokens[starts + n - 1]
        if not len(keys):
            break
        unique, first_seen, inverse, counts = np.unique(keys, return_index=True,
                                                        return_inverse=True, return_counts=True)
        representative = starts[first_seen]
        prefix = unique // vocab_size
        orders.append(Order(counts, prefix, position_ids[representative + 1],
                            unique % vocab_size, orders[-1].first[prefix]))
        position_ids = np.full(len(tokens), -1, dtype=np.int64)
        position_ids[starts] = inverse
    return orders


def discounts(adjusted: np.ndarray) -> np.ndarray:
    """[0, D1, D2, D3+] from the counts-of-counts of the adjusted counts."""
    t = np.bincount(np.minimum(adjusted, 5), minlength=6)[1:5].astype(np.float64)
    if np.all(t > 0):
        y = t[0] / (t[0] + 2 * t[1])
        d = np.array([k - (k + 1) * y * t[k] / t[k - 1] for k in (1, 2, 3)])
        if np.all((d > 0) & (d < np.array([1, 2, 3]))):
            return np.concatenate([[0.0], d])
    return np.array([0.0, *FALLBACK_DISCOUNTS])


def estimate(orders: list[Order], vocab_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(log10 p, log10 back-off or NaN) of every n-gram, order by order."""
    log_p: list[np.ndarray] = []
    log_backoff: list[np.ndarray] = []
    lower = np.zeros(0)
    for n, grams in enumerate(orders, start=1):
        if n == len(orders):
            adjusted = grams.counts.copy()
        else:  # continuation counts, except for n-grams that start with <s>
            adjusted = np.bincount(orders[n].suffix, minlength=len(grams.counts))
            starts_sentence = grams.first == 1
            adjusted[starts_sentence] = grams.counts[starts_sentence]
        if n == 1:
            adjusted[1] = 0  # <s> is never predicted
        discount = discounts(adjusted[adjusted > 0])[np.minimum(adjusted, 3)]
        context = grams.prefix if n > 1 else np.zeros(len(adjusted), np.int64)
        contexts = len(orders[n - 2].counts) if n > 1 else 1
        total = np.bincount(context, weights=adjusted, minlength=contexts)
        mass = np.bincount(context, weights=discount, minlength=contexts)
        seen = total > 0
        gamma = np.where(seen, mass / np.where(seen, total, 1.0), 0.0)
        p = np.maximum(adjusted - discount, 0) / np.where(seen, total, 1.0)[context]
        if n == 1:
            p += gamma[0] / (vocab_size - 1)
        else:
            p += gamma[context] * lower[grams.suffix]
            log_backoff[-1] = np.where(seen, np.log10(np.where(seen, gamma, 1.0)), np.nan)
        with np.errstate(divide="ignore"):
            log_p.append(np.log10(p))
        if n == 1:
            log_p[0][1] = NEVER
        log_backoff.append(np.full(len(p), np.nan))
        lower = p
    return log_p, log_backoff


def write_arpa(out: TextIO, vocabulary: list[str], orders: list[Order],
               log_p: list[np.ndarray], log_backoff: list[np.ndarray]) -> None:
    out.write("\\data\\\n")
    for n, grams in enumerate(orders, start=1):
        out.write(f"ngram {n}={len(grams.counts)}\n")
    names = np.asarray(vocabulary, dtype=object)
    for n, grams in enumerate(orders, start=1):
        out.write(f"\n\\{n}-grams:\n")
        if n > 1:
            names = names[grams.prefix] + " " + np.asarray(vocabulary, dtype=object)[grams.last]
        for name, p, b in zip(names, log_p[n - 1], log_backoff[n - 1]):
            out.write(f"{p:.6f}\t{name}\t{b:.6f}\n" if b == b else f"{p:.6f}\t{name}\n")
    out.write("\n\\end\\\n")


def build_arpa(sentences: Iterable[list[str]], out: TextIO, order: int = 5) -> dict:
    """Estimate an interpolated modified Kneser-Ney model of `order` and write it as ARPA.

    `sentences` are token lists (already normalised and tokenised as they will be scored).
    Returns the n-gram count per order.
    """
    if order < 1:
        raise ValueError("order must be at least 1")
    vocabulary, tokens, sentence = _encode(sentences)
    if not len(tokens):
        raise ValueError("no sentences to estimate a language model from")
    orders = count_ngrams(tokens, sentence, len(vocabulary), order)
    log_p, log_backoff = estimate(orders, len(vocabulary))
    write_arpa(out, vocabulary, orders, log_p, log_backoff)
    return {n: len(g.counts) for n, g in enumerate(orders, start=1)}
