"""Stage `el2n`: score every document by EL2N with proxy models trained once inside the job.

EL2N (Paul et al. 2021, "Deep Learning on a Data Diet"): `E_seed ||softmax(f(x)) - onehot(y)||_2`
from `proxy.models` small models trained briefly from different seeds; for plain text a small
token-level LM (BPE tokenizer trained on the sample) gives the per-token version averaged over the
document (Marion et al. 2023), and the same pass gives the document's perplexity (their study found
perplexity pruning better: both are written so a `select` stage can use either). See
classifiers/proxy.py.

The job first draws a uniform sample of `proxy.train_docs` documents (a bottom-k combine), trains
the proxy once on it in a single step (on `proxy.device`, a GPU when present), and hands the
serialised models to every scoring worker as a side input. Paul et al. score the examples the
models train on; here every document is scored by the same models and `proxy_trained` says
whether it was one of them. The training step logs the EL2N rank stability across seeds and
records it as the `el2n.rank_stability_permille` and `el2n.rank_stability_of_mean_permille`
counters of stats.json (Spearman x 1000; absent with one model).

Columns added: `el2n` (`score_field`), `proxy_trained` (`trained_field`); LM proxy also
`proxy_loss` (mean token cross-entropy, nats per token; per byte for `proxy.lm: bytes`) and
`proxy_perplexity`. A classification document without a known label gets a null score (a later
`select` stage drops it as `no_score`).
"""
from __future__ import annotations

import logging
from dataclasses import field

import apache_beam as beam
import numpy as np
import pyarrow as pa
import xxhash

from classifiers.proxy import (EL2N, LM_LOSS, PERPLEXITY, ProxyConfig, load_proxy, to_bytes,
                               train_proxy)
from transforms.core.accounting import count, record_max
from transforms.core.columns import EL2N as EL2N_COLUMN
from transforms.core.columns import PROXY_LOSS, PROXY_PERPLEXITY
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import ID, TEXT
from transforms.core.extras import require
from transforms.core.scoring import ScoreBatchFn, Scored
from transforms.core.stage import Contract, Stage, documents_and_rejects
from transforms.selection.select import BottomK, random_keys


PROXY_TRAINED = "proxy_trained"
LOG = logging.getLogger(__name__)


def training_rows(batch: pa.RecordBatch, config: ProxyConfig) -> tuple[np.ndarray, np.ndarray]:
    """(random keys, (text, label, id) objects) of the batch's documents usable for training."""
    texts = [t[:config.text_chars] for t in batch.column(TEXT).to_pylist()]
    if config.label_field is None:
        labels = [None] * len(texts)
    elif config.label_field in batch.schema.names:
        labels = batch.column(config.label_field).to_pylist()
    else:
        labels = [None] * len(texts)
    usable = np.array([config.label_field is None or y is not None for y in labels], dtype=bool)
    pairs = np.empty(len(texts), dtype=object)
    pairs[:] = list(zip(texts, labels, batch.column(ID).to_pylist()))
    return random_keys(batch, config.seed)[usable], pairs[usable]


def train_from_sample(sample: tuple[np.ndarray, np.ndarray], config: ProxyConfig) -> bytes:
    """The trained proxy, serialised with the ids it trained on; empty bytes when there was
    nothing to train on. Logs the training report and records its rank stability."""
    rows = sample[1]
    if not len(rows):
        return b""
    count("el2n.proxy_train_docs", len(rows))
    proxy = train_proxy([t for t, _, _ in rows], [y for _, y, _ in rows], config)
    report = proxy.report
    LOG.info("el2n proxy (%s): %s", proxy.kind if config.label_field else config.lm,
             report.describe())
    if report.rank_stability is not None:
        record_max("el2n.rank_stability_permille", round(1000 * report.rank_stability))
        record_max("el2n.rank_stability_of_mean_permille",
                   round(1000 * report.rank_stability_of_mean))
    return to_bytes(proxy, {"train_ids": [str(i) for _, _, i in rows]})


class TrainProxy(beam.PTransform):
    """documents -> a singleton PCollection with the proxy trained on a uniform sample."""

    def __init__(self, config: ProxyConfig):
        super().__init__()
        self.config = config

    def expand(self, documents):
        config = self.config
        return (documents
                | "TrainingRows" >> beam.Map(training_rows, config)
                | "TrainingSample" >> beam.CombineGlobally(BottomK(config.train_docs))
                | "Train" >> beam.Map(train_from_sample, config))


class CachedProxy:
    """Deserialises the side-input proxy once per worker (again only if the bytes change);
    `trained` holds the ids of the documents it trained on."""

    def __init__(self, config: ProxyConfig):
        self.config = config
        self._key = None
        self._proxy = None
        self.trained: frozenset = frozenset()

    def get(self, data: bytes):
        key = xxhash.xxh3_64_intdigest(data)
        if key != self._key:
            self._proxy = load_proxy(data, self.config.device, self.config.threads)
            self.trained = frozenset(self._proxy.metadata.get("train_ids", ()))
            self._key = key
        return self._proxy


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.float64(), mask=~np.isfinite(values))


@config_dataclass
class El2nConfig:
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    score_field: str = EL2N_COLUMN
    loss_field: str = PROXY_LOSS
    perplexity_field: str = PROXY_PERPLEXITY
    trained_field: str = PROXY_TRAINED   # true for the documents the proxy trained on


class ScoreFn(ScoreBatchFn):
    stage = "el2n"

    def setup(self):
        super().setup()
        self.proxy = CachedProxy(self.config.proxy)

    def score(self, batch, model: bytes) -> Scored:
        c = self.config
        if not model:
            raise ConfigError(f"no document to train the EL2N proxy on (label_field "
                              f"{c.proxy.label_field!r} missing everywhere?)")
        texts = batch.column(TEXT).to_pylist()
        labels = (batch.column(c.proxy.label_field).to_pylist()
                  if c.proxy.label_field in batch.schema.names else [None] * len(texts))
        scores = self.proxy.get(model).score(texts, labels)
        trained = [str(i) in self.proxy.trained for i in batch.column(ID).to_pylist()]
        columns = {c.score_field: _nullable(scores[EL2N]),
                   c.trained_field: pa.array(trained, type=pa.bool_())}
        if LM_LOSS in scores:
            columns |= {c.loss_field: _nullable(scores[LM_LOSS]),
                        c.perplexity_field: _nullable(scores[PERPLEXITY])}
        return Scored(columns=columns)


class El2n(Stage):
    """Adds EL2N (and for LM proxies loss and perplexity) columns; drops nothing."""

    Config = El2nConfig

    def __init__(self, config: El2nConfig, context=None):
        require("selection", "torch", "sklearn", "tokenizers", by="stage 'el2n'")
        super().__init__(config, context)

    def contract(self) -> Contract:
        c = self.config
        label = (c.proxy.label_field,) if c.proxy.label_field else ()
        lm = (c.loss_field, c.perplexity_field) if c.proxy.label_field is None else ()
        return Contract(reads=(ID, TEXT, *label), writes=(c.score_field, c.trained_field, *lm))

    def expand(self, documents):
        model = documents | "TrainProxy" >> TrainProxy(self.config.proxy)
        return documents_and_rejects(documents, "Score", ScoreFn(self.config),
                                     beam.pvalue.AsSingleton(model))
