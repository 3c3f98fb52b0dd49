"""Selection benchmark on real text (Wikipedia revisions + DCLM pages, ../shared/data).

1. Estimator error: the corpus mean of a proxy LM's per-document loss, estimated from a weighted
   sensitivity sample (Axiotis et al. 2024: `sum_S w l / N`) vs the mean of a uniform sample of the
   same size m (baseline), and of m + k (the same number of loss evaluations, since sensitivity
   sampling also scores the k representatives); mean absolute error over 20 seeds, and ratios.
2. EL2N agreement across seeds (Paul et al. 2021): Spearman correlation between the scores of
   proxies trained from disjoint seed sets, for one model and for an average of several.
3. Time per 10k documents of whole `sluice` jobs (ingest -> stage -> shards) vs the same job
   with no stage (baseline, same run). The machine is shared: compare the ratios, not the seconds.

    python bench/selection.py [--sizes 25,50,100,200,400] [--clusters 50] [--embedder hashed]
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
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SLUICE_QUIET", "1")

from classifiers.embeddings import EmbeddingConfig, load_embedder  # noqa: E402
from classifiers.proxy import ProxyConfig, train_proxy  # noqa: E402
from pipelines.job import run_job  # noqa: E402
from transforms.sensitivity import (assign, fit_centres, nearest_members,  # noqa: E402
                                    sensitivity_values)

SHARED = Path(os.environ.get("SLUICE_SHARED_DATA",
                             Path(__file__).resolve().parent.parent.parent / "shared" / "data"))


def corpus() -> list[dict]:
    rows = []
    root = SHARED / "wiki_versions" / "version_documents"
    for article in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(article.glob("*.txt"), key=lambda p: int(p.stem)):
            rows.append({"id": f"wiki/{article.name}/{path.stem}", "source": "wikipedia",
                         "text": path.read_text(errors="replace")})
    with open(SHARED / "dclm_quality" / "majority_data.jsonl") as f:
        for i, line in enumerate(f):
            rows.append({"id": f"dclm/{i}", "source": "dclm", **json.loads(line)})
    return [r for r in rows if r["text"].strip()]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def estimator_errors(loss, cluster, distance, sizes, seeds, holder_lambda):
    """Mean absolute error of the sensitivity and uniform estimates of mean(loss), per size."""
    representatives = nearest_members(cluster, distance, np.ones(len(loss), dtype=bool))
    rep_loss = np.zeros(cluster.max() + 1)
    for c, row in representatives.items():
        rep_loss[c] = loss[row]
    values = sensitivity_values(rep_loss[cluster], distance, holder_lambda, 2.0)
    probability = values / values.sum()
    k, n, truth = len(representatives), len(loss), loss.mean()
    rows = []
    for m in sizes:
        errors = {"sensitivity": [], "uniform": [], "uniform_m_plus_k": []}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            counts = rng.multinomial(m, probability)
            drawn = counts > 0
            estimate = (counts[drawn] / (m * probability[drawn]) * loss[drawn]).sum() / n
            errors["sensitivity"].append(abs(estimate - truth))
            errors["uniform"].append(abs(loss[rng.choice(n, m, replace=False)].mean() - truth))
            errors["uniform_m_plus_k"].append(
                abs(loss[rng.choice(n, min(n, m + k), replace=False)].mean() - truth))
        rows.append((m, {name: float(np.mean(e)) for name, e in errors.items()}))
    return k, truth, rows


def seed_agreement(texts, labels, config: dict, models: int) -> float:
    """Spearman between EL2N of `models` proxies from seeds 0.. and from seeds 1000.."""
    first = train_proxy(texts, labels, ProxyConfig(**config, models=models, seed=0))
    second = train_proxy(texts, labels, ProxyConfig(**config, models=models, seed=1000))
    return float(spearmanr(first.score(texts, labels)["el2n"],
                           second.score(texts, labels)["el2n"])[0])


def job_seconds(path: str, stages: list, workdir: str) -> float:
    data = {"input": [{"path": path}], "output": tempfile.mkdtemp(dir=workdir),
            "stages": stages}
    _, seconds = timed(run_job, data, [], log=lambda *_: None)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,100,200,400")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--clusters", default="50,400", help="k values, comma-separated")
    parser.add_argument("--lambda", dest="holder_lambda", type=float, default=1.0)
    parser.add_argument("--embedder", choices=("hashed", "minilm"), default="hashed")
    parser.add_argument("--skip-jobs", action="store_true", help="skip the Beam job timings")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    rows = corpus()
    texts = [r["text"] for r in rows]
    n = len(rows)
    print(f"corpus: {n} real documents ({sum(r['source'] == 'wikipedia' for r in rows)} "
          f"Wikipedia revisions, {sum(r['source'] == 'dclm' for r in rows)} DCLM pages)")

    # 1. the loss to estimate: a proxy LM's mean token cross-entropy on every document
    lm, train_s = timed(train_proxy, texts, None, ProxyConfig(models=1, threads=2))
    scores, score_s = timed(lm.score, texts)
    loss = scores["lm_loss"]
    print(f"proxy LM (1 model, 200 steps): trained in {train_s:.1f}s; scored {n} docs in "
          f"{score_s:.1f}s = {score_s / n * 1e4:.0f}s per 10k docs (first 512 bytes each)")
    embedder = load_embedder(EmbeddingConfig(model=args.embedder, threads=2))
    embeddings, embed_s = timed(embedder.embed, texts)
    print(f"embeddings: {args.embedder} {embeddings.shape[1]}-d, {embed_s / n * 1e4:.0f}s per 10k "
          f"docs", flush=True)
    for clusters in [int(k) for k in args.clusters.split(",")]:
        centres = fit_centres(embeddings, clusters, 0)
        cluster, distance = assign(embeddings, centres)
        k, truth, table = estimator_errors(loss, cluster, distance, sizes, args.seeds,
                                           args.holder_lambda)
        reps = nearest_members(cluster, distance, np.ones(n, dtype=bool))
        rep_loss = np.array([loss[reps[c]] for c in cluster])
        print(f"\n1. estimating the corpus mean loss {truth:.4f} nats/byte; k={k}, lambda="
              f"{args.holder_lambda}; corr(l(x), l(r_a(x))) = {np.corrcoef(loss, rep_loss)[0, 1]:.2f};"
              f" mean |error| over {args.seeds} seeds")
        print(f"{'m':>6} {'sensitivity':>12} {'uniform(m)':>11} {'ratio':>7} "
              f"{'uniform(m+k)':>13} {'ratio':>7}")
        for m, errors in table:
            s, u, uk = errors["sensitivity"], errors["uniform"], errors["uniform_m_plus_k"]
            print(f"{m:>6} {s:>12.5f} {u:>11.5f} {u / s:>6.2f}x {uk:>13.5f} {uk / s:>6.2f}x")
        middle = sizes[len(sizes) // 2]
        sweep = []
        for holder_lambda in (0.0, 0.1, 1.0, 4.0):
            errors = estimator_errors(loss, cluster, distance, [middle], args.seeds,
                                      holder_lambda)[2][0][1]
            sweep.append(f"{holder_lambda}: {errors['uniform'] / errors['sensitivity']:.2f}x")
        print(f"   lambda sweep at m={middle} (uniform(m) error / sensitivity error): "
              + ", ".join(sweep), flush=True)
    print("   (ratio > 1: the sensitivity estimate is that many times more accurate)")

    # 2. EL2N seed agreement
    labelled = [r for r in rows if r["source"] == "dclm"]
    ltexts, llabels = [r["text"] for r in labelled], [r["label"] for r in labelled]
    classifier = {"label_field": "label", "threads": 2}
    wiki = texts[:300]
    lm_config = {"threads": 2, "steps": 100}
    print("\n2. EL2N Spearman correlation between proxies from disjoint seeds")
    for name, (t, y, config) in {"classifier, DCLM quality labels (499)": (ltexts, llabels, classifier),
                                 "byte LM (100 steps), Wikipedia (300)": (wiki, None, lm_config)}.items():
        agreement = {models: seed_agreement(t, y, config, models) for models in (1, 4)}
        print(f"   {name}: 1 model vs 1 model {agreement[1]:.3f}; "
              f"mean of 4 vs mean of 4 {agreement[4]:.3f}", flush=True)

    if args.skip_jobs:
        return 0
    # 3. whole jobs, per 10k documents
    with tempfile.TemporaryDirectory() as workdir:
        path = f"{workdir}/corpus.jsonl"
        with open(path, "w") as f:
            for row, value in zip(rows, loss):
                f.write(json.dumps(row | {"proxy_loss": float(value)}) + "\n")
        jobs = {
            "no stage (baseline)": [],
            "el2n, byte LM (2 models)": [{"el2n": {"proxy": {"models": 2, "threads": 1}}}],
            "el2n, classifier (4 models)": [{"el2n": {"proxy": {"label_field": "label"}}}],
            "sensitivity, hashed, --loss-field": [{"sensitivity": {
                "size": 200, "clusters": 50, "loss_field": "proxy_loss",
                "embedding": {"model": "hashed"}}}],
        }
        print(f"\n3. whole jobs on {n} docs, 2 worker processes (FnApiRunner)")
        baseline = None
        for name, stages in jobs.items():
            seconds = job_seconds(path, stages, workdir)
            baseline = baseline or seconds
            print(f"   {name:40s} {seconds:7.1f}s  {seconds / n * 1e4:7.0f}s per 10k docs  "
                  f"{seconds / baseline:5.2f}x baseline", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
