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
  top-k (100) lowest-loss mixtures; under a token budget (`budget_caps`, `cap_mixtures`) no
  domain is repeated beyond 4 epochs.

Beyond RegMix: the data-mixing law (`MixingLawRegressor`, Ye et al. 2024, arXiv:2403.16952),
LightGBM blended with the own-weight prior (`StackRegressor`, the default: it transfers best from
1M to 1B runs), the transfer of each kind to runs at a larger scale with bootstrap intervals
(`scale_transfer`), and batch Bayesian optimisation of the next proxy runs (`suggest`: a GP on
the simplex with expected improvement, optionally multi-fidelity).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Optional

import numpy as np
from scipy.stats import pearsonr, spearmanr

LIGHTGBM, LINEAR, LAW, STACK = "lightgbm", "linear", "law", "stack"
MODEL_KINDS = (LIGHTGBM, LINEAR, LAW, STACK)


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
    law_starts: int = 5           # least-squares starts of the data-mixing law
    stack_own: float = 0.5        # share of the own-weight prior in the `stack` blend


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


class MixingLawRegressor:
    """The data-mixing law (Ye et al. 2024, "Data Mixing Laws", arXiv:2403.16952):
    L = c + k * exp(sum_j t_j r_j), fitted by least squares (scipy, trust-region) from
    `law_starts` starting points; the lowest-cost fit is kept. k = exp(log_k) > 0."""

    kind = LAW

    def __init__(self, c: float, log_k: float, t: np.ndarray):
        self.c, self.log_k, self.t = float(c), float(log_k), np.asarray(t, dtype=float)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, config: FitConfig,
            monotone_index: Optional[int] = None) -> "MixingLawRegressor":
        from scipy.optimize import least_squares

        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        n = X.shape[1]
        scale = max(float(y.std()), 1e-6)

        def residuals(p):
            return (p[0] + np.exp(p[1] + X @ p[2:]) - y) / scale

        def jacobian(p):
            e = np.exp(p[1] + X @ p[2:])[:, None]
            return np.hstack([np.ones((len(y), 1)), e, e * X]) / scale

        rng = np.random.default_rng(config.seed)
        best = None
        for start in range(max(1, config.law_starts)):
            c0 = float(y.min()) - scale * (0.1 + start)  # the floor, lower each start
            t0 = rng.normal(0.0, 0.5, n) if start else np.zeros(n)
            p0 = np.concatenate([[c0, np.log(max(float(y.mean()) - c0, 1e-3))], t0])
            try:
                result = least_squares(residuals, p0, jac=jacobian, method="trf", max_nfev=500)
            except (ValueError, FloatingPointError):
                continue
            if np.isfinite(result.cost) and (best is None or result.cost < best.cost):
                best = result
        if best is None:
            raise ValueError("the mixing law did not converge from any start")
        return cls(best.x[0], best.x[1], best.x[2:])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.c + np.exp(self.log_k + np.asarray(X, dtype=float) @ self.t)

    def importances(self) -> np.ndarray:
        return self.t

    def save(self, directory: str, stem: str) -> dict:
        return {"c": self.c, "log_k": self.log_k, "t": self.t.tolist()}

    @classmethod
    def load(cls, directory: str, saved: dict) -> "MixingLawRegressor":
        return cls(saved["c"], saved["log_k"], saved["t"])


