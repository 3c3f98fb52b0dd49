"""KenLM n-gram models: load by path (ARPA or KenLM binary) and score tokenised lines; build
an ARPA model from text with the project's own estimator (`classifiers.arpa`), since `lmplz` is
not packaged."""
from __future__ import annotations

import os
from typing import Iterable

import kenlm
import numpy as np

from classifiers.arpa import build_arpa
from classifiers.fasttext_quality import local_copy, require_file


def load(path: str) -> "kenlm.Model":
    require_file(path, "KenLM model")
    return kenlm.Model(local_copy(path))


def line_log10(model: "kenlm.Model", lines: Iterable[str]) -> np.ndarray:
    """log10 P(line) of every tokenised line, with <s> and </s> around it."""
    return np.fromiter((model.score(line, bos=True, eos=True) for line in lines), dtype=np.float64)


def build(sentences: Iterable[list[str]], output: str, order: int = 5) -> dict:
    """Estimate an interpolated modified Kneser-Ney model and write it as ARPA to `output`."""
    directory = os.path.dirname(output)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(output, "w", encoding="utf-8") as out:
        return build_arpa(sentences, out, order)
