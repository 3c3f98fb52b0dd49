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

- law (mixing law): L = c + k exp(sum_j t_j r_j) (Ye et al. 2024), least squares, 5 starts;
- stack (default): z-scores of LightGBM and of minus the own weight, averaged (`fit` default);
- chosen on 60M: per target the kind (lightgbm, linear, law, stack) whose 1M fit ranks the 60M
  runs best (`fit --choose scale --scale 60M=...`), scored at 1M and 1B (60M is its selection
  set);
- stack fit on 60M runs: the default model fit on the 256 60M runs instead, scored at 1B.

Then `suggest` simulated on the pool of 1M runs (see `bench_suggest`).

Deltas are against `lightgbm` in the same run. Spearman is deterministic given the seeds; timings
are not reported (the machine is shared). Run: `python bench/mixture.py [--data DIR]`.
"""
from __future__ import annotations

import argparse
import os
import sys

from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from classifiers.regmix import (LAW, LIGHTGBM, LINEAR, REGRESSORS, STACK,  # noqa: E402
                                FitConfig, bootstrap_spearman, choose_by_scale, cross_validate,
                                own_domain, scale_transfer, simulate_suggest)
from pipelines.mixture import resolve_targets  # noqa: E402
from pipelines.mixture_io import join  # noqa: E402

TARGETS = ["pile_cc", "hackernews", "ubuntu_irc", "gutenberg_pg_19"]
SCALES = {"1M": ("test_mixture_1m.csv", "test_pile_loss_1m.csv"),
          "60M": ("test_mixture_60m.csv", "test_pile_loss_60m.csv"),
          "1B": ("test_mixture_1B.csv", "test_pile_loss_1B.csv")}
PUBLISHED = {"pile_cc": {"lightgbm (paper)": (0.99, 0.986, 0.97), "linear (paper)": (0.90, 0.89, 0.88)}}
MODELS = {"linear": (LINEAR, FitConfig()),
          "lightgbm": (LIGHTGBM, FitConfig()),
          "lightgbm x5 mono": (LIGHTGBM, FitConfig(ensemble=5, monotone=True)),
          "law (mixing law)": (LAW, FitConfig()),
          "stack (default)": (STACK, FitConfig())}
BASELINE = "lightgbm"
SELECTION_KINDS = (LIGHTGBM, LINEAR, LAW, STACK)  # candidates of `fit --choose scale`
SELECTED = "chosen on 60M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "shared", "data", "regmix"))
    parser.add_argument("--suggest-seeds", type=int, default=10,
                        help="seeds of the `suggest` simulation (0: skip it)")
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
    header = f"{'target':16s} {'model':24s} {'cv':>6s} " + " ".join(f"{s:>14s}" for s in tests)
    print(header)
    print("-" * len(header))
    at_1b: dict[str, list[float]] = {}
    for name in TARGETS:
        (target,) = resolve_targets([name], loss_columns)
        y = L[:, loss_columns.index(target)]
        own = own_domain(target, domains)
        rows: dict[str, tuple[float, list[float]]] = {}
        observed = {s: TL[:, cols.index(target)] for s, (_, cols, TL) in tests.items()}
        rows["trivial (-own weight)"] = (spearmanr(-X[:, own], y)[0], [
            spearmanr(-TX[:, own], observed[s])[0] for s, (TX, _, _) in tests.items()])
        models = {}
        for label, (kind, config) in MODELS.items():
            cv = spearmanr(cross_validate(kind, X, y, config, own), y)[0]
            model = models[label] = REGRESSORS[kind].fit(X, y, config, own)
            rows[label] = (cv, [spearmanr(model.predict(TX), observed[s])[0]
                                for s, (TX, _, _) in tests.items()])
        # `fit --choose scale`: the kind whose 1M fit ranks the 60M runs best, scored at 1B
        # (the 60M column is its selection set, so it is left out).
        by_kind = {k: models[label] for label, (k, c) in MODELS.items()
                   if k in SELECTION_KINDS and c == FitConfig()}
        transfer = scale_transfer(SELECTION_KINDS, X, y,
                                  {"60M": (tests["60M"][0], observed["60M"])}, FitConfig(), own,
                                  samples=200, fitted=by_kind)
        chosen = choose_by_scale(transfer)
        label = next(lb for lb, (k, c) in MODELS.items() if k == chosen and c == FitConfig())
        rows[f"{SELECTED} ({chosen})"] = (rows[label][0], [rows[label][1][0], float("nan"),
                                                            rows[label][1][2]])
        # The stack fit on the 256 60M runs instead (larger proxies; 1M/60M columns not scored).
        big = REGRESSORS[STACK].fit(tests["60M"][0], observed["60M"], FitConfig(), own)
        rows["stack fit on 60M runs"] = (float("nan"), [float("nan"), float("nan"), spearmanr(
            big.predict(tests["1B"][0]), observed["1B"])[0]])
        base = rows[BASELINE][1]
        for label, (cv, scores) in rows.items():
            cells = " ".join(f"{'-':>14s}" if np.isnan(r) else
                             f"{r:6.3f} ({r - b:+.3f})" if label != BASELINE else f"{r:14.3f}"
                             for r, b in zip(scores, base))
            cv = f"{'-':>6s}" if np.isnan(cv) else f"{cv:6.3f}"
            print(f"{name:16s} {label:24s} {cv} {cells}")
            at_1b.setdefault(label.split(" (")[0] if label.startswith(SELECTED) else label,
                             []).append(scores[2])
        for label, scores in PUBLISHED.get(name, {}).items():
            print(f"{name:16s} {label:24s} {'':>6s} " + " ".join(f"{r:14.3f}" for r in scores))
        TX1b = tests["1B"][0]
        low, high = bootstrap_spearman(models["stack (default)"].predict(TX1b), observed["1B"])
        print(f"{name:16s} stack (default) at 1B: 95% bootstrap interval [{low:.3f}, {high:.3f}]"
              f" over {len(TX1b)} runs")
        print()
    print(f"mean 1B Spearman over {', '.join(TARGETS)} (baseline '{BASELINE}' "
          f"{np.mean(at_1b[BASELINE]):.3f}):")
    base_mean = np.mean(at_1b[BASELINE])
    for label, scores in at_1b.items():
        print(f"  {label:24s} {np.mean(scores):.3f} ({np.mean(scores) - base_mean:+.3f})")
    print()
    bench_stack_share(X, L, loss_columns, domains, tests)
    if args.suggest_seeds:
        print()
        bench_suggest(X, L, loss_columns, args.suggest_seeds)
        print()
        bench_multi_fidelity(X[:256], L[:256], loss_columns, tests["60M"][0], tests["60M"][1],
                             tests["60M"][2], min(args.suggest_seeds, 5))


def bench_stack_share(X, L, loss_columns, domains, tests, shares=(0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0)):
    """How much the default rests on its one hyperparameter: the stack's own-weight share (0.5,
    the equal-weight blend, set a priori) swept, each fit on the 1M runs only and scored at 1B.
    0 is LightGBM alone, 1 the trivial own-weight ranking (mapped to loss units)."""
    print("stack share sensitivity: 1B Spearman of the stack fit on 1M runs, by own-weight share "
          "(default 0.5; 0 = lightgbm, 1 = minus own weight)")
    print(f"{'target':16s} " + " ".join(f"{s:>6g}" for s in shares))
    means = np.zeros(len(shares))
    for name in TARGETS:
        (target,) = resolve_targets([name], loss_columns)
        y = L[:, loss_columns.index(target)]
        own = own_domain(target, domains)
        TX, cols, TL = tests["1B"]
        row = [spearmanr(REGRESSORS[STACK].fit(X, y, FitConfig(stack_own=s), own).predict(TX),
                         TL[:, cols.index(target)])[0] for s in shares]
        means += np.array(row) / len(TARGETS)
        print(f"{name:16s} " + " ".join(f"{r:6.3f}" for r in row))
    print(f"{'mean':16s} " + " ".join(f"{r:6.3f}" for r in means))


def bench_multi_fidelity(X, L, loss_columns, X60, columns60, L60, seeds: int) -> None:
    """Multi-fidelity `suggest`: the target is the pool of 256 60M runs (losses known); 4 random
    60M runs, then 4 batches of 4 suggested, with and without 1M runs of other mixtures (the
    first 256 training runs: the GP's cost grows as n^3) as low-fidelity runs, vs random 60M
    runs."""
    initial, batch, rounds = 4, 4, 4
    print(f"multi-fidelity suggest: best true 60M loss after {initial} random + N 60M runs, mean "
          f"over {seeds} seeds; pool of {len(X60)} 60M runs; low fidelity: the {len(X)} 1M runs")
    print(f"{'objective':20s} {'N':>3s} {'random':>8s} {'suggest':>17s} {'+ 1M runs':>17s}  "
          f"regret random / suggest / + 1M runs")
    for name in ("pile_cc", "hackernews", "mean of 13 losses"):
        if name.startswith("mean"):
            y, y60 = L.mean(axis=1), L60.mean(axis=1)
        else:
            (target,) = resolve_targets([name], loss_columns)
            y, y60 = L[:, loss_columns.index(target)], L60[:, columns60.index(target)]
        single = [simulate_suggest(X60, y60, initial, batch, rounds, s) for s in range(seeds)]
        multi = [simulate_suggest(X60, y60, initial, batch, rounds, s, low=(X, y))
                 for s in range(seeds)]
        R = np.array([r["random"] for r in single])
        S = np.array([r["suggest"] for r in single])
        M = np.array([r["suggest"] for r in multi])
        best = single[0]["pool_best"]
        for r in range(rounds):
            print(f"{name:20s} {batch * (r + 1):3d} {R[:, r].mean():8.4f} "
                  f"{S[:, r].mean():8.4f} ({S[:, r].mean() - R[:, r].mean():+.4f}) "
                  f"{M[:, r].mean():8.4f} ({M[:, r].mean() - R[:, r].mean():+.4f})  "
                  f"{R[:, r].mean() - best:.4f} / {S[:, r].mean() - best:.4f} / "
                  f"{M[:, r].mean() - best:.4f}")


def bench_suggest(X: np.ndarray, L: np.ndarray, loss_columns: list[str], seeds: int) -> None:
    """`mixture suggest` simulated on the pool of the 512 1M runs (true losses known): 16 random
    runs, then 4 batches of 8 suggested (GP + batch EI) vs 32 more random runs (the baseline)."""
    initial, batch, rounds = 16, 8, 4
    print(f"suggest: best true loss after {initial} random + N runs, mean over {seeds} seeds; "
          f"pool of {len(X)} 1M runs; baseline: N random runs; regret = best - pool best")
    objectives = {name: L[:, loss_columns.index(resolve_targets([name], loss_columns)
                                                     .popitem()[0])]
                  for name in ("pile_cc", "hackernews")}
    objectives["mean of 13 losses"] = L.mean(axis=1)
    print(f"{'objective':20s} {'N':>3s} {'random':>8s} {'suggest':>17s} {'win/lose':>9s}  "
          f"regret random / suggest")
    for name, y in objectives.items():
        results = [simulate_suggest(X, y, initial, batch, rounds, seed) for seed in range(seeds)]
        S = np.array([r["suggest"] for r in results])
        R = np.array([r["random"] for r in results])
        best = results[0]["pool_best"]
        for r in range(rounds):
            gap = S[:, r].mean() - R[:, r].mean()
            print(f"{name:20s} {batch * (r + 1):3d} {R[:, r].mean():8.4f} "
                  f"{S[:, r].mean():8.4f} ({gap:+.4f}) {np.mean(S[:, r] < R[:, r]):4.0%}/"
                  f"{np.mean(S[:, r] > R[:, r]):<4.0%}  "
                  f"{R[:, r].mean() - best:.4f} / {S[:, r].mean() - best:.4f}")

if __name__ == "__main__":
    main()
