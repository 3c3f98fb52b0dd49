"""Embedding quality classifier on real labelled pages: `sluice quality train-embedding` writes a
JSON model (coefficients, nothing executable), the `embedding_quality` stage scores a real job
with it, and the scores rank held-out human labels. The hashed embedding needs no model (runs
everywhere); the MiniLM one runs where the `minilm` extra is installed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from classifiers import embedding_quality
from classifiers.embeddings import EmbeddingConfig, minilm_available
from pipelines.cli import main as sluice
from pipelines.job import run_job
from transforms.core.config import ConfigError
from transforms.io.sink import read_output
from transforms.quality.embedding_quality import EmbeddingQualityConfig, EmbeddingQualityStage

BEAM = ["--direct_num_workers", "1"]


def labelled(shared_data, name: str) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in (shared_data / "dclm_quality" / name).open()]
    return [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])


def auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(labels, scores)


@pytest.mark.parametrize("embedding", [
    "hashed",
    pytest.param("minilm", marks=pytest.mark.skipif(not minilm_available(),
                                                    reason='pip install "sluice[minilm]"'))])
def test_train_embedding_then_score_a_job_ranks_held_out_labels(embedding, shared_data,
                                                                tmp_path):
    train = shared_data / "dclm_quality" / "majority_data.jsonl"
    model_path = tmp_path / "model.json"
    assert sluice(["quality", "train-embedding", "--data", str(train), "--output",
                   str(model_path), "--embedding", embedding]) == 0
    stored = json.loads(model_path.read_text())  # plain JSON: settings and numbers only
    assert stored["format"] == "sluice-embedding-quality" and stored["embedding"]["model"] == \
        embedding
    assert len(stored["coef"]) == (384 if embedding == "minilm" else 512)
    assert stored["info"]["documents"] == 499 and stored["info"]["C"] > 0

    # agreement_data: 281 other pages (labelled by agreeing annotators), held out from training
    held_out = shared_data / "dclm_quality" / "agreement_data.jsonl"
    stats = run_job({"input": [{"path": str(held_out)}], "output": str(tmp_path / "out"),
                     "stages": [{"embedding_quality": {"model": str(model_path)}}]}, BEAM,
                    log=lambda *_: None)
    assert stats["balanced"] and stats["failed"] == 0
    table = read_output(str(tmp_path / "out" / "documents")).to_pylist()
    scores = np.array([r["embedding_quality_score"] for r in table])
    assert len(table) == 281 and ((scores >= 0) & (scores <= 1)).all()
    labels = np.array([int(r["label"]) for r in table])
    assert auc(labels, scores) > (0.8 if embedding == "minilm" else 0.6)

    # the stage's scores are the classifier's (one model, loaded once per worker)
    model = embedding_quality.load(str(model_path))
    np.testing.assert_allclose(model.probability([r["text"] for r in table]), scores,
                               rtol=1e-5, atol=1e-6)


def test_model_file_round_trips_and_bad_files_fail_before_the_run(shared_data, tmp_path):
    texts, labels = labelled(shared_data, "majority_data.jsonl")
    model = embedding_quality.train(texts[:200], labels[:200],
                                    EmbeddingConfig(model="hashed", dim=256))
    path = tmp_path / "m.json"
    model.save(str(path))
    loaded = embedding_quality.load(str(path))
    assert loaded.embedding["model"] == "hashed" and loaded.embedding["dim"] == 256
    np.testing.assert_allclose(loaded.probability(texts[200:260]),
                               model.probability(texts[200:260]))

    with pytest.raises(Exception, match="not found"):
        EmbeddingQualityStage(EmbeddingQualityConfig(model=str(tmp_path / "missing.json")))
    (tmp_path / "other.json").write_text(json.dumps({"coef": [1.0]}))
    with pytest.raises(ConfigError, match="not a sluice-embedding-quality model"):
        EmbeddingQualityStage(EmbeddingQualityConfig(model=str(tmp_path / "other.json")))
