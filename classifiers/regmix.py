"""RegMix: data mixture as regression (Liu et al. 2024, "RegMix: Data Mixture as Regression for
Language Model Pre-training", arXiv:2407.01492).

Small proxy models are trained on many random mixtures of the domains; a regression from mixture
weights to a validation loss is fitted on them; the mixture the regression predicts to be best
(the mean of the top-k of many simulated candidates) is used for the large run.

- Proposals (`propose`): the prior is the domains' token shares p; each weight is capped at
  min(max_usage * p_i, 1) so no domain is repeated too often at scale; the prior is tempered
  (p^0.5, renormalised); each candidate is Dirichlet(p * s) with s drawn from 15 strengths
  log-spaced in [0.1, 5]; candidates over a cap are rejected; weights below 2e-4 are zeroed, the
  rest renormalised and rounded to that grid; duplicates are dropped; n are chosen at random.
- Regression (`fit_target`): LightGBM (gbdt, learning rate 0.01, up to 1000 rounds) and linear
  regression, as in the paper; early stopping uses a validation split carved from the training
  mixtures (the original notebook stopped early on its test set, which inflates its numbers).
- Optimum (`optimum`): predict 100,000 candidates from the proposal distribution and average the
  top-k (100) lowest-loss mixtures.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
from scipy.stats import pearsonr, spearmanr

LIGHTGBM, LINEAR = "lightgbm", "linear"
MODEL_KINDS = (LIGHTGBM, LINEAR)


# --- domains and the token prior ----------------------------------------------------------------

def domain_tokens(paths: Iterable[str]) -> dict[str, int]:
    """Tokens per domain, summed over files.

    Each file is a Sluice `manifest.json` (its `sources: {source: {docs, tokens}}`) or a plain
    JSON mapping `{domain: tokens}` (or `{domain: {"tokens": n}}`).
    """
    totals: dict[str, int] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of token counts or a manifest")
        counts = data["sources"] if isinstance(data.get("sources"), dict) else data
        for domain, value in counts.items():
            tokens = value.get("tokens") if isinstance(value, dict) else value
            if not isinstance(tokens, (int, float)) or isinstance(tokens, bool) or tokens < 0:
                raise ValueError(f"{path}: domain '{domain}' has no non-negative token count "
                                 f"(got {value!r})")
            totals[domain] = totals.get(domain, 0) + int(tokens)
    if not totals:
        raise ValueError("no domains with token counts in " + ", ".join(paths))
    return totals


def token_prior(tokens: dict[str, float]) -> dict[str, float]:
    """Token shares: the natural mixture, RegMix's prior."""
    total = float(sum(tokens.values()))
    if total <= 0:
        raise ValueError("the domains hold no tokens")
    return {domain: n / total for domain, n in tokens.items()}


# --- proposals ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProposalConfig:
    """The RegMix sampler's settings, with the paper's defaults (mixture_config/synthesize_mixture)."""

    temperature: float = 0.5
    max_usage: float = 15.0       # cap: weight_i <= min(max_usage * prior_i, 1)
    min_strength: float = 0.1
    max_strength: float = 5.0
    strengths: int = 15           # log-spaced Dirichlet strengths in [min, max]
    minimum: float = 2e-4         # weights below are zeroed; the rounding grid
    sample_multiplier: int = 100  # candidates drawn per mixture kept


def _tempered(prior: np.ndarray, temperature: float) -> np.ndarray:
    tempered = prior ** temperature
    return tempered / tempered.sum()


def sample_candidates(prior: np.ndarray, n: int, config: ProposalConfig,
                      rng: np.random.Generator) -> np.ndarray:
    """Up to `n` mixtures from the proposal distribution (rows over a cap are rejected),
    zeroed below `minimum`, renormalised and rounded to the `minimum` grid."""
    prior = np.asarray(prior, dtype=float)
    caps = np.minimum(prior * config.max_usage, 1.0)
    alpha = _tempered(prior, config.temperature)
    strengths = np.logspace(np.log10(config.min_strength), np.log10(config.max_strength),
                            config.strengths)
    chosen = rng.integers(0, len(strengths), size=n)
    draws = np.empty((n, len(prior)))
    for k, strength in enumerate(strengths):  # numpy's dirichlet is stable for tiny alphas
        rows = np.flatnonzero(chosen == k)
        draws[rows] = rng.dirichlet(alpha * strength, size=len(rows))
    draws = draws[(draws <= caps).all(axis=1)]
    draws[draws < config.minimum] = 0.0
    draws = draws[draws.sum(axis=1) > 0]
    draws /= draws.sum(axis=1, keepdims=True)
    return np.round(draws / config.minimum) * config.minimum


