"""Language identification with a fastText language-ID model (lid.176 or GlotLID), by path.

Adds `language` (the top label without `__label__`, e.g. `en`; GlotLID labels look like
`eng_Latn`) and `language_score` (its probability). Keeping only some languages is the separate
`filter` stage (`column: language, values: [en]`), as for every score.
"""
from __future__ import annotations

from classifiers.fasttext_quality import Classifier, require_file
from transforms.core.columns import LANGUAGE, LANGUAGE_SCORE
from transforms.core.config import config_dataclass
from transforms.core.documents import TEXT
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract


@config_dataclass
class LangIdConfig:
    model: str
    column: str = LANGUAGE
    score_column: str = LANGUAGE_SCORE


class LangIdFn(ScoreBatchFn):
    stage = "langid"

    def model_key(self) -> str:
        return self.config.model

    def load_model(self) -> Classifier:
        return Classifier.from_path(self.config.model, "language-ID model")

    def score(self, batch) -> Scored:
        labels, probabilities = self.model.top(batch.column(TEXT).to_pylist())
        return Scored(columns={self.config.column: labels,
                               self.config.score_column: probabilities})


class LangIdStage(ScoringStage):
    """Language ID (see the module docstring)."""

    Config = LangIdConfig

    def __init__(self, config: LangIdConfig, context=None):
        super().__init__(config, context)
        require_file(config.model, "language-ID model")

    def contract(self) -> Contract:
        return Contract(writes=(self.config.column, self.config.score_column))

    def score_fn(self) -> LangIdFn:
        return LangIdFn(self.config)