class StackRegressor:
    """LightGBM blended with the own-weight prior: z-scores (over the training mixtures) of the
    LightGBM prediction and of minus the target domain's own weight, mixed (1 - stack_own) :
    stack_own, mapped back to loss units by least squares on the training runs.

    Why: rankings by the own weight transfer across model scale (RegMix 1B: Pile-CC 0.981) where
    1M-run interactions LightGBM learns partly do not (0.948). Targets without an own domain get
    LightGBM alone."""

    kind = STACK

    def __init__(self, booster: LightGBMRegressor, own: Optional[int], own_share: float,
                 stats: list[float], affine: list[float]):
        self.booster, self.own, self.own_share = booster, own, float(own_share)
        self.stats = [float(v) for v in stats]      # booster mean, std, own mean, own std
        self.affine = [float(v) for v in affine]    # loss = a * score + b

    def _score(self, X: np.ndarray) -> np.ndarray:
        m_b, s_b, m_o, s_o = self.stats
        score = (self.booster.predict(X) - m_b) / s_b
        if self.own is None or self.own_share <= 0:
            return score
        own = (-np.asarray(X)[:, self.own] - m_o) / s_o
        return (1 - self.own_share) * score + self.own_share * own

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, config: FitConfig,
            monotone_index: Optional[int] = None) -> "StackRegressor":
        booster = LightGBMRegressor.fit(X, y, config, monotone_index)
        predicted = booster.predict(X)
        stats = [predicted.mean(), max(predicted.std(), 1e-12), 0.0, 1.0]
        own = monotone_index
        if own is not None:
            weight = -np.asarray(X)[:, own]
            if weight.std() > 0:
                stats[2:] = [weight.mean(), weight.std()]
            else:
                own = None
        model = cls(booster, own, config.stack_own, stats, [1.0, 0.0])
        score = model._score(X)
        a, b = np.polyfit(score, y, 1) if score.std() > 0 else (0.0, float(np.mean(y)))
        model.affine = [float(a), float(b)]
        return model

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.affine[0] * self._score(X) + self.affine[1]

    def importances(self) -> np.ndarray:
        return self.booster.importances()

    def save(self, directory: str, stem: str) -> dict:
        return {"booster": self.booster.save(directory, stem), "own": self.own,
                "own_share": self.own_share, "stats": self.stats, "affine": self.affine}

    @classmethod
    def load(cls, directory: str, saved: dict) -> "StackRegressor":
        return cls(LightGBMRegressor.load(directory, saved["booster"]), saved["own"],
                   saved["own_share"], saved["stats"], saved["affine"])


REGRESSORS = {LIGHTGBM: LightGBMRegressor, LINEAR: LinearRegressor, LAW: MixingLawRegressor,
              STACK: StackRegressor}


def correlations(predicted: np.ndarray, observed: np.ndarray, seed: int = 0) -> dict:
    """Spearman (with its 95% bootstrap interval over the runs), Pearson and the RMSE of
    `predicted` (e.g. out-of-fold predictions) against `observed`."""
    low, high = bootstrap_spearman(predicted, observed, seed=seed)
    return {"spearman": float(spearmanr(predicted, observed)[0]), "low": low, "high": high,
            "pearson": float(pearsonr(predicted, observed)[0]),
            "rmse": float(np.sqrt(np.mean((np.asarray(predicted) - observed) ** 2))),
            "n": int(len(observed))}