def propose(prior: np.ndarray, n: int, config: ProposalConfig = ProposalConfig(),
            seed: int = 42) -> np.ndarray:
    """`n` distinct proxy-run mixtures (rows) drawn as in RegMix."""
    rng = np.random.default_rng(seed)
    candidates = sample_candidates(prior, n * config.sample_multiplier, config, rng)
    grid = np.unique(np.rint(candidates / config.minimum).astype(np.int64), axis=0)
    if len(grid) < n:
        raise ValueError(f"only {len(grid)} distinct mixtures pass the caps; ask for fewer, "
                         "raise sample_multiplier or max_usage")
    picked = grid[rng.choice(len(grid), size=n, replace=False)]
    return picked * config.minimum


# --- regression ---------------------------------------------------------------------------------

@dataclass
class FitConfig:
    """Regression settings. LightGBM defaults follow the paper (gbdt, lr 0.01, 1000 rounds);
    `validation_fraction` of each training set is held out for early stopping."""

    learning_rate: float = 0.01
    rounds: int = 1000
    early_stopping: int = 100
    validation_fraction: float = 0.1
    num_leaves: int = 31
    min_data_in_leaf: int = 20
    ensemble: int = 1             # LightGBM models on different validation splits, averaged
    monotone: bool = False        # loss may not rise with the target's own domain weight
    folds: int = 5
    seed: int = 42


def own_domain(target: str, domains: list[str]) -> Optional[int]:
    """Index of the domain a per-domain loss measures (`metric/the_pile_x_val_loss` ->
    `train_the_pile_x`), or None: the longest domain name, less a `train_` prefix, in the target."""
    best, best_len = None, 0
    for index, domain in enumerate(domains):
        core = re.sub(r"^train[_/-]", "", domain)
        if core and core in target and len(core) > best_len:
            best, best_len = index, len(core)
    return best


class LightGBMRegressor:
    """Gradient-boosted trees over the mixture weights; an average of `ensemble` boosters, each
    early-stopped on its own random validation split of the training mixtures."""

    kind = LIGHTGBM

    def __init__(self, boosters: list):
        self.boosters = boosters

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, config: FitConfig,
            monotone_index: Optional[int] = None) -> "LightGBMRegressor":
        import lightgbm as lgb

        constraints = [0] * X.shape[1]
        if config.monotone and monotone_index is not None:
            constraints[monotone_index] = -1
        boosters = []
        for member in range(config.ensemble):
            rng = np.random.default_rng(config.seed + member)
            order = rng.permutation(len(X))
            n_valid = max(1, int(round(len(X) * config.validation_fraction)))
            valid, train = order[:n_valid], order[n_valid:]
            params = {"objective": "regression", "boosting_type": "gbdt", "verbosity": -1,
                      "learning_rate": config.learning_rate, "num_leaves": config.num_leaves,
                      "min_data_in_leaf": config.min_data_in_leaf, "seed": config.seed + member,
                      "num_threads": 1, "deterministic": True,
                      "monotone_constraints": constraints}
            booster = lgb.train(
                params, lgb.Dataset(X[train], y[train]), config.rounds,
                valid_sets=[lgb.Dataset(X[valid], y[valid])],
                callbacks=[lgb.early_stopping(config.early_stopping, verbose=False)])
            boosters.append(booster)
        return cls(boosters)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.mean([b.predict(X, num_iteration=b.best_iteration) for b in self.boosters],
                       axis=0)

    def importances(self) -> np.ndarray:
        """Total split gain per domain, normalised to sum to 1."""
        gain = np.sum([b.feature_importance("gain") for b in self.boosters], axis=0)
        return gain / gain.sum() if gain.sum() > 0 else gain

    def save(self, directory: str, stem: str) -> dict:
        files = []
        for member, booster in enumerate(self.boosters):
            name = f"{stem}-{member}.txt"
            booster.save_model(os.path.join(directory, name),
                               num_iteration=booster.best_iteration)
            files.append(name)
        return {"files": files, "best_iterations": [b.best_iteration for b in self.boosters]}

    @classmethod
    def load(cls, directory: str, saved: dict) -> "LightGBMRegressor":
        import lightgbm as lgb

        return cls([lgb.Booster(model_file=os.path.join(directory, name))
                    for name in saved["files"]])


