"""Ground truth for dedup quality: exact all-pairs Jaccard, pair-level cluster metrics, and
web-like perturbed copies of real documents. Used by tests/test_dedup.py and bench/dedup.py.

The ground truth re-derives shingles from the definition (Python's `re` over the lowercased text,
string n-grams, no hashing), independently of the Arrow/numpy path in `minhash`, and computes
every pair's Jaccard exactly with one sparse product (intersection counts = X X^T).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix, triu
from scipy.sparse.csgraph import connected_components

WORD = re.compile(r"\w+")


def word_shingles(text: str, n: int = 5) -> set[str]:
    tokens = WORD.findall(text.lower())
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def jaccard_pairs(texts: list[str], n: int = 5, min_jaccard: float = 0.5):
    """(left, right, jaccard) for every pair i < j with exact Jaccard >= min_jaccard."""
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for doc, text in enumerate(texts):
        for shingle in word_shingles(text, n):
            rows.append(doc)
            cols.append(vocabulary.setdefault(shingle, len(vocabulary)))
    x = csr_matrix((np.ones(len(rows), np.int32), (rows, cols)),
                   shape=(len(texts), max(1, len(vocabulary))))
    sizes = np.asarray(x.sum(axis=1)).ravel()
    inter = triu(x @ x.T, k=1).tocoo()
    jaccard = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    keep = jaccard >= min_jaccard
    return inter.row[keep], inter.col[keep], jaccard[keep]


def cluster_metrics(cluster_of: np.ndarray, left, right, jaccard, threshold: float = 0.8,
                    similar: float = 0.5) -> dict:
    """Pair recall at `threshold` (similar pairs put in one cluster) and the share of
    same-cluster pairs with Jaccard >= `similar`. `cluster_of` labels every document
    (singletons with labels of their own); pairs below `similar` need not be listed."""
    same = cluster_of[left] == cluster_of[right]
    dup = jaccard >= threshold
    _, sizes = np.unique(cluster_of, return_counts=True)
    clustered_pairs = int((sizes * (sizes - 1) // 2).sum())
    similar_clustered = int((same & (jaccard >= similar)).sum())
    return {
        "pairs_at_threshold": int(dup.sum()),
        "recall": float(same[dup].mean()) if dup.any() else 1.0,
        "clustered_pairs": clustered_pairs,
        "precision_at_similar": similar_clustered / clustered_pairs if clustered_pairs else 1.0,
        "removed": int(len(cluster_of) - len(sizes)),
    }


def oracle_removed(n_docs: int, left, right, jaccard, threshold: float = 0.8) -> int:
    """Documents an exact oracle removes: all but one per component of pairs >= threshold."""
    keep = jaccard >= threshold
    graph = coo_matrix((np.ones(int(keep.sum())), (left[keep], right[keep])),
                       shape=(n_docs, n_docs))
    components, _ = connected_components(graph, directed=False)
    return n_docs - components


def wiki_documents(root: Path, articles: int | None = None) -> list[dict]:
    """Revisions of `articles` Wikipedia articles (sorted by name) from wiki_versions."""
    folders = sorted(p for p in (Path(root) / "version_documents").iterdir() if p.is_dir())
    docs = []
    for folder in folders[:articles]:
        for path in sorted(folder.glob("*.txt"), key=lambda p: int(p.stem)):
            docs.append({"id": f"wiki/{folder.name}/{path.stem}",
                         "text": path.read_text(encoding="utf-8", errors="replace")})
    return docs


BOILERPLATE = ["Home | About | Contact | Privacy policy", "Share this article on social media",
               "Copyright (c) All rights reserved.", "Skip to main content", "Subscribe"]


def perturb(text: str, rng: np.random.Generator, rate: float) -> str:
    """A web-like near copy: word deletions, substitutions and repeats at `rate`, plus
    navigation boilerplate around the text."""
    words = text.split(" ")
    out = []
    for word in words:
        roll = rng.random()
        if roll < rate / 3:
            continue
        if roll < 2 * rate / 3:
            out.append(words[rng.integers(len(words))])
        elif roll < rate:
            out.extend([word, word])
        else:
            out.append(word)
    header = BOILERPLATE[rng.integers(len(BOILERPLATE))]
    footer = BOILERPLATE[rng.integers(len(BOILERPLATE))]
    return f"{header}\n{' '.join(out)}\n{footer}"


def perturbed_copies(docs: list[dict], rng: np.random.Generator, fraction: float = 0.5,
                     max_rate: float = 0.08, tag: str = "copy") -> list[dict]:
    """Near copies of a random `fraction` of `docs`, edit rates uniform in [0, max_rate]."""
    chosen = rng.choice(len(docs), size=int(len(docs) * fraction), replace=False)
    return [{"id": f"{tag}/{k}/{docs[i]['id']}",
             "text": perturb(docs[i]["text"], rng, float(rng.uniform(0, max_rate)))}
            for k, i in enumerate(sorted(chosen))]
