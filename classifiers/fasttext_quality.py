"""fastText models: the DCLM quality classifier (train and score) and language ID (lid.176/GlotLID).

DCLM (Li et al. 2024, "DataComp-LM", Sec. 4.4 and Appendix): `train_supervised` with fastText's
supervised defaults (lr 0.1, dim 100, ws 5, epoch 5, minCount 1) plus wordNgrams 2, labels
`__label__hq` / `__label__cc`, the document with newlines replaced by spaces; the score is
P(hq). fastText predicts a list of texts in one native call (`multilinePredict`), which is what
the scoring stages use, one model per worker.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterable, Sequence

import fasttext
import numpy as np
from apache_beam.io.filesystems import FileSystems

from classifiers import ModelError

POSITIVE, NEGATIVE = "hq", "cc"
LABEL_PREFIX = "__label__"
DCLM_PARAMS = {"lr": 0.1, "dim": 100, "ws": 5, "epoch": 5, "minCount": 1, "wordNgrams": 2}


def one_line(text: str) -> str:
    """fastText reads one example per line: newlines (and carriage returns) become spaces."""
    return text.replace("\r", " ").replace("\n", " ")


def require_file(path: str, what: str) -> None:
    """A ModelError naming `what` when `path` (local or remote) does not exist."""
    if not path or not FileSystems.exists(path):
        raise ModelError(f"{what} not found: '{path}'")


def local_copy(path: str) -> str:
    """A local path for a model file (remote files are copied to a temporary file once)."""
    if "://" not in path:
        return path
    handle, local = tempfile.mkstemp(suffix=os.path.basename(path))
    with os.fdopen(handle, "wb") as out, FileSystems.open(path) as source:
        shutil.copyfileobj(source, out, length=1 << 22)
    return local


def load(path: str, what: str = "fastText model") -> "fasttext.FastText._FastText":
    require_file(path, what)
    return fasttext.load_model(local_copy(path))


def train_model(texts: Iterable[str], labels: Iterable[str], **params):
    """A supervised fastText model trained on (text, label) pairs, in memory.

    Defaults follow the DCLM recipe; `params` override any fastText argument (fastText's default
    `bucket` of 2M hashed n-gram rows makes a ~800 MB model; a smaller one trades accuracy).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        examples = 0
        for text, label in zip(texts, labels):
            f.write(f"{LABEL_PREFIX}{label} {one_line(text)}\n")
            examples += 1
    try:
        if not examples:
            raise ModelError("no training examples")
        return fasttext.train_supervised(input=f.name, verbose=0, **{**DCLM_PARAMS, **params})
    finally:
        os.unlink(f.name)


def train(texts: Iterable[str], labels: Iterable[str], output: str, **params) -> None:
    """Train (see `train_model`) and save the model to `output`."""
    model = train_model(texts, labels, **params)
    directory = os.path.dirname(output)
    if directory:
        os.makedirs(directory, exist_ok=True)
    model.save_model(output)


class Classifier:
    """A loaded supervised fastText model that scores lists of texts."""

    def __init__(self, model):
        self.model = model
        self.labels = [label[len(LABEL_PREFIX):] for label in model.get_labels()]

    @classmethod
    def from_path(cls, path: str, what: str = "fastText model") -> "Classifier":
        return cls(load(path, what))

    def probability(self, texts: Sequence[str], label: str) -> np.ndarray:
        """P(label | text) for every text.

        With two labels only the top one is asked for and the other's probability is its
        complement (as DCLM scores), which saves building a second result per text.
        """
        if label not in self.labels:
            raise ModelError(f"label '{label}' is not in the model (labels: {self.labels})")
        if not texts:
            return np.zeros(0)
        wanted = LABEL_PREFIX + label
        if len(self.labels) == 2:
            top, probability = self._predict(texts, 1)
            return np.where(np.array([ls[0] == wanted for ls in top]), probability,
                            1.0 - probability)
        labels, probs = self.model.predict([one_line(t) for t in texts], k=len(self.labels))
        return np.fromiter((p[list(ls).index(wanted)] for ls, p in zip(labels, probs)),
                           dtype=np.float64, count=len(texts))

    def _predict(self, texts: Sequence[str], k: int) -> tuple[list, np.ndarray]:
        labels, probs = self.model.predict([one_line(t) for t in texts], k=k)
        return labels, np.fromiter((p[0] for p in probs), dtype=np.float64, count=len(texts))

    def top(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The most probable label (without `__label__`) and its probability, per text."""
        if not texts:
            return [], np.zeros(0)
        labels, probability = self._predict(texts, 1)
        return [ls[0][len(LABEL_PREFIX):] for ls in labels], probability