def bootstrap_spearman(predicted: np.ndarray, observed: np.ndarray, samples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman rho over the runs (resampled with
    replacement)."""
    from scipy.stats import rankdata

    predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(observed), size=(samples, len(observed)))
    a = np.apply_along_axis(rankdata, 1, predicted[picks])
    b = np.apply_along_axis(rankdata, 1, observed[picks])
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    rho = np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1), np.nan)
    tail = (1 - level) / 2 * 100
    return float(np.nanpercentile(rho, tail)), float(np.nanpercentile(rho, 100 - tail))


def scale_transfer(kinds: Iterable[str], X: np.ndarray, y: np.ndarray,
                   held_out: dict[str, tuple[np.ndarray, np.ndarray]], config: FitConfig,
                   monotone_index: Optional[int] = None, samples: int = 1000,
                   fitted: Optional[dict] = None) -> dict:
    """How well each kind, fit on the (small-scale) runs X, y only, ranks runs at other scales:
    {kind: {scale: {spearman, low, high, n}}} with percentile-bootstrap 95% intervals. The
    held-out runs are only scored, never fitted. `fitted` may hold already fitted models."""
    out = {}
    for kind in kinds:
        model = (fitted or {}).get(kind) or REGRESSORS[kind].fit(X, y, config, monotone_index)
        out[kind] = {}
        for scale, (HX, hy) in held_out.items():
            predicted = model.predict(HX)
            low, high = bootstrap_spearman(predicted, hy, samples, config.seed)
            out[kind][scale] = {"spearman": float(spearmanr(predicted, hy)[0]), "low": low,
                                "high": high, "n": int(len(hy))}
    return out


def choose_by_scale(transfer: dict) -> str:
    """The kind with the highest mean held-out-scale Spearman (ties: the first listed)."""
    return max(transfer, key=lambda k: np.mean([v["spearman"] for v in transfer[k].values()]))


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
    target_kinds: dict = field(default_factory=dict)  # target -> kind, when chosen per target

    def kind_of(self, target: str) -> str:
        return self.target_kinds.get(target, self.kind)

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


def budget_caps(tokens: np.ndarray, budget: float, max_epochs: float = 4.0) -> np.ndarray:
    """Per-domain weight caps under a token budget: weight_d * budget <= max_epochs * tokens_d
    (no domain repeated beyond `max_epochs`), at most 1."""
    if budget <= 0 or max_epochs <= 0:
        raise ValueError("the budget and max_epochs must be positive")
    caps = np.minimum(max_epochs * np.asarray(tokens, dtype=float) / float(budget), 1.0)
    if caps.sum() < 1.0:
        raise ValueError(f"the domains hold {np.sum(tokens):,.0f} tokens: {max_epochs:g} epochs "
                         f"of everything cannot fill a budget of {budget:,.0f}")
    return caps


def cap_mixtures(W: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Rows of W moved onto {w : sum w = 1, w <= caps} by water-filling: a weight over its cap
    is cut to the cap and the excess goes to the domains under their caps, in proportion to
    their weights (to their headroom where those are all zero), until none is over."""
    W = np.array(W, dtype=float)
    W /= W.sum(axis=1, keepdims=True)
    caps = np.asarray(caps, dtype=float)
    if caps.sum() < 1 - 1e-12:
        raise ValueError("the caps sum to less than 1: no mixture fits under them")
    for _ in range(W.shape[1] + 1):
        over = W > caps + 1e-12
        if not over.any():
            break
        excess = np.where(over, W - caps, 0.0).sum(axis=1, keepdims=True)
        W = np.minimum(W, caps)
        free = W < caps - 1e-12
        base = np.where(free, W, 0.0)
        empty = base.sum(axis=1, keepdims=True) <= 0
        base = np.where(empty, np.where(free, caps - W, 0.0), base)
        W = W + excess * base / np.maximum(base.sum(axis=1, keepdims=True), 1e-300)
    return W


def optimum(model: MixtureModel, prior: np.ndarray, config: ProposalConfig = ProposalConfig(),
            candidates: int = 100_000, top_k: int = 100, seed: int = 42,
            caps: Optional[np.ndarray] = None) -> dict:
    """The mean of the `top_k` candidate mixtures with the lowest predicted objective; with
    `caps` (e.g. `budget_caps`) the candidates are first water-filled under the caps
    (`cap_mixtures`), so they and their mean respect them."""
    rng = np.random.default_rng(seed)
    simulated = sample_candidates(prior, candidates, config, rng)
    if caps is not None:
        simulated = cap_mixtures(simulated, caps)
    if len(simulated) < top_k:
        raise ValueError(f"only {len(simulated)} candidates pass the caps; need top_k={top_k}")
    predicted = model.predict(simulated)
    best = np.argsort(predicted)[:top_k]
    weights = simulated[best].mean(axis=0)
    weights /= weights.sum()
    return {"weights": dict(zip(model.domains, weights.tolist())),
            "predicted": float(model.predict(weights[None, :])[0]),
            "predicted_targets": {t: float(v[0]) for t, v in
                                  model.predict_targets(weights[None, :]).items()},
            "top_k_predicted": [float(predicted[best].min()), float(predicted[best].max())],
            "candidates": int(len(simulated)), "top_k": top_k}


# --- Bayesian optimisation: the next batch of proxy runs ----------------------------------------

@dataclass(frozen=True)
class SuggestConfig:
    """Batch Bayesian optimisation over the simplex: a Gaussian process on the square roots of
    the weights (the Hellinger embedding: distances between mixtures stay bounded and small
    weights are not squashed), Matern 5/2 kernel with a learned length scale and noise; the
    batch is picked greedily by expected improvement with the kriging believer (each pick is
    added with its predicted mean as a pseudo-observation before the next)."""

    xi: float = 0.01              # EI exploration margin, in standardised loss units
    initial: int = 8              # below this many runs, suggest random candidates
    restarts: int = 2             # GP hyperparameter optimiser restarts
    seed: int = 42


def _gp(Z: np.ndarray, y: np.ndarray, config: SuggestConfig, kernel=None):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    with warnings.catch_warnings():  # noise at its lower bound is fine: the losses are exact
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kernel is None:
            kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(0.5, (1e-2, 1e1), nu=2.5)
                      + WhiteKernel(1e-2, (1e-6, 1e0)))
            return GaussianProcessRegressor(kernel, normalize_y=False,
                                            n_restarts_optimizer=config.restarts,
                                            random_state=config.seed).fit(Z, y)
        return GaussianProcessRegressor(kernel, optimizer=None, normalize_y=False).fit(Z, y)


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float,
                         xi: float = 0.0) -> np.ndarray:
    """EI for minimisation."""
    from scipy.stats import norm

    std = np.maximum(std, 1e-12)
    gain = best - mean - xi
    z = gain / std
    return gain * norm.cdf(z) + std * norm.pdf(z)


