"""fastText quality score stage: adds `quality_score` = P(high quality) from a supervised model.

The DCLM classifier (Li et al. 2024, "DataComp-LM") is the default shape: labels `hq`/`cc`,
score = P(hq). The model is loaded once per worker (`DoFn.setup`) and predicts a whole batch in
one native fastText call. Thresholding is the separate `filter` stage, so scores can be
re-thresholded without re-scoring.
"""
from __future__ import annotations

from classifiers.fasttext_quality import POSITIVE, Classifier, require_file
from transforms.core.columns import QUALITY_SCORE
from transforms.core.config import config_dataclass
from transforms.core.documents import TEXT
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract


@config_dataclass
class QualityConfig:
    model: str
    column: str = QUALITY_SCORE
    label: str = POSITIVE       # the label whose probability is the score


class QualityFn(ScoreBatchFn):
    stage = "quality"

    def model_key(self) -> str:
        return self.config.model

    def load_model(self) -> Classifier:
        return Classifier.from_path(self.config.model, "quality model")

    def score(self, batch) -> Scored:
        texts = batch.column(TEXT).to_pylist()
        return Scored(columns={self.config.column:
                               self.model.probability(texts, self.config.label)})


class QualityStage(ScoringStage):
    """Score documents with a fastText quality classifier (see the module docstring)."""

    Config = QualityConfig

    def __init__(self, config: QualityConfig, context=None):
        super().__init__(config, context)
        require_file(config.model, "quality model")

    def contract(self) -> Contract:
        return Contract(writes=(self.config.column,))

    def score_fn(self) -> QualityFn:
        return QualityFn(self.config)
