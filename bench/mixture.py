"""Bench: how well RegMix regressions rank unseen mixtures (Liu et al. 2024, arXiv:2407.01492).

Fits on the 512 real 1M-parameter proxy runs only (sail-sg/regmix data in ../shared/data/regmix),
then reports Spearman rho on the unseen test mixtures: 1M (256 runs), 60M (the same 256 mixtures
at 60M parameters) and 1B (63 runs), for Pile-CC and the harder hackernews, ubuntu_irc and pg19
targets. Model choice uses only the training runs (the `cv` column: out-of-fold Spearman,
5 folds); the test sets are only scored. Rows:

- trivial: rank by minus the target domain's own weight (no fitting);
- linear: least squares on the weights (the paper's baseline);
- lightgbm: the paper's setup (gbdt, lr 0.01, <= 1000 rounds) early-stopped on a 10% validation
  split of the training runs (the original notebook stopped early on the test set);
- lightgbm x5 mono: 5 boosters on different validation splits, averaged, with the loss
  constrained not to rise with the target domain's own weight (`fit --ensemble 5 --monotone`).

Deltas are against `lightgbm` in the same run. Spearman is deterministic given the seeds; timings
are not reported (the machine is shared). Run: `python bench/mixture.py [--data DIR]`.
"""
from __future__ import annotations

import argparse
import os
import sys

from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classifiers.regmix import (LIGHTGBM, LINEAR, REGRESSORS, FitConfig,  # noqa: E402
                                cross_validate, own_domain)
from pipelines.mixture import resolve_targets  # noqa: E402
from pipelines.mixture_io import join  # noqa: E402

TARGETS = ["pile_cc", "hackernews", "ubuntu_irc", "gutenberg_pg_19"]
SCALES = {"1M": ("test_mixture_1m.csv", "test_pile_loss_1m.csv"),
          "60M": ("test_mixture_60m.csv", "test_pile_loss_60m.csv"),
          "1B": ("test_mixture_1B.csv", "test_pile_loss_1B.csv")}
PUBLISHED = {"pile_cc": {"lightgbm (paper)": (0.99, 0.986, 0.97), "linear (paper)": (0.90, 0.89, 0.88)}}
MODELS = {"linear": (LINEAR, FitConfig()),
          "lightgbm": (LIGHTGBM, FitConfig()),
          "lightgbm x5 mono": (LIGHTGBM, FitConfig(ensemble=5, monotone=True))}
BASELINE = "lightgbm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "shared", "data", "regmix"))
    args = parser.parse_args()
    path = lambda name: os.path.join(args.data, name)  # noqa: E731
    _, domains, X, loss_columns, L = join(path("train_mixture_1m.csv"),
                                          path("train_pile_loss_1m.csv"))
    tests = {}
    for scale, (mixtures, losses) in SCALES.items():
        _, test_domains, TX, test_losses, TL = join(path(mixtures), path(losses))
        tests[scale] = (TX[:, [test_domains.index(d) for d in domains]], test_losses, TL)
    print(f"RegMix regression: fit on {len(X)} 1M-parameter runs; Spearman rho on unseen runs "
          f"({', '.join(f'{s}: {len(t[0])}' for s, t in tests.items())}); "
          f"deltas vs '{BASELINE}' in this run\n")
    header = f"{'target':16s} {'model':20s} {'cv':>6s} " + " ".join(f"{s:>14s}" for s in tests)
    print(header)
    print("-" * len(header))
    for name in TARGETS:
        (target,) = resolve_targets([name], loss_columns)
        y = L[:, loss_columns.index(target)]
        own = own_domain(target, domains)
        rows: dict[str, tuple[float, list[float]]] = {}
        observed = {s: TL[:, cols.index(target)] for s, (_, cols, TL) in tests.items()}
        rows["trivial (-own weight)"] = (spearmanr(-X[:, own], y)[0], [
            spearmanr(-TX[:, own], observed[s])[0] for s, (TX, _, _) in tests.items()])
        for label, (kind, config) in MODELS.items():
            cv = spearmanr(cross_validate(kind, X, y, config, own), y)[0]
            model = REGRESSORS[kind].fit(X, y, config, own)
            rows[label] = (cv, [spearmanr(model.predict(TX), observed[s])[0]
                                for s, (TX, _, _) in tests.items()])
        base = rows[BASELINE][1]
        for label, (cv, scores) in rows.items():
            cells = " ".join(f"{r:6.3f} ({r - b:+.3f})" if label != BASELINE else f"{r:14.3f}"
                             for r, b in zip(scores, base))
            print(f"{name:16s} {label:20s} {cv:6.3f} {cells}")
        for label, scores in PUBLISHED.get(name, {}).items():
            print(f"{name:16s} {label:20s} {'':>6s} " + " ".join(f"{r:14.3f}" for r in scores))
        print()


if __name__ == "__main__":
    main()