def suggest(X: np.ndarray, y: np.ndarray, candidates: np.ndarray, n: int,
            config: SuggestConfig = SuggestConfig(),
            low: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """Indices of `n` distinct rows of `candidates` to run next, given runs X (mixtures) with
    objective y (lower is better).

    `low`: runs at a cheaper fidelity (smaller proxies: mixtures, objective). They join the GP
    with a fidelity coordinate (0 for them, `gap` for the runs at the target fidelity, which are
    the ones suggested) and their objective standardised on its own; `gap` (how far apart the
    two fidelities are, in the kernel's units) is chosen from a grid by the GP's marginal
    likelihood. A two-level version of multi-fidelity BO (ADMIRE-BayesOpt)."""
    X, y, candidates = (np.asarray(a, dtype=float) for a in (X, y, candidates))
    n = min(n, len(candidates))
    rng = np.random.default_rng(config.seed)
    if len(y) < (2 if low is not None else config.initial):
        return rng.choice(len(candidates), size=n, replace=False)
    mu, sigma = float(y.mean()), float(y.std()) or 1.0
    Z, target = np.sqrt(np.clip(X, 0, None)), (y - mu) / sigma
    C = np.sqrt(np.clip(candidates, 0, None))
    if low is not None:
        LX, ly = (np.asarray(a, dtype=float) for a in low)
        low_target = (ly - ly.mean()) / (ly.std() or 1.0)
        best_fit = None
        for gap in (0.1, 0.3, 1.0, 3.0):
            ZZ = np.vstack([np.column_stack([np.sqrt(np.clip(LX, 0, None)),
                                             np.zeros(len(LX))]),
                            np.column_stack([Z, np.full(len(Z), gap)])])
            gp = _gp(ZZ, np.concatenate([low_target, target]), replace(config, restarts=0))
            lml = gp.log_marginal_likelihood_value_
            if best_fit is None or lml > best_fit[0]:
                best_fit = (lml, gap, gp, ZZ)
        _, gap, gp, Z = best_fit
        target = np.concatenate([low_target, target])
        C = np.column_stack([C, np.full(len(C), gap)])
        best = float(((y - mu) / sigma).min())
    else:
        gp = _gp(Z, target, config)
        best = float(target.min())
    kernel = gp.kernel_
    picked: list[int] = []
    available = np.ones(len(C), dtype=bool)
    for _ in range(n):
        mean, std = gp.predict(C, return_std=True)
        score = expected_improvement(mean, std, best, config.xi)
        score[~available] = -np.inf
        k = int(np.argmax(score))
        picked.append(k)
        available[k] = False
        Z = np.vstack([Z, C[k]])
        target = np.append(target, mean[k])      # kriging believer
        gp = _gp(Z, target, config, kernel)
    return np.array(picked)


def simulate_suggest(pool_X: np.ndarray, pool_y: np.ndarray, initial: int = 16,
                     batch: int = 8, rounds: int = 4, seed: int = 0,
                     config: SuggestConfig = SuggestConfig(),
                     low: Optional[tuple[np.ndarray, np.ndarray]] = None) -> dict:
    """Ask/tell on a pool of runs whose losses are known: `initial` random runs, then `rounds`
    batches of `batch` suggested by `suggest` (candidates: the pool's runs not yet run; `low`:
    cheaper-fidelity runs given to it), against the same number of random runs after the same
    initial ones. Returns the best loss found after each round by both, and the pool's best."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool_y))
    start = list(order[:initial])
    random_runs = list(order[:initial + batch * rounds])
    ran = list(start)
    best_suggest, best_random = [], []
    for r in range(rounds):
        left = np.setdiff1d(np.arange(len(pool_y)), ran)
        picks = suggest(pool_X[ran], pool_y[ran], pool_X[left], batch,
                        replace(config, seed=config.seed + seed * 1000 + r), low)
        ran.extend(left[picks].tolist())
        best_suggest.append(float(pool_y[ran].min()))
        best_random.append(float(pool_y[random_runs[:initial + batch * (r + 1)]].min()))
    return {"suggest": best_suggest, "random": best_random, "pool_best": float(pool_y.min()),
            "initial_best": float(pool_y[start].min())}
