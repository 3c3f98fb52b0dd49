"""Nemotron-CC ensemble of two real classifiers: ROC-AUC of each member and of the bucket ensemble.

On `../shared/data/dclm_quality/majority_data.jsonl` (499 real Common Crawl pages, human 0/1
labels), stratified 5-fold cross-validation (seeded), nested: in each outer fold every model is
trained on the 4 training folds only, and its hyper-parameters are chosen there too.

Members:
- `fasttext_dclm`: fastText, DCLM recipe (`classifiers/fasttext_quality.py`);
- `embedding_minilm`: all-MiniLM-L6-v2 embeddings + logistic regression, C picked by an inner
  5-fold CV (ROC-AUC) inside the training folds (`classifiers/embedding_quality.py`, what
  `sluice quality train-embedding` trains and the `embedding_quality` stage scores);
- `embedding_hashed`: the same on the model-free hashed embedding, for reference.

Ensemble, as the `buckets` stage computes it (transforms/quality/buckets.py): per member, the
length-weighted 5th..95th percentiles of its scores are thresholds, a score maps to its interval
0-19, and a page's bucket is the max over members. The percentile table is computed two ways:
- `table: scored fold`: from the test fold's own scores (the stage computes its table from the
  corpus it buckets, labels unused);
- `table: training folds`: from out-of-fold scores of the training pages (inner 5-fold CV), so
  nothing of the test fold is used at all.
AUC of the integer buckets (ties count half). Also the mean of the members' probabilities.

    python bench/nemotron.py [--folds 5] [--seed 0] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("SLUICE_QUIET", "1")

from classifiers import embedding_quality, fasttext_quality  # noqa: E402
from classifiers.embeddings import EmbeddingConfig, load_embedder  # noqa: E402
from transforms.quality.buckets import ensemble_buckets, weighted_percentiles  # noqa: E402

SHARED = Path(os.environ.get("SLUICE_SHARED_DATA", REPO.parent / "shared" / "data"))
PERCENTILES = list(range(5, 100, 5))


def load_labelled() -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in (SHARED / "dclm_quality" / "majority_data.jsonl").open()]
    return [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])


def fasttext_member(texts, labels, train, test) -> np.ndarray:
    model = fasttext_quality.train_model([texts[i] for i in train],
                                         [fasttext_quality.POSITIVE if labels[i]
                                          else fasttext_quality.NEGATIVE for i in train])
    return fasttext_quality.Classifier(model).probability([texts[i] for i in test],
                                                          fasttext_quality.POSITIVE)


def embedding_member(vectors, labels, train, test, name, seed) -> np.ndarray:
    model = embedding_quality.fit(vectors[train], labels[train], {"model": name}, 5, seed)
    return model.probability_of(vectors[test])


def out_of_fold(score, labels, train, seed) -> np.ndarray:
    """Scores of the training pages from models trained on the other inner folds."""
    from sklearn.model_selection import StratifiedKFold

    values = np.zeros(len(train))
    for inner_train, inner_test in StratifiedKFold(5, shuffle=True, random_state=seed).split(
            train, labels[train]):
        values[inner_test] = score(train[inner_train], train[inner_test])
    return values


def bucket(scores: dict[str, np.ndarray], reference: dict[str, np.ndarray],
           weights: np.ndarray) -> np.ndarray:
    table = {name: weighted_percentiles(reference[name], weights, PERCENTILES)
             for name in scores}
    return ensemble_buckets(scores, table)


def main() -> int:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    texts, labels = load_labelled()
    chars = np.array([len(t) for t in texts], dtype=np.float64)
    print(f"dclm_quality: {len(texts)} pages, {labels.sum()} labelled high quality")
    started = time.time()
    vectors = {}
    for name in ("minilm", "hashed"):  # unsupervised: embedded once, no label involved
        vectors[name] = load_embedder(EmbeddingConfig(model=name, threads=args.threads)).embed(
            texts)
        print(f"{name} embeddings {vectors[name].shape} ({time.time() - started:.0f}s)",
              file=sys.stderr)

    members = {
        "fasttext_dclm": lambda tr, te: fasttext_member(texts, labels, tr, te),
        "embedding_minilm": lambda tr, te: embedding_member(vectors["minilm"], labels, tr, te,
                                                            "minilm", args.seed),
        "embedding_hashed": lambda tr, te: embedding_member(vectors["hashed"], labels, tr, te,
                                                            "hashed", args.seed),
    }
    ensembles = {"fasttext_dclm + embedding_minilm": ["fasttext_dclm", "embedding_minilm"],
                 "fasttext_dclm + embedding_hashed": ["fasttext_dclm", "embedding_hashed"]}
    predictions: dict[str, np.ndarray] = {}
    fold_aucs: dict[str, list[float]] = {}

    def record(name, test, values):
        predictions.setdefault(name, np.zeros(len(labels)))[test] = values
        fold_aucs.setdefault(name, []).append(roc_auc_score(labels[test], values))

    outer = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
    for fold, (train, test) in enumerate(outer.split(texts, labels)):
        scores = {name: score(train, test) for name, score in members.items()}
        oof = {name: out_of_fold(score, labels, train, args.seed + 1 + fold)
               for name, score in members.items()}
        for name, values in scores.items():
            record(name, test, values)
        for name, parts in ensembles.items():
            record(f"buckets({name}), table: scored fold", test,
                   bucket({m: scores[m] for m in parts}, scores, chars[test]))
            record(f"buckets({name}), table: training folds", test,
                   bucket({m: scores[m] for m in parts}, oof, chars[train]))
            record(f"mean P({name})", test, np.mean([scores[m] for m in parts], axis=0))
        print(f"fold {fold + 1}/{args.folds} done ({time.time() - started:.0f}s)",
              file=sys.stderr)

    print(f"\nROC-AUC, {args.folds}-fold nested CV (pooled out-of-fold; mean +- std over folds)")
    for name in sorted(predictions, key=lambda n: -roc_auc_score(labels, predictions[n])):
        print(f"  {name:62s} {roc_auc_score(labels, predictions[name]):.3f}   "
              f"({np.mean(fold_aucs[name]):.3f} +- {np.std(fold_aucs[name]):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
