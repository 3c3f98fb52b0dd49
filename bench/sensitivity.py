"""Sensitivity sampling vs uniform at EQUAL SIZE, on held-out real text (issue #20, item 3).

Corpora (../shared/data): `wiki` = Wikipedia revisions (wiki_versions), `dclm` = the 499 DCLM
pages (majority_data.jsonl), `mix` = both. Each corpus is split by group (a Wikipedia article, or
a DCLM page) with a fixed hash: 20% of the groups fit the loss model, the rest is the corpus whose
mean loss is estimated, so the loss never saw the documents it scores. Losses:
- `ce`: unigram cross-entropy (bits/word, add-one) under a unigram model of the held-out 20%;
- `zlib`: zlib code length (bits/byte, level 9) with a 32 KiB preset dictionary of held-out text.

Equal size: every design spends m loss evaluations in all (representatives included), and its
error is compared with a uniform sample of m documents without replacement. Per (corpus, loss, m):
mean absolute error of the mean-loss estimate over `--seeds` seeds (the issue's protocol: the same
seeds for each design), ratio design / uniform (< 1: better); the same MAE ratio over `--draws`
draws (20 seeds leave each cell's ratio about +-25% noisy); and the RMSE ratio over `--draws`
draws against the exact uniform RMSE. Rows:
- `old defaults`: the stage before this change (hashed words, k = m, lambda auto, m balanced
  draws, plus k representatives with weight 0): 2m evaluations, compared with uniform(m) as the
  old bench did, i.e. NOT equal size;
- `paper, k=m/4`: Axiotis et al. at equal size: k = m/4 representatives + 3m/4 draws with
  p ~ l(r) + lambda d^2 (lambda auto), char_ngrams embeddings;
- `stratified` (the stage's default design, marked *; the stage's own draw functions):
  char_ngrams embeddings, m equal-count strata along the first principal direction, one
  systematic allocation, uniform inside each stratum (`draw_in_memory` with equal values).

    nice python bench/sensitivity.py [--sizes 25,50,100,200] [--seeds 20] [--draws 500]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SLUICE_QUIET", "1")

from classifiers.embeddings import EmbeddingConfig, load_embedder  # noqa: E402
from transforms.selection.pruning import document_hashes  # noqa: E402
from transforms.selection.sensitivity import (draw_in_memory, projection_strata,  # noqa: E402
                                              stratum_of, values_in_memory)

SHARED = Path(os.environ.get("SLUICE_SHARED_DATA",
                             Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
WORD = re.compile(r"\w+")


def wiki_rows() -> list[dict]:
    rows = []
    root = SHARED / "wiki_versions" / "version_documents"
    for article in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(article.glob("*.txt"), key=lambda p: int(p.stem)):
            text = path.read_text(errors="replace")
            if text.strip():
                rows.append({"group": f"wiki/{article.name}", "text": text})
    return rows


def dclm_rows() -> list[dict]:
    with open(SHARED / "dclm_quality" / "majority_data.jsonl") as f:
        rows = [{"group": f"dclm/{i}", "text": json.loads(line)["text"]} for i, line in enumerate(f)]
    return [r for r in rows if r["text"].strip()]


def held_out_split(rows: list[dict], share: float = 0.2) -> tuple[list[dict], list[dict]]:
    """(estimated corpus, loss-model documents), split by group."""
    model = document_hashes([r["group"] for r in rows], 12345) < share
    return [r for r, m in zip(rows, model) if not m], [r for r, m in zip(rows, model) if m]


def unigram_loss(rows: list[dict], model_rows: list[dict]) -> np.ndarray:
    counts = Counter(w for r in model_rows for w in WORD.findall(r["text"].lower()))
    words = [WORD.findall(r["text"].lower()) or [""] for r in rows]
    total = sum(counts.values()) + len(set(counts).union(*map(set, words)))
    return np.array([-np.mean([math.log2((counts.get(w, 0) + 1) / total) for w in ws])
                     for ws in words])


def zlib_loss(rows: list[dict], model_rows: list[dict]) -> np.ndarray:
    dictionary = "\n".join(r["text"] for r in model_rows).encode()[-32768:]
    out = []
    for r in rows:
        data = r["text"].encode()
        c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, dictionary)
        out.append(8 * len(c.compress(data) + c.flush()) / len(data))
    return np.array(out)


def uniform_errors(loss: np.ndarray, m: int, seeds: int) -> np.ndarray:
    n = len(loss)
    return np.array([loss[np.random.default_rng([s, 7]).choice(n, m, replace=False)].mean()
                     for s in range(seeds)]) - loss.mean()


def weighted_errors(loss, values, cluster, draws, seeds, offset=0):
    """Errors of `sum_S w l / N` (weights count / (draws p)), reps weight 0, per seed."""
    p = values / values.sum()
    return np.array([(draw_in_memory(values, cluster, draws, s + offset) * loss / (draws * p)
                      ).sum() / len(loss) for s in range(seeds)]) - loss.mean()


def stratified_errors(loss, strata, m, seeds, offset=0):
    """Errors of the stage's stratified draw: weights count * N / m, so the estimate is
    `sum count * l / m`."""
    ones = np.ones(len(loss))
    return np.array([(draw_in_memory(ones, strata, m, s + offset) * loss).sum() / m
                     for s in range(seeds)]) - loss.mean()


def exact_uniform_rmse(loss, m):
    n = len(loss)
    return math.sqrt(loss.var(ddof=1) / m * (n - m) / (n - 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="25,50,100,200")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--no-old", action="store_true", help="skip the old-defaults rows")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    start = time.perf_counter()
    wiki, dclm = wiki_rows(), dclm_rows()
    hashed = load_embedder(EmbeddingConfig(model="hashed"))
    chars = load_embedder(EmbeddingConfig(model="char_ngrams"))
    print(f"{'corpus':<6}{'loss':<6}{'m':>5}  {'design':<38}{'MAE':>8}{'uniform':>8}"
          f"{'ratio':>7}{'MAE ratio':>10}{'RMSE ratio':>11}")
    print(f"{'':<55}{'(' + str(args.seeds) + ' seeds)':>23}{'(' + str(args.draws) + ' draws)':>21}")
    for corpus, rows in (("wiki", wiki), ("dclm", dclm), ("mix", wiki + dclm)):
        estimated, model_rows = held_out_split(rows)
        texts = [r["text"] for r in estimated]
        losses = {"ce": unigram_loss(estimated, model_rows), "zlib": zlib_loss(estimated, model_rows)}
        e_chars = chars.embed(texts)
        e_hashed = None if args.no_old else hashed.embed(texts)
        n = len(texts)
        print(f"# {corpus}: {n} documents estimated, {len(model_rows)} fit the loss; "
              + ", ".join(f"{k} mean {v.mean():.3f} CV {v.std() / v.mean():.1%}"
                          for k, v in losses.items()), flush=True)
        for m in sizes:
            if m > n // 4:
                continue
            k = max(2, m // 4)
            old = (None if args.no_old else
                   {name: values_in_memory(e_hashed, loss, m) for name, loss in losses.items()})
            paper = {name: values_in_memory(e_chars, loss, k) for name, loss in losses.items()}
            _, strata = stratum_of(e_chars, projection_strata(e_chars, m))
            for name, loss in losses.items():
                uniform = np.abs(uniform_errors(loss, m, args.seeds)).mean()
                uniform_many = np.abs(uniform_errors(loss, m, args.draws)).mean()
                exact = exact_uniform_rmse(loss, m)
                designs = []
                if old:
                    cluster, values = old[name]
                    designs.append(("old defaults (hashed, k=m; 2m evals)",
                                    lambda s, o=0: weighted_errors(loss, values, cluster, m, s, o)))
                cluster_p, values_p = paper[name]
                designs.append((f"paper, k=m/4={k} + {m - k} draws",
                                lambda s, o=0: weighted_errors(loss, values_p, cluster_p, m - k,
                                                               s, o)))
                designs.append(("* stratified (default)",
                                lambda s, o=0: stratified_errors(loss, strata, m, s, o)))
                for label, errors in designs:
                    mae = np.abs(errors(args.seeds)).mean()
                    many = errors(args.draws, 1000)
                    rmse = math.sqrt(np.mean(np.square(many)))
                    print(f"{corpus:<6}{name:<6}{m:>5}  {label:<38}{mae:>8.4f}{uniform:>8.4f}"
                          f"{mae / uniform:>7.2f}{np.abs(many).mean() / uniform_many:>10.2f}"
                          f"{rmse / exact:>11.2f}", flush=True)
    print(f"total {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
