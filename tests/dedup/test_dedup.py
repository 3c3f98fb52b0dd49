"""Dedup: MinHash against datasketch, band choice, Beam connected components on adversarial
graphs, verified hot buckets, the stage on real Wikipedia revisions measured against exact
all-pairs Jaccard, survivors, and the incremental index across two runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipelines.cli import main as cli
from pipelines.job import run_job
from tests.support import Collected, test_pipeline
from transforms.core.config import ConfigError, parse
from transforms.core.documents import batch_from_rows
from transforms.dedup import eval as dedup_eval
from transforms.dedup import minhash
from transforms.dedup.components import ConnectedComponents, edge_table
from transforms.dedup.minhash import MinHasher, Shingling, band_keys, choose_bands, low_bits
from transforms.dedup.stage import (Dedup, DedupConfig, choose_survivors, fixed_size_list,
                                    index_sketches, sketch_table, verified_edges)
from transforms.io.sink import read_output

ONE_WORKER = ["--direct_num_workers=1"]
SMALL_RUN = {"partitions": 8, "cc_rounds": 8}  # explicit settings (defaults follow the runner)
SMALL_RUN_ARGS = [f"--set=stages.0.dedup.{key}={value}" for key, value in SMALL_RUN.items()]


def _write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")


# --- MinHash --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shingles_per_chunk", [None, 97])  # 97: documents span chunks
def test_shingles_and_signatures_match_the_definition_and_datasketch(shared_data, monkeypatch,
                                                                     shingles_per_chunk):
    if shingles_per_chunk:
        monkeypatch.setattr(minhash, "_CHUNK_ELEMENTS", 64 * shingles_per_chunk)
    docs = dedup_eval.wiki_documents(shared_data / "wiki_versions", articles=5)
    edges = ["", "   ", "Word!", "two words", "!!!", "a b c d e", "naïve café—test ÀB’c",
             "x\u00a0y\u2003z —lead trail—", "__init__ 3.14 a_b\x00c\td", "日本語のテキスト、です。"]
    texts = [d["text"] for d in docs] + edges
    shingling = Shingling(ngram=5)
    tokens = shingling.tokens(pa.array(texts))
    for text, got in zip(texts, tokens.to_pylist()):
        assert got == re.findall(r"\w+", text.lower())
    hashes, offsets = shingling.shingle_hashes(tokens)
    counts = np.diff(offsets)
    for text, n in zip(texts, counts):  # one hash per distinct shingle position
        n_tokens = len(re.findall(r"\w+", text.lower()))
        assert n == (n_tokens - 4 if n_tokens >= 5 else min(n_tokens, 1))
    for i, text in enumerate(texts):  # equal shingle strings, equal hashes
        distinct = len(set(hashes[offsets[i]:offsets[i + 1]].tolist()))
        assert distinct == len(dedup_eval.word_shingles(text))
    hasher = MinHasher(num_perm=64, seed=3)
    signatures = hasher.signatures(hashes, offsets)
    for i in range(len(texts)):
        reference = MinHash(num_perm=64, seed=3, hashfunc=lambda h: int(h) & 0xFFFFFFFF)
        reference.update_batch(hashes[offsets[i]:offsets[i + 1]].tolist())
        assert np.array_equal(reference.hashvalues, signatures[i])
    assert (signatures[len(docs)] == np.uint32(0xFFFFFFFF)).all()  # empty: no shingles


def test_character_shingles_cover_the_normalised_text():
    shingling = Shingling(ngram=4, unit="char")
    texts = ["Hello,  World!", "abc", "", "hello world"]
    hashes, offsets = shingling.shingle_hashes(shingling.tokens(pa.array(texts)))
    assert np.diff(offsets).tolist() == [len("hello world") - 3, 1, 0, len("hello world") - 3]
    assert np.array_equal(hashes[offsets[0]:offsets[1]], hashes[offsets[3]:offsets[4]])


def test_band_choice_minimises_the_weighted_error_like_datasketch():
    for threshold, num_perm, fp in [(0.8, 128, 0.5), (0.8, 128, 0.1), (0.5, 64, 0.5),
                                    (0.9, 256, 0.3)]:
        assert choose_bands(threshold, num_perm, fp, 1 - fp) == _optimal_param(
            threshold, num_perm, fp, 1 - fp)
    defaults = parse(DedupConfig, {})
    assert defaults.band_rows() == (25, 10)  # 256 permutations
    assert defaults.edge_threshold() == pytest.approx(0.75)  # 0.8 - 2 sqrt(0.8 * 0.2 / 256)
    assert [defaults.components_rounds(p) for p in (2, 4, 32, 256)] == [4, 5, 10, 14]
    with pytest.raises(ConfigError, match="bands"):
        parse(DedupConfig, {"bands": 20})
    with pytest.raises(ConfigError, match="exceeds"):
        parse(DedupConfig, {"bands": 20, "rows": 13})


# --- verified candidate edges ---------------------------------------------------------------------

def _band_partition(signatures: np.ndarray, key: int) -> tuple[pa.Table, pa.Table]:
    """Every document in one bucket: (band rows, node rows) as the band shuffle delivers them."""
    n = len(signatures)
    nodes = pa.array(np.arange(1, n + 1), pa.uint64())
    return (pa.table({"band_key": pa.array(np.full(n, key), pa.uint64()), "node": nodes}),
            pa.table({"node": nodes, "old": pa.array(np.zeros(n, bool)),
                      "exact_hi": pa.array(np.arange(n), pa.uint64()),
                      "bits": pa.FixedSizeListArray.from_arrays(
                          pa.array(low_bits(signatures).ravel()), signatures.shape[1])}))


@pytest.mark.parametrize("members", [40, 3000])  # all pairs, and a hot bucket with leaders
def test_a_shared_band_key_links_only_verified_pairs(members):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32, (2, 128), dtype=np.uint32)
    signatures = rng.integers(0, 2**32, (members, 128), dtype=np.uint32)  # dissimilar docs
    similar = np.arange(members) % 3  # 0: unrelated, 1: near copies of base 0, 2: of base 1
    for group in (1, 2):
        rows = np.flatnonzero(similar == group)
        signatures[rows] = base[group - 1]
        flip = rng.random((len(rows), 128)) < 0.05  # estimated Jaccard ~0.95
        noise = rng.integers(0, 2**32, (len(rows), 128))
        signatures[rows] = np.where(flip, noise, base[group - 1])
    edges = verified_edges(_band_partition(signatures, key=7), parse(DedupConfig, {}), 0.8)
    u = edges.column("u").to_numpy().astype(np.int64) - 1
    v = edges.column("v").to_numpy().astype(np.int64) - 1
    assert (similar[u] == similar[v]).all() and (similar[u] > 0).all()  # no chaining
    graph = coo_matrix((np.ones(len(u)), (u, v)), shape=(members, members))
    _, labels = connected_components(graph, directed=False)
    for group in (1, 2):  # each group of near copies is one cluster
        assert len(np.unique(labels[similar == group])) == 1
    assert len(u) == (similar > 0).sum() - 2  # a spanning forest: one edge per document


# --- connected components in Beam -----------------------------------------------------------------

def _adversarial_graph():
    rng = np.random.default_rng(1)
    nodes = rng.permutation(np.arange(1, 40_000, dtype=np.uint64))
    chain = nodes[:1000]
    star = nodes[1000:11_001]
    small = nodes[11_001:23_001].reshape(3000, 4)  # 3,000 clusters of 4, as paths
    u = np.concatenate([chain[:-1], np.repeat(star[:1], 10_000), small[:, :3].ravel()])
    v = np.concatenate([chain[1:], star[1:], small[:, 1:].ravel()])
    return u, v


def _expected_labels(u, v) -> dict:
    nodes, index = np.unique(np.concatenate([u, v]), return_inverse=True)
    graph = coo_matrix((np.ones(len(u)), (index[:len(u)], index[len(u):])),
                       shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    minimum = {}
    for node, label in zip(nodes.tolist(), labels.tolist()):
        minimum[label] = min(minimum.get(label, node), node)
    return {node: minimum[label] for node, label in zip(nodes.tolist(), labels.tolist())}


@pytest.mark.parametrize("partitions, spilled", [(2, True), (4, False), (32, True)])
def test_connected_components_on_a_chain_a_star_and_many_small_clusters(partitions, spilled,
                                                                        tmp_path):
    """Shuffled as tables (Beam's shuffle) or as paths of spilled pieces (the local runner)."""
    u, v = _adversarial_graph()
    expected = _expected_labels(u, v)
    pieces = [edge_table(u[i:i + 5000], v[i:i + 5000]) for i in range(0, len(u), 5000)]

    def check(tables):
        got = {}
        for table in tables:
            got.update(zip(table.column("node").to_pylist(), table.column("component").to_pylist()))
        assert got == expected

    with test_pipeline() as p:
        defaults = parse(DedupConfig, {})  # the default rounds must cover these shapes
        labels = p | beam.Create(pieces) | ConnectedComponents(
            defaults.components_rounds(partitions), partitions,
            str(tmp_path) if spilled else None)
        assert_that(labels | beam.combiners.ToList(), lambda lists: check(lists[0]))
    assert any(tmp_path.glob("*.arrow")) == spilled


def test_connected_components_fail_when_rounds_are_too_few():
    u, v = _adversarial_graph()
    with pytest.raises(Exception, match="did not converge"):
        with test_pipeline() as p:
            p | beam.Create([edge_table(u[:999], v[:999])]) | ConnectedComponents(2, 8)


def test_index_shards_of_version_1_read_as_b_bit_sketches():
    """Version 1 indexes kept full signatures; their sketches equal version 2's (b-bit)."""
    signatures = np.random.default_rng(3).integers(0, 2**32, (3, 8), dtype=np.uint32)
    common = {"id": ["a", "b", "c"], "exact_hi": pa.array([1, 2, 3], pa.uint64()),
              "exact_lo": pa.array([4, 5, 6], pa.uint64()), "has_shingles": [True] * 3,
              "band_keys": fixed_size_list(band_keys(signatures, 2, 4), pa.uint64())}
    version_1 = pa.table(common | {"signature": fixed_size_list(signatures, pa.uint32())})
    version_2 = pa.table(common | {"bits": fixed_size_list(low_bits(signatures), pa.uint8())})
    assert index_sketches(version_1).equals(index_sketches(version_2))
    assert index_sketches(version_2).column("bits").to_pylist()[0] == list(signatures[0] & 255)


# --- survivors ------------------------------------------------------------------------------------

def test_survivor_is_quality_then_length_then_id():
    n = 5
    sketches = sketch_table(
        node=np.arange(10, 10 + n, dtype=np.uint64), ids=["e", "d", "c", "b", "a"],
        batch=np.zeros(n, np.uint64), row=np.arange(n, dtype=np.int32), old=np.zeros(n, bool),
        quality=[0.1, 0.9, 0.9, 0.9, -np.inf], length=[100, 50, 80, 80, 500],
        exact_hi=np.zeros(n, np.uint64), exact_lo=np.arange(n, dtype=np.uint64),
        keys=np.zeros((n, 2), np.uint64), bits=np.zeros((n, 4), np.uint8),
        has_shingles=np.ones(n, bool))
    clustered = sketches.drop_columns(["band_keys", "bits", "has_shingles"]).append_column(
        "exact_rep", pa.array(np.ones(n, bool))).append_column(
        "component", pa.array(np.full(n, 10), pa.uint64()))
    outputs = {}
    for output in choose_survivors(clustered):
        if isinstance(output, beam.pvalue.TaggedOutput):
            outputs[output.tag] = output.value
    clusters = outputs["clusters"].to_pydict()
    kept = [i for i, k in zip(clusters["id"], clusters["kept"]) if k]
    assert kept == ["b"]  # best quality (0.9) and longest among those (80); then smaller id
    assert set(clusters["cluster_id"]) == {"b"}
    assert sorted(outputs["decisions"].column("reason").to_pylist()) == ["near_duplicate"] * 4


# --- the stage on real text -----------------------------------------------------------------------

def _quality_corpus(shared_data):
    rng = np.random.default_rng(7)
    docs = dedup_eval.wiki_documents(shared_data / "wiki_versions", articles=80)
    copies = dedup_eval.perturbed_copies(docs, rng, fraction=0.4)
    exact = [{"id": f"exact/{d['id']}", "text": d["text"].upper()}
             for d in docs[::25]]  # differ in case only: exact duplicates
    template = docs[3]["text"][:3000]
    hot = [{"id": f"template/{k:04d}", "text": f"{template}\nListing {k} of 2000",
            "quality_score": float(k % 7)} for k in range(2000)]
    odd = [{"id": "empty", "text": ""}, {"id": "blank", "text": "   \n"},
           {"id": "one-a", "text": "Hello"}, {"id": "one-b", "text": "hello!"},
           {"id": "one-c", "text": "Goodbye"}, {"id": "short", "text": "a b c"}]
    return docs + copies + exact + hot + odd


def test_dedup_on_real_revisions_meets_the_quality_bar(shared_data, tmp_path):
    corpus = _quality_corpus(shared_data)
    _write_jsonl(tmp_path / "corpus.jsonl", corpus)
    out = tmp_path / "out"
    stats = run_job({"input": [{"path": str(tmp_path / "corpus.jsonl")}], "output": str(out),
                     "stages": [{"dedup": SMALL_RUN}]}, ONE_WORKER, log=lambda *_: None)
    assert stats["balanced"]
    assert stats["dropped"]["empty"] == 2  # ingest drops empty text before dedup
    clusters = read_output(str(out / "clusters"))
    kept = read_output(str(out / "documents"), columns=["id"]).column("id").to_pylist()
    assert stats["kept"] == len(kept) == len(set(kept))
    dropped = stats["dropped"]["exact_duplicate"] + stats["dropped"]["near_duplicate"]
    assert dropped == clusters.num_rows - clusters.filter(clusters.column("kept")).num_rows
    counters = stats["counters"]
    assert counters["dedup.largest_cluster"] >= 2000 and counters["dedup.hot_buckets"] > 0
    assert counters["dedup.clusters"] == len(set(clusters.column("cluster_id").to_pylist()))

    cluster_of = dict(zip(clusters.column("id").to_pylist(),
                          clusters.column("cluster_id").to_pylist()))
    docs = [d for d in corpus if d["text"].strip()]
    labels = np.unique([cluster_of.get(d["id"], d["id"]) for d in docs], return_inverse=True)[1]
    left, right, jaccard = dedup_eval.jaccard_pairs([d["text"] for d in docs])
    metrics = dedup_eval.cluster_metrics(labels, left, right, jaccard)
    assert metrics["recall"] >= 0.95, metrics
    assert metrics["precision_at_similar"] >= 0.98, metrics

    assert cluster_of["one-a"] == cluster_of["one-b"] and "one-c" not in cluster_of
    survivors = clusters.filter(clusters.column("kept")).column("id").to_pylist()
    hot_survivor = [i for i in survivors if i.startswith("template/")]
    # highest quality score (6), then the longest text, then the smallest id
    assert hot_survivor == ["template/1000"]
    rejects = read_output(str(out / "dead_letter")).to_pydict()
    reasons = dict(zip(rejects["id"], rejects["reason"]))
    for doc in corpus[::25][:5]:  # one of each exact pair is dropped as an exact duplicate
        assert "exact_duplicate" in (reasons.get(doc["id"]), reasons.get(f"exact/{doc['id']}"))
    assert {"exact_duplicate", "near_duplicate"} <= set(reasons.values())


# --- the incremental index ------------------------------------------------------------------------

def _dedup_with_index(command: str, inputs: str, output: str, index: str, tmp_path) -> int:
    """`sluice dedup --index --update-index`, or `sluice run` on a config whose dedup stage sets
    `index` and `write_index`."""
    if command == "dedup":
        return cli(["dedup", inputs, "--output", output, "--index", index, "--update-index",
                    *SMALL_RUN_ARGS, *ONE_WORKER])
    config = tmp_path / "dedup-index.yaml"
    config.write_text(json.dumps({"stages": [{"dedup": {"index": index, "write_index": True,
                                                        **SMALL_RUN}}]}))
    return cli(["run", str(config), "--input", inputs, "--output", output, *ONE_WORKER])


@pytest.mark.parametrize("command", ["dedup", "run"])
def test_incremental_index_across_two_runs(shared_data, tmp_path, command):
    docs = dedup_eval.wiki_documents(shared_data / "wiki_versions", articles=14)
    old_articles = sorted({d["id"].rsplit("/", 1)[0] for d in docs})[:10]
    first = [d for d in docs if d["id"].rsplit("/", 1)[0] in old_articles]
    new_articles = [d for d in docs if d["id"].rsplit("/", 1)[0] not in old_articles]
    rng = np.random.default_rng(3)
    copies = dedup_eval.perturbed_copies(first, rng, fraction=0.2, max_rate=0.01)
    snapshot = ([{"id": "again/" + d["id"], "text": d["text"]} for d in first[:10]]
                + copies + new_articles)
    _write_jsonl(tmp_path / "first.jsonl", first)
    _write_jsonl(tmp_path / "second.jsonl", snapshot)
    index = tmp_path / "index"

    assert _dedup_with_index(command, str(tmp_path / "first.jsonl"), str(tmp_path / "one"),
                             str(index), tmp_path) == 0
    manifest = json.loads((index / "index.json").read_text())
    one_kept = json.loads((tmp_path / "one" / "stats.json").read_text())["kept"]
    assert manifest["updates"][0]["documents"] == one_kept

    assert _dedup_with_index(command, str(tmp_path / "second.jsonl"), str(tmp_path / "two"),
                             str(index), tmp_path) == 0
    stats = json.loads((tmp_path / "two" / "stats.json").read_text())
    rejects = read_output(str(tmp_path / "two" / "dead_letter")).to_pydict()
    reasons = dict(zip(rejects["id"], rejects["reason"]))
    for doc in snapshot[:10]:  # exact copies of the old corpus
        assert reasons[doc["id"]] == "duplicate_of_index"
    assert stats["dropped"]["duplicate_of_index"] >= 10 + 0.9 * len(copies)
    kept = set(read_output(str(tmp_path / "two" / "documents"), columns=["id"])
               .column("id").to_pylist())
    new_ids = {d["id"] for d in new_articles}
    assert len(kept & new_ids) >= 0.5 * len(new_ids)  # new articles survive, deduped
    assert len(kept - new_ids) <= 0.1 * len(copies)
    assert not any(reasons.get(i) == "duplicate_of_index" for i in new_ids)
    manifest = json.loads((index / "index.json").read_text())
    assert [u["documents"] for u in manifest["updates"]] == [one_kept, len(kept)]
    assert not list(index.glob("*.tmp*"))

    with pytest.raises(ConfigError, match="must match"):  # a different sketch cannot reuse it
        run_job({"input": [{"path": str(tmp_path / "second.jsonl")}],
                 "output": str(tmp_path / "three"),
                 "stages": [{"dedup": {"index": str(index), "num_perm": 64}}]}, ONE_WORKER)
    with pytest.raises(ConfigError, match="needs index"):  # nowhere to add the survivors
        run_job({"input": [{"path": str(tmp_path / "second.jsonl")}],
                 "output": str(tmp_path / "four"), "stages": [{"dedup": {"write_index": True}}]},
                ONE_WORKER)


def test_dedup_outside_a_job_spills_to_a_temporary_folder(tmp_path):
    """Library use (no JobContext): a local run spills to a TemporaryDirectory owned by the
    stage (removed with it), and a remote runner, whose workers could not reach it, is refused."""
    text = "one of these three documents is kept and the other two are its exact copies"
    docs = [{"id": f"copy{i}", "text": text} for i in range(3)] + [
        {"id": "other", "text": "a different document with words of its own, kept as well"}]
    pipeline = test_pipeline()
    stage = Dedup(DedupConfig(partitions=2, cc_rounds=4))
    kept, _ = pipeline | beam.Create([batch_from_rows(docs)]) | stage
    collected = Collected(kept, "Kept")
    pipeline.run()
    assert sorted(row["id"] for row in collected.rows()) == ["copy0", "other"]
    assert list(Path(stage._spill_folder.name).glob("*.arrow"))  # the spilled batch
    remote = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(["--runner=FlinkRunner"]))
    with pytest.raises(ConfigError, match="staging folder"):
        remote | beam.Create([batch_from_rows(docs)]) | Dedup(DedupConfig())
