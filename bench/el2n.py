"""EL2N proxies on real text: rank stability across seeds and training time, in one run.

For each proxy (classifier on DCLM quality labels; byte LM; the default token LM on Wikipedia
revisions) two independent runs of `--models` seeds (seeds 0.. and 1000..) are trained on the same
documents and score them (Paul et al. 2021: early in training, on the training examples):

- `1 vs 1`: mean pairwise Spearman between single seeds, as the stage reports it at training time
  (`el2n.rank_stability_permille`), from the first run;
- `mean vs mean`: Spearman between the two runs' seed-averaged scores (what a user gets twice);
- `predicted`: the Spearman-Brown value the stage reports for the mean (`..._of_mean_permille`).

The byte LM is the baseline the ratio column divides by. Times are per run of `--models` models on
this machine's CPU (or `--device cuda`); the machine is shared, so compare within one run.

    python bench/el2n.py [--docs 300] [--models 4] [--device auto]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SLUICE_QUIET", "1")

from bench.selection import BYTE_LM, corpus  # noqa: E402
from classifiers.proxy import ProxyConfig, train_proxy  # noqa: E402


def two_runs(texts, labels, config: dict) -> dict:
    """Train seeds 0.. and 1000.., score the training documents; stability and timing."""
    first_start = time.perf_counter()
    first = train_proxy(texts, labels, ProxyConfig(**config, seed=0))
    seconds = time.perf_counter() - first_start
    second = train_proxy(texts, labels, ProxyConfig(**config, seed=1000))
    a, b = first.score(texts, labels)["el2n"], second.score(texts, labels)["el2n"]
    finite = np.isfinite(a) & np.isfinite(b)
    return {"pairwise": first.report.rank_stability,
            "predicted": first.report.rank_stability_of_mean,
            "mean_vs_mean": float(spearmanr(a[finite], b[finite])[0]),
            "seconds": seconds, "parameters": first.report.parameters}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="Wikipedia revisions for the LMs")
    parser.add_argument("--models", type=int, default=4, help="seeds per run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    rows = corpus()
    wiki = [r["text"] for r in rows if r["source"] == "wikipedia"]
    wiki = [wiki[i] for i in np.random.default_rng(0).choice(len(wiki), args.docs, replace=False)]
    dclm = [r for r in rows if r["source"] == "dclm"]
    common = {"models": args.models, "device": args.device, "threads": args.threads}
    proxies = {
        f"byte LM (baseline), Wikipedia ({len(wiki)})": (wiki, None, common | BYTE_LM),
        f"token LM (default), Wikipedia ({len(wiki)})": (wiki, None, common),
        f"classifier, DCLM quality labels ({len(dclm)})": (
            [r["text"] for r in dclm], [r["label"] for r in dclm], common | {"label_field": "label"}),
    }
    print(f"EL2N rank stability (Spearman) over {args.models} seeds per run, two runs per proxy; "
          f"device {args.device}, {args.threads} threads")
    print(f"{'proxy':46s} {'params':>10} {'1 vs 1':>7} {'mean vs mean':>13} {'predicted':>10} "
          f"{'ratio':>6} {'train s':>8} {'ratio':>6}")
    baseline = None
    for name, (texts, labels, config) in proxies.items():
        result = two_runs(texts, labels, config)
        baseline = baseline or result
        print(f"{name:46s} {result['parameters']:>10,} {result['pairwise']:>7.3f} "
              f"{result['mean_vs_mean']:>13.3f} {result['predicted']:>10.3f} "
              f"{result['mean_vs_mean'] / baseline['mean_vs_mean']:>6.2f} "
              f"{result['seconds']:>8.1f} {result['seconds'] / baseline['seconds']:>6.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
