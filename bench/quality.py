"""Quality scoring benchmark: ROC-AUC on human labels, and scoring throughput vs plain fastText.

1. `../shared/data/dclm_quality/majority_data.jsonl` (499 real Common Crawl pages, human 0/1
   labels), stratified 5-fold cross-validation (seeded), AUC over the pooled out-of-fold scores
   (and the mean over folds):
   - the fastText classifier, DCLM recipe, trained on the 4 training folds;
   - every heuristic signal alone, its direction chosen on the training folds;
   - CCNet perplexity under a 5-gram KenLM model of Wikipedia text (`wiki_versions`, estimated by
     `classifiers.arpa`, no labelled data involved);
   - ensembles (logistic regression and LightGBM) over fastText score, perplexity, length and
     the heuristic signals, nested without leakage: the fastText feature of training rows is
     itself out-of-fold (inner 5-fold CV within the training folds).
   Reference points on these labels: fastText DCLM recipe 0.80, document length alone 0.76.
2. Throughput of the `quality` stage against the ceiling, fastText's `predict` called on each
   text in a plain Python loop (DCLM's scoring loop): the stage's DoFn on 1000-document record
   batches, a whole `sluice` job (ingest JSONL, score, write Arrow shards) on one in-process
   worker, and the stage's share of that job (job minus the same job without the stage).
   Timings are CPU seconds of this process (`time.process_time`, the in-process runner's
   threads included), so docs/s are per core; other jobs share these cores, so compare the
   ratios printed in the same run.

    python bench/quality.py [--folds 5] [--docs 20000] [--skip-auc] [--skip-throughput]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("SLUICE_QUIET", "1")

from classifiers import fasttext_quality, kenlm_model  # noqa: E402
from transforms.quality.heuristics import Heuristics, HeuristicsConfig  # noqa: E402
from transforms.quality.perplexity import LineTokenizer, perplexity  # noqa: E402

SHARED = Path(os.environ.get("SLUICE_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_labelled() -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in (SHARED / "dclm_quality" / "majority_data.jsonl").open()]
    return [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])


# --- features -----------------------------------------------------------------------------------

def heuristic_features(texts: list[str]) -> dict[str, np.ndarray]:
    heuristics = Heuristics(HeuristicsConfig(c4_clean_lines=False, drop=False))
    rows = [heuristics.evaluate(t)[1] for t in texts]
    features = {name: np.array([r[name] for r in rows]) for name in rows[0]}
    features["log_chars"] = np.log1p([len(t) for t in texts])
    features["log_lines"] = np.log1p([t.count("\n") + 1 for t in texts])
    return features


def wikipedia_perplexity(texts: list[str], workdir: str) -> np.ndarray:
    """log perplexity under a 5-gram KenLM model of the newest Wikipedia revisions."""
    tokenizer = LineTokenizer()
    sentences = []
    for article in sorted((SHARED / "wiki_versions" / "version_documents").iterdir()):
        newest = max(article.glob("*.txt"), key=lambda p: int(p.stem))
        sentences += [line.split() for line in tokenizer.lines(newest.read_text("utf-8"))]
    path = os.path.join(workdir, "wiki.arpa")
    kenlm_model.build(sentences, path, order=5)
    model = kenlm_model.load(path)
    values = []
    for text in texts:
        lines = tokenizer.lines(text)
        values.append(perplexity(kenlm_model.line_log10(model, lines), lines))
    return np.log(np.nan_to_num(np.array(values), nan=1e6))


def hq_cc(labels) -> list[str]:
    return [fasttext_quality.POSITIVE if y else fasttext_quality.NEGATIVE for y in labels]


def fasttext_scores(train_texts, train_labels, test_texts) -> np.ndarray:
    """P(hq) of the test texts from a DCLM-recipe model trained (in memory) on the rest."""
    model = fasttext_quality.train_model(train_texts, hq_cc(train_labels))
    return fasttext_quality.Classifier(model).probability(test_texts, fasttext_quality.POSITIVE)


# --- evaluation ---------------------------------------------------------------------------------

def oriented(train_values, train_labels, test_values):
    """Flip a signal whose training-fold AUC is below 0.5 (direction learnt without the test)."""
    from sklearn.metrics import roc_auc_score

    return test_values if roc_auc_score(train_labels, train_values) >= 0.5 else -test_values


def evaluate(texts: list[str], labels: np.ndarray, folds: int, seed: int) -> dict[str, dict]:
    from lightgbm import LGBMClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.time()
    signals = heuristic_features(texts)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as workdir:
        signals["wiki_log_perplexity"] = wikipedia_perplexity(texts, workdir)
    print(f"features: {len(signals)} unsupervised signals in {time.time() - started:.0f}s",
          file=sys.stderr)
    names = sorted(signals)
    matrix = np.column_stack([signals[n] for n in names])
    texts_array = np.array(texts, dtype=object)

    outer = StratifiedKFold(folds, shuffle=True, random_state=seed)
    predictions: dict[str, np.ndarray] = {}
    fold_aucs: dict[str, list[float]] = {}

    def record(name, test, values):
        predictions.setdefault(name, np.zeros(len(labels)))[test] = values
        fold_aucs.setdefault(name, []).append(roc_auc_score(labels[test], values))

    for fold, (train, test) in enumerate(outer.split(matrix, labels)):
        ft_test = fasttext_scores(list(texts_array[train]), labels[train],
                                  list(texts_array[test]))
        record("fasttext_dclm", test, ft_test)
        for i, name in enumerate(names):
            record(name, test, oriented(matrix[train, i], labels[train], matrix[test, i]))
        # Out-of-fold fastText scores for the training rows, for the stacker.
        ft_train = np.zeros(len(train))
        inner = StratifiedKFold(folds, shuffle=True, random_state=seed + 1 + fold)
        for inner_train, inner_test in inner.split(train, labels[train]):
            ft_train[inner_test] = fasttext_scores(
                list(texts_array[train[inner_train]]), labels[train[inner_train]],
                list(texts_array[train[inner_test]]))
        x_train = np.column_stack([ft_train, matrix[train]])
        x_test = np.column_stack([ft_test, matrix[test]])
        logistic = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        record("ensemble_logistic", test,
               logistic.fit(x_train, labels[train]).predict_proba(x_test)[:, 1])
        boosted = LGBMClassifier(n_estimators=300, learning_rate=0.02, num_leaves=7,
                                 min_child_samples=10, subsample=0.8, subsample_freq=1,
                                 colsample_bytree=0.7, random_state=seed, verbose=-1)
        record("ensemble_lightgbm", test,
               boosted.fit(x_train, labels[train]).predict_proba(x_test)[:, 1])
        record("ensemble_mean", test, (predictions["ensemble_logistic"][test]
                                       + predictions["ensemble_lightgbm"][test]) / 2)
        print(f"fold {fold + 1}/{folds} done ({time.time() - started:.0f}s)", file=sys.stderr)
    return {name: {"pooled_auc": roc_auc_score(labels, predictions[name]),
                   "mean_auc": float(np.mean(fold_aucs[name])),
                   "std_auc": float(np.std(fold_aucs[name]))} for name in predictions}


# --- throughput ---------------------------------------------------------------------------------

def throughput(texts: list[str], labels: np.ndarray, docs: int) -> dict:
    from pipelines.job import run_job
    from transforms.quality.classifier import QualityConfig, QualityFn

    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as workdir:
        model_path = os.path.join(workdir, "dclm.bin")
        fasttext_quality.train(texts, hq_cc(labels), model_path)
        corpus = [texts[i % len(texts)] for i in range(docs)]
        corpus_path = os.path.join(workdir, "corpus.jsonl")
        with open(corpus_path, "w", encoding="utf-8") as f:
            for i, text in enumerate(corpus):
                f.write(json.dumps({"id": str(i), "text": text}) + "\n")

        def ceiling() -> float:
            """DCLM's own scoring loop: top label per text, P(hq) or its complement."""
            model = fasttext_quality.load(model_path)
            start = time.process_time()
            for text in corpus:
                top, probability = model.predict(text.replace("\n", " "))
                _ = probability[0] if top[0] == "__label__hq" else 1 - probability[0]
            return time.process_time() - start

        def dofn() -> float:
            import pyarrow as pa

            batches = [pa.RecordBatch.from_pydict({"id": [str(i) for i in range(s, s + 1000)],
                                                   "text": corpus[s: s + 1000]})
                       for s in range(0, docs, 1000)]
            fn = QualityFn(QualityConfig(model=model_path))
            fn.setup()
            start = time.process_time()
            for batch in batches:
                for _ in fn.process(batch):
                    pass
            return time.process_time() - start

        def job(stages: list[dict]) -> float:
            start = time.process_time()  # one in-process worker: the runner's threads all count
            run_job({"input": [{"path": corpus_path}], "output": os.path.join(workdir, "out"),
                     "stages": stages}, ["--direct_num_workers", "1"], log=lambda *_: None)
            return time.process_time() - start

        rounds: dict[str, list[float]] = {"ceiling": [], "dofn": [], "ingest_only": [], "job": []}
        for _ in range(3):  # interleaved, best of 3: other jobs share these cores
            rounds["ceiling"].append(ceiling())
            rounds["dofn"].append(dofn())
            rounds["ingest_only"].append(job([]))
            rounds["job"].append(job([{"quality": {"model": model_path}}]))
        best = {k: min(v) for k, v in rounds.items()}
        return {"docs": docs, "mean_chars": float(np.mean([len(t) for t in corpus])),
                "ceiling_docs_per_s": docs / best["ceiling"],
                "dofn_docs_per_s": docs / best["dofn"], "job_docs_per_s": docs / best["job"],
                "stage_in_job_docs_per_s": docs / max(best["job"] - best["ingest_only"], 1e-9)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--skip-auc", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    texts, labels = load_labelled()
    print(f"dclm_quality: {len(texts)} pages, {labels.sum()} labelled high quality")
    if not args.skip_auc:
        results = evaluate(texts, labels, args.folds, args.seed)
        print(f"\nROC-AUC, {args.folds}-fold CV (pooled out-of-fold; mean +- std over folds)")
        for name, r in sorted(results.items(), key=lambda kv: -kv[1]["pooled_auc"]):
            print(f"  {name:42s} {r['pooled_auc']:.3f}   ({r['mean_auc']:.3f} +- "
                  f"{r['std_auc']:.3f})")
        best = max(("ensemble_logistic", "ensemble_lightgbm", "ensemble_mean"),
                   key=lambda n: results[n]["pooled_auc"])
        print(f"best ensemble {best}: {results[best]['pooled_auc']:.3f} vs fastText "
              f"{results['fasttext_dclm']['pooled_auc']:.3f} (ratio "
              f"{results[best]['pooled_auc'] / results['fasttext_dclm']['pooled_auc']:.3f})")
    if not args.skip_throughput:
        r = throughput(texts, labels, args.docs)
        print(f"\nthroughput, {r['docs']:,} docs of {r['mean_chars']:,.0f} chars on average "
              "(best of 3, per core)")
        print(f"  fastText predict in a plain loop (ceiling) {r['ceiling_docs_per_s']:>10,.0f} docs/s")
        print(f"  quality stage DoFn on record batches        {r['dofn_docs_per_s']:>10,.0f} docs/s"
              f"   ratio {r['dofn_docs_per_s'] / r['ceiling_docs_per_s']:.2f}")
        print(f"  whole job: ingest JSONL + score + write      {r['job_docs_per_s']:>10,.0f} docs/s"
              f"   ratio {r['job_docs_per_s'] / r['ceiling_docs_per_s']:.2f}")
        print(f"  quality stage inside the job (job - ingest-only job) "
              f"{r['stage_in_job_docs_per_s']:>8,.0f} docs/s   ratio "
              f"{r['stage_in_job_docs_per_s'] / r['ceiling_docs_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
