"""Cluster-based pruning on real text, each method beside a uniform random sample of the same size.

Corpus: every Wikipedia revision in ../shared/data/wiki_versions (2,5xx revisions of 445 articles:
the known "revision clusters") plus the 499 DCLM pages of ../shared/data/dclm_quality. One
embedding (hashed by default, `--embedder minilm`) and one k-means fit (`--clusters`, seed 0), then
each method through the stages' own numpy functions (transforms/selection/pruning.py), on a
train split (documents whose id hash is >= `--heldout`); the held-out split scores the kept set.

Per method and for uniform (mean over `--seeds` draws of the same kept count):
- kept: documents kept;
- articles: Wikipedia articles with at least one kept revision (of those in the train split);
- rev/art: kept revisions per covered article (redundancy; 1 = one version of each);
- top-cl %: share of the kept set in its largest k-means cluster (concept imbalance);
- nn-cos: mean cosine similarity of a kept document to its nearest other kept one (lower =
  more diverse);
- heldout CE: cross-entropy (bits/word) on the held-out split of an add-one unigram model of the
  kept documents' words (what the kept text predicts about unseen text; lower is better); for
  uniform also its standard deviation over the seeds.
Then SemDeDup against the known revision clusters: of the dropped documents, the share whose
most similar earlier document is a revision of the same article (precision), and the share of
redundant revisions (revisions beyond the first of each article) dropped (recall), per eps.

With `--sensitivity`: the sensitivity stage's estimator (transforms/selection/sensitivity.py,
defaults k = m, lambda auto, balanced draws) of the mean per-document loss over the train split,
the loss being each document's unigram cross-entropy (bits/word, add-one) under a unigram model
of the held-out split; RMSE over 200 draws divided by the exact RMSE of a uniform sample of m
without replacement (< 1: sensitivity sampling beats uniform), for the `--embedder` embeddings
and for hashed character 1-3-grams of the first 512 characters.

    python bench/pruning.py [--clusters 100] [--embedder hashed|minilm] [--seeds 20] [--sensitivity]
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SLUICE_QUIET", "1")

from classifiers.embeddings import EmbeddingConfig, load_embedder  # noqa: E402
from transforms.selection.clusters import assign, fit_centres  # noqa: E402
from transforms.selection.pruning import (cap_quotas, complexity_quotas,  # noqa: E402
                                          cosine_distances_to_centres, document_hashes,
                                          fraction_quotas, inter_cluster_distance,
                                          keep_quotas_in_memory, semdedup_cluster)
from bench.selection import corpus  # noqa: E402

WORD = re.compile(r"\w+")


def unigram_cross_entropy(train_texts, heldout_counts: Counter, vocabulary: int) -> float:
    counts = Counter()
    for text in train_texts:
        counts.update(WORD.findall(text.lower()))
    total = sum(counts.values()) + vocabulary
    tokens = sum(heldout_counts.values())
    bits = -sum(n * math.log2((counts.get(w, 0) + 1) / total) for w, n in heldout_counts.items())
    return bits / tokens


def nearest_cosine(unit: np.ndarray) -> float:
    if len(unit) < 2:
        return float("nan")
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return float(sims.max(1).mean())


class Corpus:
    def __init__(self, rows, embeddings, clusters: int, heldout: float):
        split = document_hashes([r["id"] for r in rows], 12345) < heldout
        self.test = [r for r, s in zip(rows, split) if s]
        self.rows = [r for r, s in zip(rows, split) if not s]
        self.ids = [r["id"] for r in self.rows]
        e = embeddings[~split]
        self.embeddings = e
        self.unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        self.centres = fit_centres(e, clusters, 0)
        self.cluster, self.distance = assign(e, self.centres)
        self.article = np.array([r["id"].split("/")[1] if r["source"] == "wikipedia" else ""
                                 for r in self.rows], dtype=object)
        self.heldout_counts = Counter()
        for r in self.test:
            self.heldout_counts.update(WORD.findall(r["text"].lower()))
        vocab = set(self.heldout_counts)
        for r in self.rows:
            vocab.update(WORD.findall(r["text"].lower()))
        self.vocabulary = len(vocab)

    def metrics(self, keep: np.ndarray) -> dict:
        wiki = keep & (self.article != "")
        articles = len(set(self.article[wiki]))
        kept_clusters = Counter(self.cluster[keep].tolist())
        return {
            "kept": int(keep.sum()),
            "articles": articles,
            "rev/art": wiki.sum() / max(articles, 1),
            "top-cl %": 100 * max(kept_clusters.values()) / max(keep.sum(), 1),
            "nn-cos": nearest_cosine(self.unit[keep]),
            "heldout CE": unigram_cross_entropy([r["text"] for r, k in zip(self.rows, keep) if k],
                                                self.heldout_counts, self.vocabulary),
        }

    def uniform(self, size: int, seeds: int) -> dict:
        runs = []
        for seed in range(seeds):
            keep = np.zeros(len(self.rows), dtype=bool)
            keep[np.random.default_rng([seed, 7]).choice(len(self.rows), size, replace=False)] = True
            runs.append(self.metrics(keep))
        mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        return mean | {"ce sd": float(np.std([r["heldout CE"] for r in runs], ddof=1))}


# --- the methods, through the stages' functions ---------------------------------------------

def balance(c: Corpus, cap: int, groups=None, seed: int = 0) -> np.ndarray:
    groups = c.cluster if groups is None else groups
    return keep_quotas_in_memory(groups, np.zeros(len(c.ids)), document_hashes(c.ids, seed),
                                 lambda counts: cap_quotas(counts, cap))


def prototypes(c: Corpus, fraction: float, keep: str, per_cluster: bool) -> np.ndarray:
    score = c.distance.astype(np.float64) * (1 if keep == "easy" else -1)
    groups = c.cluster if per_cluster else np.zeros(len(c.ids), dtype=np.int64)
    return keep_quotas_in_memory(groups, score, document_hashes(c.ids, 0),
                                 lambda counts: fraction_quotas(counts, fraction))


def semdedup(c: Corpus, eps: float):
    keep = np.ones(len(c.ids), dtype=bool)
    partner = np.full(len(c.ids), -1)
    for cluster in np.unique(c.cluster):
        rows = np.flatnonzero(c.cluster == cluster)
        duplicate, other, _ = semdedup_cluster(c.embeddings[rows], c.distance[rows], eps)
        keep[rows[duplicate]] = False
        partner[rows[duplicate]] = rows[other[duplicate]]
    return keep, partner


def cluster_complexity(c: Corpus, fraction: float, temperature: float, keep: str = "hard",
                       neighbours: int = 20) -> tuple[np.ndarray, dict]:
    sizes = Counter(c.cluster.tolist())
    cosd = cosine_distances_to_centres(c.embeddings, c.centres, c.cluster)
    d_intra = {g: float(cosd[c.cluster == g].mean()) for g in sizes}
    d_inter = inter_cluster_distance(c.centres, neighbours)
    quotas = complexity_quotas(sizes, d_intra, {g: d_inter[g] for g in sizes},
                               int(round(fraction * len(c.ids))), temperature)
    score = c.distance.astype(np.float64) * (1 if keep == "easy" else -1)
    return keep_quotas_in_memory(c.cluster, score, document_hashes(c.ids, 0),
                                 lambda counts: quotas), quotas


COLUMNS = ("kept", "articles", "rev/art", "top-cl %", "nn-cos", "heldout CE")


def line(name: str, m: dict) -> str:
    return (f"{name:<40}{m['kept']:>6.0f}{m['articles']:>9.1f}{m['rev/art']:>8.2f}"
            f"{m['top-cl %']:>9.1f}{m['nn-cos']:>8.3f}{m['heldout CE']:>11.4f}"
            + (f" (sd {m['ce sd']:.4f})" if "ce sd" in m else ""))


def document_losses(c: Corpus) -> np.ndarray:
    counts = Counter()
    for r in c.test:
        counts.update(WORD.findall(r["text"].lower()))
    total = sum(counts.values()) + c.vocabulary
    loss = []
    for r in c.rows:
        words = WORD.findall(r["text"].lower()) or [""]
        loss.append(-np.mean([math.log2((counts.get(w, 0) + 1) / total) for w in words]))
    return np.array(loss)


def char_ngrams(texts) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer
    vectorizer = HashingVectorizer(n_features=512, analyzer="char_wb", ngram_range=(1, 3),
                                   alternate_sign=True, norm="l2", dtype=np.float32)
    return vectorizer.transform([t[:512] for t in texts]).toarray()


def sensitivity_ratios(c: Corpus, embedder: str, sizes=(25, 50, 100, 200, 400), draws=200):
    from transforms.selection.sensitivity import draw_in_memory, values_in_memory
    loss = document_losses(c)
    n = len(loss)
    print(f"\nsensitivity sampling, loss = unigram CE under the held-out split's model: mean "
          f"{loss.mean():.3f} bits/word, CV {loss.std() / loss.mean():.1%}, n = {n}")
    print(f"{'embeddings':<22}" + "".join(f"{'m=' + str(m):>9}" for m in sizes)
          + "   (RMSE / uniform RMSE)")
    variants = (("", 1, "auto"), (" k=2m", 2, "auto"), (" lambda=0", 1, 0.0))
    for name, embeddings in ((embedder, c.embeddings),
                             ("char 1-3-gram", char_ngrams([r["text"] for r in c.rows]))):
        for suffix, k_per_m, holder_lambda in variants:
            cells = []
            for m in sizes:
                cluster, values = values_in_memory(embeddings, loss, k_per_m * m, holder_lambda)
                probability = values / values.sum()
                errors = [(draw_in_memory(values, cluster, m, seed) * loss / (m * probability)
                           ).sum() / n - loss.mean() for seed in range(draws)]
                uniform = math.sqrt(loss.var(ddof=1) / m * (n - m) / (n - 1))
                cells.append(f"{math.sqrt(np.mean(np.square(errors))) / uniform:>9.2f}")
            print(f"{name + suffix:<22}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--embedder", default="hashed")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--heldout", type=float, default=0.2)
    parser.add_argument("--cache", help="an .npy file: embeddings read from it when present, "
                        "else written to it (reuse MiniLM embeddings across runs)")
    parser.add_argument("--sensitivity", action="store_true",
                        help="only the sensitivity-sampling comparison")
    args = parser.parse_args()
    rows = corpus()
    start = time.perf_counter()
    if args.cache and os.path.exists(args.cache):
        embeddings = np.load(args.cache)
        assert len(embeddings) == len(rows), "the cache holds another corpus"
    else:
        embeddings = load_embedder(EmbeddingConfig(model=args.embedder)).embed(
            [r["text"] for r in rows])
        if args.cache:
            np.save(args.cache, embeddings)
    print(f"{len(rows)} documents, {args.embedder} embeddings in "
          f"{time.perf_counter() - start:.1f}s, k = {args.clusters}")
    c = Corpus(rows, embeddings, args.clusters, args.heldout)
    if args.sensitivity:
        sensitivity_ratios(c, args.embedder)
        return
    sizes = np.bincount(c.cluster)
    wiki_articles = len(set(c.article[c.article != ""]))
    print(f"train {len(c.rows)} ({wiki_articles} articles), held out {len(c.test)}; cluster sizes "
          f"min {sizes.min()} median {int(np.median(sizes))} max {sizes.max()}")
    print(f"{'method':<40}{'kept':>6}{'articles':>9}{'rev/art':>8}{'top-cl %':>9}{'nn-cos':>8}"
          f"{'heldout CE':>11}")
    print(line("all (no pruning)", c.metrics(np.ones(len(c.ids), dtype=bool))))
    methods = []
    for cap in (10, 20):
        methods.append((f"balance clusters T={cap}", balance(c, cap)))
    methods.append(("balance column=article T=1",
                    balance(c, 1, np.where(c.article != "", c.article, np.array(c.ids, dtype=object)))))
    for keep in ("easy", "hard"):
        methods.append((f"prototypes {keep} 0.5 per-cluster", prototypes(c, 0.5, keep, True)))
        methods.append((f"prototypes {keep} 0.5 global", prototypes(c, 0.5, keep, False)))
    for eps in (0.05, 0.1, 0.2):
        methods.append((f"semdedup eps={eps}", semdedup(c, eps)[0]))
    for temperature in (0.01, 0.1, 1.0):
        methods.append((f"cluster_complexity 0.5 tau={temperature}",
                        cluster_complexity(c, 0.5, temperature)[0]))
    for name, keep in methods:
        print(line(name, c.metrics(keep)))
        print(line("  uniform, same count", c.uniform(int(keep.sum()), args.seeds)))

    print("\nSemDeDup vs the known revision clusters (revisions of one article):")
    redundant = sum(n - 1 for n in Counter(c.article[c.article != ""].tolist()).values())
    print(f"  {redundant} redundant revisions (beyond the first of each article) in the train split")
    print(f"{'eps':>6}{'dropped':>9}{'same-article':>14}{'precision':>11}{'recall':>8}")
    for eps in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3):
        keep, partner = semdedup(c, eps)
        dropped = np.flatnonzero(~keep)
        same = sum(1 for i in dropped if c.article[i] and c.article[i] == c.article[partner[i]])
        print(f"{eps:>6}{len(dropped):>9}{same:>14}{same / max(len(dropped), 1):>11.3f}"
              f"{same / redundant:>8.3f}")

    print("\nbalance T=20: documents per cluster, before -> after (largest 8 clusters)")
    keep = balance(c, 20)
    for cluster in np.argsort(-sizes)[:8]:
        print(f"  cluster {cluster:>3}: {sizes[cluster]:>4} -> {(keep & (c.cluster == cluster)).sum()}")
    print(f"  clusters capped {(sizes > 20).sum()} of {len(sizes)}; kept {keep.sum()}")
    keep, quotas = cluster_complexity(c, 0.5, 0.1)
    q = np.array([quotas[g] / sizes[g] for g in sorted(quotas)])
    print(f"\ncluster_complexity tau=0.1: per-cluster keep rate min {q.min():.2f} median "
          f"{np.median(q):.2f} max {q.max():.2f}; clusters kept whole {(q >= 1).sum()}, "
          f"emptied {(q == 0).sum()}")


if __name__ == "__main__":
    main()
