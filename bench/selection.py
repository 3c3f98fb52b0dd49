"""Selection benchmark on real text (Wikipedia revisions + DCLM pages, ../shared/data).

1. Estimator error: the corpus mean of a proxy LM's per-document loss (a third loss beside
   bench/sensitivity.py's two), estimated from the stage's sample: the default `stratified`
   design (char n-gram strata) and the `clusters` design (k = m clusters, lambda auto, draws
   balanced over clusters; Axiotis et al. 2024: `sum_S w l / N`), vs the mean of a uniform sample
   of the same size m (baseline), and of m + k = 2m (the clusters design's evaluations); RMSE over
   20 seeds (clusters and strata fitted once per m), plus the spec's plain i.i.d. draw.
2. EL2N rank stability across seeds: bench/el2n.py (byte LM, token LM, classifier).
3. Time per 10k documents of whole `sluice` jobs (ingest -> stage -> shards) vs the same job
   with no stage (baseline, same run). The machine is shared: compare the ratios, not the seconds.

    python bench/selection.py [--sizes 25,50,100,200,400] [--embedder hashed]
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SLUICE_QUIET", "1")

from classifiers.embeddings import EmbeddingConfig, load_embedder  # noqa: E402
from classifiers.proxy import ProxyConfig, train_proxy  # noqa: E402
from pipelines.job import run_job  # noqa: E402
from transforms.selection.sensitivity import (draw_in_memory, projection_strata,  # noqa: E402
                                              stratum_of, values_in_memory)

# the byte LM that was the default text proxy before the token LM (issue #20): 512 bytes, width 32
BYTE_LM = {"lm": "bytes", "context": 128, "width": 32, "layers": 1, "heads": 2,
           "max_tokens": 512, "learning_rate": 3e-3}
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


def estimator_errors(loss, embeddings, char_embeddings, sizes, seeds):
    """RMSE over `seeds` draws of the stage's estimates of mean(loss): stratified (default) and
    clusters (k = m, lambda auto, balanced draws), vs uniform samples of m and m + k documents."""
    n, truth = len(loss), loss.mean()
    rows = []
    for m in sizes:
        cluster, values = values_in_memory(embeddings, loss, m)
        probability = values / values.sum()
        _, strata = stratum_of(char_embeddings, projection_strata(char_embeddings, m))
        errors = {"stratified": [], "sensitivity": [], "iid": [], "uniform": [],
                  "uniform_m_plus_k": []}
        for seed in range(seeds):
            rng = np.random.default_rng([seed, 99])
            errors["stratified"].append(
                (draw_in_memory(np.ones(n), strata, m, seed) * loss).sum() / m - truth)
            for name, strata in (("sensitivity", cluster), ("iid", np.zeros_like(cluster))):
                counts = draw_in_memory(values, strata, m, seed)
                errors[name].append((counts * loss / (m * probability)).sum() / n - truth)
            errors["uniform"].append(loss[rng.choice(n, m, replace=False)].mean() - truth)
            errors["uniform_m_plus_k"].append(
                loss[rng.choice(n, min(n, 2 * m), replace=False)].mean() - truth)
        rows.append((m, {name: float(np.sqrt(np.mean(np.square(e)))) for name, e in errors.items()}))
    return truth, rows


def job_seconds(path: str, stages: list, workdir: str) -> float:
    data = {"input": [{"path": path}], "output": tempfile.mkdtemp(dir=workdir),
            "stages": stages}
    _, seconds = timed(run_job, data, [], log=lambda *_: None)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,100,200,400")
    parser.add_argument("--seeds", type=int, default=20)
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
    lm, train_s = timed(train_proxy, texts, None,
                        ProxyConfig(**BYTE_LM, models=1, threads=2, steps=200))
    scores, score_s = timed(lm.score, texts)
    loss = scores["lm_loss"]
    print(f"proxy byte LM (1 model, 200 steps): trained in {train_s:.1f}s; scored {n} docs in "
          f"{score_s:.1f}s = {score_s / n * 1e4:.0f}s per 10k docs (first 512 bytes each)")
    embedder = load_embedder(EmbeddingConfig(model=args.embedder, threads=2))
    embeddings, embed_s = timed(embedder.embed, texts)
    print(f"embeddings: {args.embedder} {embeddings.shape[1]}-d, {embed_s / n * 1e4:.0f}s per 10k "
          f"docs", flush=True)
    chars = load_embedder(EmbeddingConfig(model="char_ngrams")).embed(texts)
    truth, table = estimator_errors(loss, embeddings, chars, sizes, args.seeds)
    print(f"\n1. estimating the corpus mean loss {truth:.4f} nats/byte; RMSE over {args.seeds} "
          f"seeds; ratios to uniform(m) (< 1: better); clusters = the k = m design "
          f"({args.embedder}), which spends m + k evaluations")
    print(f"{'m':>6} {'stratified':>11} {'ratio':>6} {'clusters':>9} {'ratio':>6} "
          f"{'iid draw':>9} {'uniform(m)':>11} {'uniform(m+k)':>13} {'clusters/u(m+k)':>16}")
    for m, e in table:
        print(f"{m:>6} {e['stratified']:>11.5f} {e['stratified'] / e['uniform']:>6.2f} "
              f"{e['sensitivity']:>9.5f} {e['sensitivity'] / e['uniform']:>6.2f} "
              f"{e['iid']:>9.5f} {e['uniform']:>11.5f} {e['uniform_m_plus_k']:>13.5f} "
              f"{e['sensitivity'] / e['uniform_m_plus_k']:>16.2f}", flush=True)

    print("\n2. EL2N rank stability across seeds: python bench/el2n.py")
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
            "el2n, byte LM (2 models)": [{"el2n": {"proxy": BYTE_LM | {
                "models": 2, "threads": 1, "steps": 200}}}],
            "el2n, token LM (2 models, 300 train docs)": [{"el2n": {"proxy": {
                "models": 2, "threads": 1, "train_docs": 300}}}],
            "el2n, classifier (4 models)": [{"el2n": {"proxy": {"label_field": "label"}}}],
            "sensitivity, stratified (default)": [{"sensitivity": {"size": 200}}],
            "sensitivity, clusters, hashed, loss_field": [{"sensitivity": {
                "size": 200, "design": "clusters", "loss_field": "proxy_loss"}}],
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
