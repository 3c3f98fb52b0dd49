"""Mixtures beyond RegMix: the data-mixing law, the LightGBM + own-weight stack, model choice by
a held-out (larger) scale with bootstrap intervals, and `sluice mixture suggest` (batch Bayesian
optimisation), on synthetic data and on the real RegMix runs."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from classifiers.regmix import (LAW, STACK, FitConfig, MixingLawRegressor, StackRegressor,
                                SuggestConfig, bootstrap_spearman, budget_caps, cap_mixtures,
                                choose_by_scale, simulate_suggest, suggest)
from pipelines.cli import main
from pipelines.mixture import resolve_targets
from pipelines.mixture_io import join, load_model, read_csv
from transforms.io.sink import read_output

TARGETS = ["pile_cc", "hackernews", "ubuntu_irc", "gutenberg_pg_19"]


def write_table(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def synthetic_runs(n, seed, domains=5):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(domains, 0.7), size=n)


# --- regressors ---------------------------------------------------------------------------------

def test_mixing_law_recovers_an_exponential_law(tmp_path):
    X = synthetic_runs(300, 0)
    t = np.array([-1.5, 0.4, 0.8, -0.3, 0.2])
    y = 2.0 + 0.7 * np.exp(X @ t) + np.random.default_rng(1).normal(0, 1e-3, len(X))
    model = MixingLawRegressor.fit(X, y, FitConfig())
    test = synthetic_runs(200, 2)
    truth = 2.0 + 0.7 * np.exp(test @ t)
    assert np.abs(model.predict(test) - truth).max() < 0.02
    assert spearmanr(model.importances(), t)[0] > 0.95
    again = MixingLawRegressor.load(str(tmp_path), model.save(str(tmp_path), "law"))
    assert np.allclose(again.predict(test), model.predict(test))


def test_stack_blends_lightgbm_with_the_own_weight_and_round_trips(tmp_path):
    X = synthetic_runs(400, 3)
    y = 3.0 - np.log1p(20 * X[:, 0]) + 0.3 * np.sin(8 * X[:, 1])
    stack = StackRegressor.fit(X, y, FitConfig(), monotone_index=0)
    assert stack.own == 0 and stack.affine[0] > 0
    # Loss units: the affine map is a least-squares fit on the training runs.
    assert abs(np.mean(stack.predict(X)) - np.mean(y)) < 1e-6
    assert spearmanr(stack.predict(X), y)[0] > 0.9
    alone = StackRegressor.fit(X, y, FitConfig(stack_own=0.0), monotone_index=0)
    assert spearmanr(alone.predict(X), alone.booster.predict(X))[0] == pytest.approx(1.0)
    no_own = StackRegressor.fit(X, y, FitConfig(), monotone_index=None)
    assert no_own.own is None
    loaded = StackRegressor.load(str(tmp_path), stack.save(str(tmp_path), "stack"))
    assert np.allclose(loaded.predict(X), stack.predict(X))


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(scale=0.5, size=200)
    rho = spearmanr(a, b)[0]
    low, high = bootstrap_spearman(a, b, samples=500)
    assert low < rho < high and high - low < 0.2
    assert choose_by_scale({"x": {"s": {"spearman": 0.5}}, "y": {"s": {"spearman": 0.7}}}) == "y"


def test_choose_scale_picks_a_kind_per_target(tmp_path):
    """Target `flat` is linear in the weights at the large scale, target `step` a step in one
    weight: scored on the large runs, linear wins the first and LightGBM the second."""
    domains = [f"d{k}" for k in range(5)]
    header = ["index", *domains]

    def losses(X):
        return np.column_stack([X @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]),
                                np.where(X[:, 2] > 0.3, 1.0, 0.0) + 0.01 * X[:, 0]])

    small, large = synthetic_runs(200, 4), synthetic_runs(120, 5)
    paths = {}
    for name, X in (("small", small), ("large", large)):
        paths[name] = (
            write_table(tmp_path / f"{name}_m.csv", header,
                        [[i, *row] for i, row in enumerate(X)]),
            write_table(tmp_path / f"{name}_l.csv", ["index", "loss/flat", "loss/step"],
                        [[i, *row] for i, row in enumerate(losses(X))]))
    out = tmp_path / "fit"
    assert main(["mixture", "fit", "--mixtures", paths["small"][0], "--losses", paths["small"][1],
                 "--target", "flat", "--target", "step", "--model", "both", "--choose", "scale",
                 "--scale", f"large={paths['large'][0]},{paths['large'][1]}", "--folds", "3",
                 "--candidates", "2000", "--top-k", "20", "--output", str(out)]) == 0
    saved = json.loads((out / "model.json").read_text())
    assert saved["chosen"] == {"loss/flat": "linear", "loss/step": "lightgbm"}
    fit = json.loads((out / "fit.json").read_text())
    scores = fit["scale_transfer"]["loss/flat"]["linear"]["large"]
    assert scores["n"] == 120 and scores["low"] <= scores["spearman"] <= scores["high"]
    model, _ = load_model(str(out))
    assert model.kind == "per-target" and model.kind_of("loss/step") == "lightgbm"
    assert json.loads((out / "mixture.json").read_text())["model"] == "per-target"
    html = (out / "report.html").read_text()
    assert "Transfer across scale" in html and "(chosen)" in html
    # --choose scale without runs at another scale is refused.
    assert main(["mixture", "fit", "--mixtures", paths["small"][0], "--losses",
                 paths["small"][1], "--target", "flat", "--model", "linear", "--choose",
                 "scale", "--output", str(tmp_path / "x")]) == 2


# --- the real RegMix runs: fit on 1M, rank the unseen 1B runs ---------------------------------

def test_default_model_ranks_unseen_1b_runs(shared_data, tmp_path):
    """The default fit (`--model all`: the stack is chosen) on the 512 1M runs only, scored on
    the 64 unseen 1B runs. Targets of the issue: Pile-CC >= 0.975, mean of four >= 0.92
    (measured: 0.986, 0.874, 0.877, 0.951; mean 0.922). Only the stack is fitted here, to save
    time: the chosen default model does not depend on the other kinds."""
    regmix = shared_data / "regmix"
    out = tmp_path / "fit"
    args = ["mixture", "fit", "--mixtures", str(regmix / "train_mixture_1m.csv"), "--losses",
            str(regmix / "train_pile_loss_1m.csv"), "--model", STACK, "--folds", "2",
            "--candidates", "5000", "--output", str(out)]
    for target in TARGETS:
        args += ["--target", target]
    assert main(args) == 0
    assert json.loads((out / "model.json").read_text())["chosen"] == STACK
    predicted = tmp_path / "predicted.csv"
    assert main(["mixture", "predict", "--model", str(out), "--mixtures",
                 str(regmix / "test_mixture_1B.csv"), "--output", str(predicted)]) == 0
    index, columns, P = read_csv(str(predicted))
    l_index, loss_columns, L = read_csv(str(regmix / "test_pile_loss_1B.csv"))
    assert index == l_index and len(index) == 64
    rho = {}
    for name in TARGETS:
        (target,) = resolve_targets([name], loss_columns)
        rho[name] = spearmanr(P[:, columns.index(f"predicted/{target}")],
                              L[:, loss_columns.index(target)])[0]
    assert rho["pile_cc"] >= 0.975
    assert np.mean(list(rho.values())) >= 0.92
    # Each rho beats the paper's LightGBM (measured 0.948, 0.872, 0.877, 0.936) by -0.001 or more.
    for name, baseline in zip(TARGETS, (0.948, 0.872, 0.877, 0.936)):
        assert rho[name] >= baseline - 0.001, (name, rho[name])


def test_mixing_law_transfers_to_1b_pile_cc(shared_data):
    regmix = shared_data / "regmix"
    _, domains, X, loss_columns, L = join(str(regmix / "train_mixture_1m.csv"),
                                          str(regmix / "train_pile_loss_1m.csv"))
    _, test_domains, TX, test_columns, TL = join(str(regmix / "test_mixture_1B.csv"),
                                                 str(regmix / "test_pile_loss_1B.csv"))
    TX = TX[:, [test_domains.index(d) for d in domains]]
    (target,) = resolve_targets(["pile_cc"], loss_columns)
    model = MixingLawRegressor.fit(X, L[:, loss_columns.index(target)], FitConfig())
    assert model.kind == LAW
    assert spearmanr(model.predict(TX), TL[:, test_columns.index(target)])[0] > 0.98


# --- suggest ------------------------------------------------------------------------------------

def test_suggest_beats_random_on_the_regmix_pool(shared_data):
    """Simulated ask/tell on the 512 real 1M runs (losses known): 16 random runs, then 3 batches
    of 8 suggested, vs 24 more random runs; the best loss found, averaged over seeds."""
    regmix = shared_data / "regmix"
    _, _, X, loss_columns, L = join(str(regmix / "train_mixture_1m.csv"),
                                    str(regmix / "train_pile_loss_1m.csv"))
    y = L.mean(axis=1)  # the mean Pile validation loss over the 13 domains
    results = [simulate_suggest(X, y, initial=16, batch=8, rounds=3, seed=s) for s in range(3)]
    suggested = np.mean([r["suggest"][-1] for r in results])
    random = np.mean([r["random"][-1] for r in results])
    assert suggested < random
    assert all(r["suggest"][-1] <= r["initial_best"] for r in results)


def test_suggest_picks_distinct_unrun_candidates(tmp_path):
    X = synthetic_runs(30, 6)
    y = X @ np.array([1.0, 0.5, 0.2, 0.0, -1.0])
    C = synthetic_runs(200, 7)
    picks = suggest(X, y, C, 10, SuggestConfig())
    assert len(set(picks.tolist())) == 10
    # EI prefers mixtures heavy in the domain that lowers the loss.
    assert C[picks, 4].mean() > C[:, 4].mean()
    # Too few runs: random candidates.
    assert len(suggest(X[:3], y[:3], C, 5, SuggestConfig())) == 5
    domains = [f"d{k}" for k in range(5)]
    mixtures = write_table(tmp_path / "m.csv", ["index", *domains],
                           [[i + 1, *row] for i, row in enumerate(X)])
    losses = write_table(tmp_path / "l.csv", ["index", "loss/x"],
                         [[i + 1, v] for i, v in enumerate(y)])
    pool = write_table(tmp_path / "pool.csv", ["index", *domains],
                       [[i + 1, *row] for i, row in enumerate(np.vstack([X, C]))])
    out = tmp_path / "next.csv"
    assert main(["mixture", "suggest", "--mixtures", mixtures, "--losses", losses, "--target", "x",
                 "--n", "6", "--pool", pool, "--output", str(out)]) == 0
    index, columns, S = read_csv(str(out))
    assert columns == domains and len(index) == 6
    assert all(int(i) > 30 for i in index)  # never a mixture already run
    out = tmp_path / "drawn.csv"
    assert main(["mixture", "suggest", "--mixtures", mixtures, "--losses", losses, "--target", "x",
                 "--n", "4", "--candidates", "2000", "--output", str(out)]) == 0
    index, _, S = read_csv(str(out))
    assert index == ["31", "32", "33", "34"]
    assert np.allclose(S.sum(axis=1), 1.0, atol=5 * 2e-4)


# --- budget-aware optimum -----------------------------------------------------------------------

def test_cap_mixtures_water_fills_under_caps():
    W = np.random.default_rng(0).dirichlet(np.full(5, 0.3), size=500)
    caps = np.array([0.1, 0.2, 0.3, 0.5, 0.4])
    C = cap_mixtures(W, caps)
    assert np.allclose(C.sum(axis=1), 1.0) and (C <= caps + 1e-12).all()
    inside = (W <= caps).all(axis=1)
    assert np.allclose(C[inside], W[inside])  # mixtures already within the caps are kept
    assert np.allclose(budget_caps(np.array([10, 100, 1000]), 1000, 4), [0.04, 0.4, 1.0])
    with pytest.raises(ValueError, match="cannot fill"):
        budget_caps(np.array([10, 10]), 1000, 4)


def test_fit_under_a_token_budget_repeats_no_domain_beyond_the_cap(tmp_path):
    """The loss falls with d0's weight, but d0 holds few tokens: under the budget the optimum
    gives d0 exactly its 4-epoch cap instead of most of the mixture."""
    domains = [f"d{k}" for k in range(5)]
    X = synthetic_runs(120, 8)
    y = 3.0 - 2.0 * X[:, 0] + 0.1 * X[:, 1]
    mixtures = write_table(tmp_path / "m.csv", ["index", *domains],
                           [[i, *row] for i, row in enumerate(X)])
    losses = write_table(tmp_path / "l.csv", ["index", "loss/x"],
                         [[i, v] for i, v in enumerate(y)])
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"d0": 20_000, "d1": 50_000, "d2": 50_000, "d3": 50_000,
                                  "d4": 50_000}))
    args = ["mixture", "fit", "--mixtures", mixtures, "--losses", losses, "--target", "x",
            "--model", "linear", "--folds", "3", "--candidates", "5000", "--top-k", "20",
            "--domains", str(tokens)]
    free, capped = tmp_path / "free", tmp_path / "capped"
    assert main([*args, "--output", str(free)]) == 0
    assert main([*args, "--budget", "800000", "--output", str(capped)]) == 0
    unconstrained = json.loads((free / "mixture.json").read_text())["weights"]
    mixture = json.loads((capped / "mixture.json").read_text())
    assert unconstrained["d0"] > 0.1
    assert mixture["weights"]["d0"] == pytest.approx(0.1, abs=1e-6)  # 4 x 20,000 / 800,000
    assert max(mixture["budget"]["epochs"].values()) <= 4.0 + 1e-9
    assert main([*args, "--budget", "10000000", "--output", str(tmp_path / "no")]) == 2
    assert main(["mixture", "fit", "--mixtures", mixtures, "--losses", losses, "--target", "x",
                 "--model", "linear", "--budget", "800000", "--output", str(tmp_path / "n")]) == 2


# --- schedules ----------------------------------------------------------------------------------

def test_schedule_caps_split_over_phases():
    from transforms.mixture.sampling import plan_sampling, schedule_epoch_caps

    phases = [{"fraction": 0.8, "weights": {"web": 0.9, "books": 0.1}},
              {"fraction": 0.2, "weights": {"web": 0.5, "books": 0.5}}]
    caps = schedule_epoch_caps(phases, 4.0)
    assert caps[0]["books"] + caps[1]["books"] == pytest.approx(4.0)
    assert caps[0]["books"] == pytest.approx(4.0 * 0.08 / 0.18)
    plan = plan_sampling(phases[1]["weights"], {"web": 20_000, "books": 2_000}, 10_000, 4.0,
                         epoch_caps=caps[1])
    assert plan["repeat_cap_hits"] == ["books"]
    assert plan["domains"]["books"]["epochs"] == pytest.approx(caps[1]["books"])


def test_apply_a_schedule_writes_each_phase_within_the_repeat_cap(tmp_path):
    """Books upsampled over the last 20% of the tokens; over both phases books would need 4.5
    epochs, so the 4-epoch cap is split between the phases and web takes the rest."""
    from tests.mixture.test_mixture import BEAM, _corpus

    paths = _corpus(tmp_path)
    mixture = tmp_path / "mixture.json"
    mixture.write_text(json.dumps({"weights": {"web": 0.82, "books": 0.18}, "schedule": [
        {"fraction": 0.8, "weights": {"web": 0.9, "books": 0.1}},
        {"fraction": 0.2, "weights": {"web": 0.5, "books": 0.5}}]}))
    out = tmp_path / "out"
    assert main(["mixture", "apply", "--mixture", str(mixture), "--inputs",
                 f"web={paths['web']}", f"books={paths['books']}", "--tokens", "50000",
                 "--output", str(out), *BEAM]) == 0
    summary = json.loads((out / "schedule.json").read_text())
    assert [p["output"] for p in summary["phases"]] == ["phase-0", "phase-1"]
    assert [p["tokens"] for p in summary["phases"]] == [40_000, 10_000]
    planned = sum(p["domains"]["books"]["epochs"] for p in summary["phases"])
    assert planned == pytest.approx(4.0)
    assert summary["written_epochs"]["books"] <= 4.0 + 0.5  # the per-document coin
    shares = []
    for phase in ("phase-0", "phase-1"):
        manifest = json.loads((out / phase / "manifest.json").read_text())
        sources = manifest["sources"]
        shares.append(sources["books"]["tokens"] / manifest["totals"]["tokens"])
        assert read_output(str(out / phase / "documents")).num_rows == manifest["totals"]["rows"]
    assert shares[1] > 2 * shares[0]  # upsampled in the last phase
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"weights": {"web": 1}, "schedule": [
        {"fraction": 0.5, "weights": {"web": 1}}]}))
    assert main(["mixture", "apply", "--mixture", str(bad), "--inputs", f"web={paths['web']}",
                 "--tokens", "100", "--output", str(tmp_path / "x"), *BEAM]) == 2


def test_multi_fidelity_suggest_uses_cheaper_runs(shared_data, tmp_path):
    """Target: the 256 real 60M runs; with 128 1M runs (other mixtures) as low fidelity, 4 random
    60M runs and 2 batches of 4 suggested find a lower 60M Pile-CC loss than 12 random runs and
    than suggest without them (mean over 2 seeds)."""
    regmix = shared_data / "regmix"
    _, domains, X, loss_columns, L = join(str(regmix / "train_mixture_1m.csv"),
                                          str(regmix / "train_pile_loss_1m.csv"))
    _, d60, X60, c60, L60 = join(str(regmix / "test_mixture_60m.csv"),
                                 str(regmix / "test_pile_loss_60m.csv"))
    X60 = X60[:, [d60.index(d) for d in domains]]
    (target,) = resolve_targets(["pile_cc"], loss_columns)
    y, y60 = L[:128, loss_columns.index(target)], L60[:, c60.index(target)]
    single = [simulate_suggest(X60, y60, 4, 4, 2, seed) for seed in range(2)]
    multi = [simulate_suggest(X60, y60, 4, 4, 2, seed, low=(X[:128], y)) for seed in range(2)]
    best_multi = np.mean([r["suggest"][-1] for r in multi])
    assert best_multi < np.mean([r["random"][-1] for r in single])
    assert best_multi < np.mean([r["suggest"][-1] for r in single])
    # The CLI: 60M runs so far plus 1M runs as low fidelity, candidates from the 60M pool.
    runs = tmp_path / "runs.csv"
    lines = (regmix / "test_mixture_60m.csv").read_text().splitlines()
    runs.write_text("\n".join(lines[:5]) + "\n")
    out = tmp_path / "next.csv"
    low = tmp_path / "low.csv"  # 64 of the 1M runs (their losses file is joined on index)
    low.write_text("\n".join((regmix / "train_mixture_1m.csv").read_text().splitlines()[:65]))
    assert main(["mixture", "suggest", "--mixtures", str(runs), "--losses",
                 str(regmix / "test_pile_loss_60m.csv"), "--target", "pile_cc", "--n", "3",
                 "--pool", str(regmix / "test_mixture_60m.csv"), "--low-fidelity",
                 f"{low},{regmix / 'train_pile_loss_1m.csv'}", "--output", str(out)]) == 0
    index, _, _ = read_csv(str(out))
    assert len(index) == 3 and not {"1", "2", "3", "4"} & set(index)
