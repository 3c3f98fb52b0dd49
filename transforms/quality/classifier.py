"""fastText quality score stage: adds `quality_score` = P(high quality) from a supervised model.

The DCLM classifier (Li et al. 2024, "DataComp-LM") is the default shape: labels `hq`/`cc`,
score = P(hq). The model is loaded once per worker (`DoFn.setup`) and predicts a whole batch in
one native fastText call. Thresholding is the separate `filter` stage, so scores can be
re-thresholded without re-scoring.

With `train`, the stage trains its model first when `model` does not exist yet (or with
`train.retrain`), from labelled documents, with the DCLM recipe, and saves it at `model`; later
runs reuse that file. This is how a recipe runs from a fresh clone without a committed model:
`train: {data: [data/dclm_quality/majority_data.jsonl], bucket: 200000}` trains on DCLM's 499
human-labelled pages (MIT, bundled) in a few seconds and writes an ~80 MB model.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import field
from typing import Iterator, Optional, Union

from apache_beam.io.filesystems import FileSystems

from classifiers import fasttext_quality
from classifiers.fasttext_quality import NEGATIVE, POSITIVE, Classifier, require_file
from transforms.core.columns import QUALITY_SCORE
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import TEXT
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract
from transforms.io.ingest import READERS, Failure, InputSpec, detect_format, expand_inputs


def read_records(paths: list[str]) -> Iterator[dict]:
    """Records of every file the globs match, in any input format; unreadable ones skipped."""
    for _, path, _ in expand_inputs([InputSpec(path=p) for p in paths]):
        for record in READERS[detect_format(path)](path):
            if not isinstance(record, Failure):
                yield record


def labelled_records(paths: list[str], label_field: str, positive_values,
                     text_field: str = TEXT) -> tuple[list[str], list[str]]:
    """(texts, hq/cc labels) of labelled documents: a label in `positive_values` (compared as
    lowercase strings) is `hq`, any other non-null label `cc`."""
    positive = {str(v).lower() for v in positive_values}
    texts, labels = [], []
    for record in read_records(paths):
        text, label = record.get(text_field), record.get(label_field)
        if isinstance(text, str) and label is not None:
            texts.append(text)
            labels.append(POSITIVE if str(label).lower() in positive else NEGATIVE)
    return texts, labels


@config_dataclass
class TrainConfig:
    """Train the model (DCLM recipe) when `model` is missing: labelled documents in `data`."""

    data: list[str]                         # globs of labelled documents (JSONL/Parquet/Arrow)
    label_field: str = "label"
    positive_values: list[Union[str, int, bool]] = field(
        default_factory=lambda: ["1", "true", "hq"])
    text_field: str = TEXT
    bucket: int = 200_000                   # hashed n-gram rows: ~80 MB at dim 100
    epoch: int = 5
    word_ngrams: int = 2
    lr: float = 0.1
    dim: int = 100
    seed: int = 0
    threads: int = 1                        # 1: the same model on every run (fastText's
                                            # multi-threaded training is not deterministic)
    retrain: bool = False                   # train again even if `model` exists


@config_dataclass
class QualityConfig:
    model: str
    column: str = QUALITY_SCORE
    label: str = POSITIVE       # the label whose probability is the score
    train: Optional[TrainConfig] = None     # train `model` first if it does not exist


def train_model(config: TrainConfig, output: str, log=None) -> None:
    """Train a fastText quality model from `config` and save it at `output` (local or remote)."""
    texts, labels = labelled_records(config.data, config.label_field, config.positive_values,
                                     config.text_field)
    if len(set(labels)) < 2:
        raise ConfigError(f"quality.train: {config.data} gave {len(labels)} labelled documents "
                          f"of {len(set(labels))} class(es); training needs both")
    params = {"epoch": config.epoch, "wordNgrams": config.word_ngrams, "lr": config.lr,
              "dim": config.dim, "bucket": config.bucket, "seed": config.seed,
              "thread": config.threads}
    if "://" not in output:
        fasttext_quality.train(texts, labels, output, **params)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "model.bin")
            fasttext_quality.train(texts, labels, local, **params)
            with open(local, "rb") as source, FileSystems.create(output) as out:
                shutil.copyfileobj(source, out, length=1 << 22)
    (log or (lambda m: print(m, file=sys.stderr)))(
        f"sluice: quality: trained on {len(texts):,} documents ({labels.count(POSITIVE):,} hq) "
        f"-> {output}")


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
        if config.train is None:
            require_file(config.model, "quality model")
        elif not config.train.data:
            raise ConfigError("quality.train: give `data` (labelled documents)")

    def expand(self, documents):
        # Train in the driver while the job is built (not at `sluice check`), before any worker
        # loads the model; a model already at `model` is reused.
        train = self.config.train
        if train is not None and (train.retrain or not FileSystems.exists(self.config.model)):
            train_model(train, self.config.model)
        return super().expand(documents)

    def contract(self) -> Contract:
        return Contract(writes=(self.config.column,))

    def score_fn(self) -> QualityFn:
        return QualityFn(self.config)
