"""Cluster-based pruning and balancing (transforms/selection/pruning.py, clusters.py) on real
Wikipedia revisions: balance (MetaCLIP), prototypes (Sorscher et al.), semdedup (Abbas et al.
2023), cluster_complexity (Abbas et al. 2024), the shared clustering step and `sluice select`."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow.dataset as ds
import pytest

from pipelines.cli import main
from tests.selection.test_select import ONE_PROCESS, run_stage, wiki_rows
from transforms.core.config import ConfigError, parse
from transforms.selection.clusters import CENTRES_FILE, load_centres
from transforms.selection.pruning import (BALANCE_OVER_CAP, COMPLEXITY_PRUNED, PROTOTYPE_PRUNED,
                                          SEMANTIC_DUPLICATE, Balance, BalanceConfig,
                                          ClusterComplexity, ComplexityConfig, Prototypes,
                                          SemDedup, SemDedupConfig, complexity_quotas,
                                          document_hashes, keep_quotas_in_memory,
                                          semdedup_cluster)

CLUSTERS = {"k": 10, "embedding": {"model": "hashed", "dim": 256}}


@pytest.fixture(scope="module")
def wiki(shared):
    return wiki_rows(shared, 60)


@pytest.fixture(scope="module")
def shared():
    from tests.selection.test_select import SHARED_DATA
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


def payload_groups(rejected) -> Counter:
    return Counter(json.loads(p)["group"] for p in rejected.column("payload").to_pylist())


def test_balance_caps_every_cluster_exactly(wiki):
    config = parse(BalanceConfig, {"max_per_cluster": 15, "clusters": CLUSTERS, "seed": 3})
    kept, rejected = run_stage(Balance(config), wiki)
    assert kept.num_rows + rejected.num_rows == len(wiki)
    assert set(rejected.column("reason").to_pylist()) == {BALANCE_OVER_CAP}
    kept_per = Counter(kept.column("kmeans_cluster").to_pylist())
    dropped_per = payload_groups(rejected)
    for cluster in set(kept_per) | set(dropped_per):
        size = kept_per[cluster] + dropped_per[cluster]
        assert kept_per[cluster] == min(size, 15), (cluster, size)
    assert any(kept_per[c] + dropped_per[c] > 15 for c in kept_per)    # some cluster was capped
    assert any(kept_per[c] + dropped_per[c] < 15 for c in kept_per)    # and some stayed whole


def test_balance_by_column_is_a_seeded_uniform_choice_independent_of_batching(wiki):
    config = parse(BalanceConfig, {"max_per_cluster": 2, "column": "article", "seed": 1})
    kept, rejected = run_stage(Balance(config), wiki, batch_size=100)
    again, _ = run_stage(Balance(config), wiki, batch_size=37)
    assert sorted(kept.column("id").to_pylist()) == sorted(again.column("id").to_pylist())
    sizes = Counter(r["article"] for r in wiki)
    kept_per = Counter(kept.column("article").to_pylist())
    assert kept_per == Counter({a: min(n, 2) for a, n in sizes.items()})
    # the chosen two are the two smallest hashes of (seed, id) in their article
    by_article: dict = {}
    for row in wiki:
        by_article.setdefault(row["article"], []).append(row["id"])
    expected = set()
    for ids in by_article.values():
        expected |= {ids[i] for i in np.argsort(document_hashes(ids, 1))[:2]}
    assert set(kept.column("id").to_pylist()) == expected
    # another seed picks (partly) other revisions
    other, _ = run_stage(Balance(parse(BalanceConfig, {"max_per_cluster": 2, "column": "article",
                                                       "seed": 2})), wiki)
    assert set(other.column("id").to_pylist()) != expected


@pytest.mark.parametrize("keep,per_cluster", [("easy", True), ("hard", False)])
def test_prototypes_keep_by_distance_to_the_prototype(wiki, keep, per_cluster):
    config = parse(Prototypes.Config, {"fraction": 0.3, "keep": keep, "per_cluster": per_cluster,
                                       "clusters": CLUSTERS})
    kept, rejected = run_stage(Prototypes(config), wiki)
    assert set(rejected.column("reason").to_pylist()) == {PROTOTYPE_PRUNED}
    out = kept.to_pandas()
    dropped_ids = set(rejected.column("id").to_pylist())
    # distances of the dropped documents, from the same clustering (rerun keeps every document)
    everything, _ = run_stage(Prototypes(parse(Prototypes.Config, {
        "fraction": 1.0, "clusters": CLUSTERS})), wiki)
    full = everything.to_pandas().set_index("id")
    dropped = full.loc[sorted(dropped_ids)]
    if per_cluster:
        for cluster, members in full.groupby("kmeans_cluster"):
            mine = out[out["kmeans_cluster"] == cluster]
            assert len(mine) == int(round(0.3 * len(members)))
            gone = dropped[dropped["kmeans_cluster"] == cluster]
            if len(mine) and len(gone):
                assert mine["kmeans_distance"].max() <= gone["kmeans_distance"].min()
    else:
        assert len(out) == int(round(0.3 * len(wiki)))
        assert out["kmeans_distance"].min() >= dropped["kmeans_distance"].max()


def test_semdedup_within_a_cluster_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 16))
    embeddings = np.concatenate([base, base[:10] + 0.01 * rng.normal(size=(10, 16))])
    order = rng.random(40)
    duplicate, partner, similarity = semdedup_cluster(embeddings, order, eps=0.01, block=7)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sims = unit @ unit.T
    rank = np.argsort(np.argsort(-order))
    for i in range(40):
        earlier = np.flatnonzero(rank < rank[i])
        expected = len(earlier) and sims[i, earlier].max() >= 0.99
        assert duplicate[i] == bool(expected)
        if duplicate[i]:
            assert rank[partner[i]] < rank[i] and np.isclose(similarity[i], sims[i, partner[i]])
    # each near-copy pair loses exactly one member: the one ranked later
    assert duplicate.sum() == 10


def test_semdedup_finds_revisions_of_one_article(wiki):
    rows = [dict(r) for r in wiki] + [dict(wiki[0], id="copy-of-first")]
    config = parse(SemDedupConfig, {"eps": 0.05, "clusters": CLUSTERS})
    kept, rejected = run_stage(SemDedup(config), rows)
    assert kept.num_rows + rejected.num_rows == len(rows)
    assert set(rejected.column("reason").to_pylist()) == {SEMANTIC_DUPLICATE}
    payloads = [json.loads(p) for p in rejected.column("payload").to_pylist()]
    dropped = {p["id"]: p for p in payloads}
    # the exact copy is found: at least one of the two identical documents goes (both, when the
    # first is itself a near-duplicate of a revision ranked before both: the paper's rule)
    assert "copy-of-first" in dropped or wiki[0]["id"] in dropped
    article = {r["id"]: r["article"] for r in rows}
    same = np.mean([article[p["id"]] == article[p["duplicate_of"]] for p in payloads])
    assert len(payloads) > 50 and same > 0.95          # near-duplicates are revisions
    assert all(p["similarity"] >= 0.95 for p in payloads)
    # every article keeps at least one revision (a group keeps one member)
    assert set(kept.column("article").to_pylist()) == {r["article"] for r in rows}


def test_complexity_quotas_follow_the_softmax_and_the_cluster_sizes():
    sizes = {0: 100, 1: 100, 2: 5, 3: 100}
    d_intra = {0: 0.1, 1: 0.3, 2: 0.9, 3: 0.5}
    d_inter = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    quotas = complexity_quotas(sizes, d_intra, d_inter, 150, temperature=0.1)
    assert sum(quotas.values()) == 150 and quotas[2] == 5      # capped at its size
    assert quotas[0] < quotas[1] < quotas[3] <= 100
    # a huge temperature is uniform over the clusters (up to their sizes)
    flat = complexity_quotas(sizes, d_intra, d_inter, 150, temperature=1e6)
    assert flat[2] == 5 and max(flat[0], flat[1], flat[3]) - min(flat[0], flat[1], flat[3]) <= 1


def test_cluster_complexity_keeps_the_fraction(wiki):
    config = parse(ComplexityConfig, {"fraction": 0.4, "clusters": CLUSTERS})
    kept, rejected = run_stage(ClusterComplexity(config), wiki)
    assert kept.num_rows == round(0.4 * len(wiki))
    assert set(rejected.column("reason").to_pylist()) == {COMPLEXITY_PRUNED}
    # inside a cluster the hard (farthest) members are kept
    out = kept.to_pandas()
    everything, _ = run_stage(Prototypes(parse(Prototypes.Config, {
        "fraction": 1.0, "clusters": CLUSTERS})), wiki)
    full = everything.to_pandas()
    for cluster, mine in out.groupby("kmeans_cluster"):
        members = full[full["kmeans_cluster"] == cluster]
        gone = members[~members["id"].isin(out["id"])]
        if len(gone):
            assert mine["kmeans_distance"].min() >= gone["kmeans_distance"].max()


def test_quota_keep_in_memory_is_exact():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 5, 1000)
    scores = rng.random(1000)
    ties = rng.random(1000)
    keep = keep_quotas_in_memory(groups, scores, ties, lambda counts: {g: 7 for g in counts},
                                 cap=20)
    assert all((keep & (groups == g)).sum() == 7 for g in range(5))
    # beyond the exact cap the cut is the sample's quantile: close, not exact
    keep = keep_quotas_in_memory(groups, scores, ties, lambda counts: {g: 100 for g in counts},
                                 cap=20)
    assert all(abs((keep & (groups == g)).sum() - 100) < 60 for g in range(5))


def test_configs_are_checked():
    with pytest.raises(ConfigError, match="max_per_cluster"):
        parse(BalanceConfig, {"max_per_cluster": 0})
    with pytest.raises(ConfigError, match="quality_column"):
        parse(SemDedupConfig, {"keep": "quality"})
    with pytest.raises(ConfigError, match="unknown key"):
        parse(BalanceConfig, {"max_per_cluster": 3, "clusters": {"kk": 3}})


def test_select_command_balance_saves_centres_and_reuses_them(wiki, tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in wiki))
    first, second = tmp_path / "first", tmp_path / "second"
    code = main(["select", str(path), "--method", "balance", "--clusters", "8",
                 "--max-per-cluster", "20", "--embedder", "hashed", "--save-centres",
                 "--output", str(first), *ONE_PROCESS])
    assert code == 0
    stats = json.loads((first / "stats.json").read_text())
    assert stats["balanced"] and stats["dropped"][BALANCE_OVER_CAP] > 0
    centres = load_centres(str(first / CENTRES_FILE))
    assert centres.shape[0] == 8
    code = main(["select", str(path), "--method", "prototypes", "--fraction", "1",
                 "--centres", str(first / CENTRES_FILE), "--embedder", "hashed",
                 "--output", str(second), *ONE_PROCESS])
    assert code == 0
    a = ds.dataset(first / "documents", format="arrow").to_table().to_pandas()
    b = ds.dataset(second / "documents", format="arrow").to_table().to_pandas()
    assert len(b) == len(wiki)
    merged = a.merge(b, on="id")
    assert len(merged) == len(a) and (merged["kmeans_cluster_x"] == merged["kmeans_cluster_y"]).all()
    manifest = json.loads((second / "manifest.json").read_text())
    stage = manifest["config"]["stages"][0]["prototypes"]
    assert stage["clusters"]["centres"].endswith(CENTRES_FILE)


def test_select_command_semdedup_and_column_balance(wiki, tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in wiki))
    out = tmp_path / "col"
    assert main(["select", str(path), "--method", "balance", "--column", "article",
                 "--max-per-cluster", "3", "--output", str(out), *ONE_PROCESS]) == 0
    stats = json.loads((out / "stats.json").read_text())
    sizes = Counter(r["article"] for r in wiki)
    assert stats["kept"] == sum(min(n, 3) for n in sizes.values())
    out = tmp_path / "sem"
    assert main(["select", str(path), "--method", "semdedup", "--eps", "0.05", "--clusters", "10",
                 "--embedder", "hashed", "--output", str(out), *ONE_PROCESS]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["balanced"] and stats["dropped"][SEMANTIC_DUPLICATE] > 0
