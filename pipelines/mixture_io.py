"""The files of a fitted RegMix model (`sluice mixture fit` writes them, `sluice mixture
predict|report` and `sluice refresh --mixture-model` read them): names, CSV tables, token counts
and the saved regressors. Shared by pipelines/mixture.py and pipelines/report.py, which import
this module and not each other's."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow.csv as pacsv

from classifiers.regmix import LIGHTGBM, REGRESSORS, STACK, MixtureModel, domain_tokens
from transforms.core.config import ConfigError
from transforms.core.extras import require

MODEL_FILE, FIT_FILE, MIXTURE_FILE, TRAIN_FILE = "model.json", "fit.json", "mixture.json", "train.csv"
REPORT_FILE = "report.html"
INDEX = "index"
PER_TARGET = "per-target"  # the model label when `fit --choose scale` picked a kind per target


def short(domain: str) -> str:
    """Label for a domain or loss column: `train_the_pile_pile_cc` -> `pile_cc`."""
    for prefix in ("metric/", "train_", "the_pile_"):
        domain = domain[len(prefix):] if domain.startswith(prefix) else domain
    return domain.removesuffix("_val_loss")


def read_csv(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """(index values as strings, column names, float matrix) of a CSV with an `index` column."""
    try:
        table = pacsv.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read '{path}': {exc}") from None
    if INDEX not in table.column_names:
        raise ConfigError(f"'{path}' has no '{INDEX}' column")
    index = [str(v) for v in table.column(INDEX).to_pylist()]
    columns = [c for c in table.column_names if c != INDEX]
    try:
        values = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(float)
                                  for c in columns])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"'{path}': every column but '{INDEX}' must be numeric ({exc})") from None
    if np.isnan(values).any():
        raise ConfigError(f"'{path}' has missing values")
    return index, columns, values


def write_csv(path: str, header: list[str], rows) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def join(mixtures_path: str, losses_path: str) -> tuple[list[str], list[str], np.ndarray,
                                                        list[str], np.ndarray]:
    """Mixtures and losses joined on `index` (rows present in both, in mixture order)."""
    m_index, domains, X = read_csv(mixtures_path)
    l_index, loss_columns, L = read_csv(losses_path)
    where = {i: k for k, i in enumerate(l_index)}
    keep = [k for k, i in enumerate(m_index) if i in where]
    if not keep:
        raise ConfigError(f"no '{INDEX}' is shared by '{mixtures_path}' and '{losses_path}'")
    return ([m_index[k] for k in keep], domains, X[keep], loss_columns,
            L[[where[m_index[k]] for k in keep]])


def read_domain_tokens(paths: list[str]) -> dict[str, int]:
    try:
        return domain_tokens(paths)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def load_model(directory: str, kind: str | None = None) -> tuple[MixtureModel, dict]:
    """The objective model of `kind` (default: the one `fit` chose) and model.json."""
    path = os.path.join(directory, MODEL_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except OSError as exc:
        raise ConfigError(f"no fitted model in '{directory}': {exc}") from None
    chosen = saved["chosen"]
    if kind is None and isinstance(chosen, dict):  # chosen per target (`fit --choose scale`)
        kinds = {t: chosen[t] for t in saved["targets"]}
    else:
        kind = kind or chosen
        if kind not in saved["kinds"]:
            raise ConfigError(f"'{directory}' has no {kind} model "
                              f"(has {', '.join(saved['kinds'])})")
        kinds = {t: kind for t in saved["targets"]}
    if any(k in (LIGHTGBM, STACK) for k in kinds.values()):
        require("mixture", "lightgbm", by=f"the LightGBM models in '{directory}'")
    regressors = {t: REGRESSORS[k].load(directory, saved["kinds"][k][t]) for t, k in kinds.items()}
    label = next(iter(kinds.values())) if len(set(kinds.values())) == 1 else PER_TARGET
    return MixtureModel(saved["domains"], saved["targets"], regressors, label,
                        target_kinds=kinds), saved