class LinearRegressor:
    """Ordinary least squares on the mixture weights: the paper's linear baseline."""

    kind = LINEAR

    def __init__(self, coef: np.ndarray, intercept: float):
        self.coef = np.asarray(coef, dtype=float)
        self.intercept = float(intercept)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, config: FitConfig,
            monotone_index: Optional[int] = None) -> "LinearRegressor":
        from sklearn.linear_model import LinearRegression

        model = LinearRegression().fit(X, y)
        return cls(model.coef_, model.intercept_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef + self.intercept

    def importances(self) -> np.ndarray:
        return self.coef

    def save(self, directory: str, stem: str) -> dict:
        return {"coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def load(cls, directory: str, saved: dict) -> "LinearRegressor":
        return cls(saved["coef"], saved["intercept"])


REGRESSORS = {LIGHTGBM: LightGBMRegressor, LINEAR: LinearRegressor}


def correlations(predicted: np.ndarray, observed: np.ndarray) -> dict:
    return {"spearman": float(spearmanr(predicted, observed)[0]),
            "pearson": float(pearsonr(predicted, observed)[0]), "n": int(len(observed))}


def cross_validate(kind: str, X: np.ndarray, y: np.ndarray, config: FitConfig,
                   monotone_index: Optional[int] = None) -> np.ndarray:
    """Out-of-fold predictions: each fold predicted by a model that never saw it (its early
    stopping uses a split of the other folds)."""
    from sklearn.model_selection import KFold

    predicted = np.empty(len(y))
    folds = KFold(config.folds, shuffle=True, random_state=config.seed)
    for train, test in folds.split(X):
        model = REGRESSORS[kind].fit(X[train], y[train], config, monotone_index)
        predicted[test] = model.predict(X[test])
    return predicted


# --- the fitted objective and its optimum -------------------------------------------------------

@dataclass
class MixtureModel:
    """Per-target regressors of one kind and the objective: a weighted sum of target losses."""

    domains: list[str]
    targets: dict[str, float]               # target column -> weight in the objective
    regressors: dict[str, object]           # target column -> regressor
    kind: str = LIGHTGBM
    meta: dict = field(default_factory=dict)

    def predict_targets(self, X: np.ndarray) -> dict[str, np.ndarray]:
        return {t: self.regressors[t].predict(X) for t in self.targets}

    def predict(self, X: np.ndarray) -> np.ndarray:
        predictions = self.predict_targets(X)
        return sum(weight * predictions[t] for t, weight in self.targets.items())


def objective_weights(targets: dict[str, float]) -> dict[str, float]:
    total = sum(targets.values())
    if total <= 0 or any(w < 0 for w in targets.values()):
        raise ValueError(f"target weights must be non-negative and not all zero: {targets}")
    return {t: w / total for t, w in targets.items()}


def optimum(model: MixtureModel, prior: np.ndarray, config: ProposalConfig = ProposalConfig(),
            candidates: int = 100_000, top_k: int = 100, seed: int = 42) -> dict:
    """The mean of the `top_k` candidate mixtures with the lowest predicted objective."""
    rng = np.random.default_rng(seed)
    simulated = sample_candidates(prior, candidates, config, rng)
    if len(simulated) < top_k:
        raise ValueError(f"only {len(simulated)} candidates pass the caps; need top_k={top_k}")
    predicted = model.predict(simulated)
    best = np.argsort(predicted)[:top_k]
    weights = simulated[best].mean(axis=0)
    weights /= weights.sum()
    return {"weights": dict(zip(model.domains, weights.tolist())),
            "predicted": float(model.predict(weights[None, :])[0]),
            "top_k_predicted": [float(predicted[best].min()), float(predicted[best].max())],
            "candidates": int(len(simulated)), "top_k": top_k}
