"""The `dedup` stage: exact, then near-duplicate removal with verified MinHash LSH.

1. Sketch: every document gets a node id, an exact key (xxh3-128 of its lowercased `\\w+` tokens
   joined by spaces; the stripped text when it has none) and a MinHash signature (`minhash`),
   kept as its LSH band keys and b-bit signature: all the later steps need.
2. Exact: documents sharing an exact key are linked to the group's best document.
3. Near: the best document of each exact group is bucketed by LSH band keys (Broder 1997;
   Leskovec et al., "Mining of Massive Datasets" ch. 3). Candidate pairs are verified by their
   estimated Jaccard (fraction of equal minima) before they become edges, so an edge always means
   two similar documents: buckets of up to `all_pairs_bucket` members verify every pair; hotter
   buckets (templates, boilerplate) verify each member against at most `max_leaders` leaders,
   bounding the work. Each partition keeps a maximum-similarity spanning forest of its verified
   pairs, which preserves the clusters with at most one edge per document.
4. Clusters: connected components of all edges in Beam (`connected_components`).
5. Survivor: per cluster, the best document by (index document first, higher quality score,
   longer text, smaller id): deterministic. The others are dropped as `exact_duplicate` (not
   the best of their exact group), `near_duplicate`, or `duplicate_of_index` (the cluster holds
   a document of the persisted index of an earlier corpus).

Outputs: the surviving documents, dropped ones on the dead-letter output, `clusters`
(`id`, `cluster_id` = the survivor's id, `kept`) for every document with a duplicate, and with
`write_index` the survivors' keys for `dedup_index.commit`.
"""
from __future__ import annotations

import math
import tempfile
import uuid
from typing import Literal, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from apache_beam.io.filesystems import FileSystems
from pydantic import model_validator
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree

from transforms.core.accounting import Rejects, count, record_max
from transforms.core.columns import QUALITY_SCORE
from transforms.core.config import ConfigError, config_dataclass, is_local, local_workers
from transforms.core.documents import ID, SOURCE, TEXT
from transforms.core.files import read_arrow, write_arrow_stream
from transforms.core.progress import Progress
from transforms.core.stage import REJECTS, Contract, Stage, documents_and_rejects
from transforms.dedup.components import ConnectedComponents, edge_table, node_keys
from transforms.dedup.index import ReadIndex, index_schema, open_index
from transforms.dedup.minhash import (MinHasher, Shingling, band_keys, bbit_jaccard, choose_bands,
                                      fmix64, low_bits)
from transforms.dedup.shuffle import CoShuffle, Shuffle, column, gather, scatter, stash

EXACT, NEAR, INDEX = "exact_duplicate", "near_duplicate", "duplicate_of_index"
CLUSTER_SCHEMA = pa.schema([(ID, pa.string()), ("cluster_id", pa.string()), ("kept", pa.bool_())])
_SPILLED = "spilled"
_DECISIONS, _CLUSTERS, _EDGES, _ATTRIBUTES, _REPRESENTATIVES = (
    "decisions", "clusters", "edges", "attributes", "representatives")
# Survivor order: index documents first, then quality, length, id; the exact key, then the
# node (random per run), only order documents with equal ids whose normalised texts are equal.
SURVIVOR_ORDER = [("old", "descending"), ("quality", "descending"), ("length", "descending"),
                  (ID, "ascending"), ("exact_hi", "ascending"), ("exact_lo", "ascending"),
                  ("node", "ascending")]


@config_dataclass
class DedupConfig:
    threshold: float = 0.8            # Jaccard similarity that makes two documents duplicates
    ngram: int = 5
    shingle: Literal["word", "char"] = "word"
    num_perm: int = 256               # 128 loses ~2% recall at 0.8 to estimate noise (docs)
    bands: Optional[int] = None       # bands x rows; chosen from the threshold when unset
    rows: Optional[int] = None
    false_negative_weight: float = 0.95  # verification removes false positives, so favour recall
    seed: int = 1
    near: bool = True                 # false: exact duplicates only
    verify: bool = True
    verify_threshold: Optional[float] = None  # estimated Jaccard an edge needs (`edge_threshold`)
    all_pairs_bucket: int = 64        # buckets up to this size verify every pair
    max_leaders: int = 32             # hotter buckets verify each member against this many
    quality_column: Optional[str] = QUALITY_SCORE
    cc_rounds: Optional[int] = None   # unrolled contraction rounds (`components_rounds`)
    partitions: Optional[int] = None  # shuffle partitions (`shuffle_partitions`)
    index: Optional[str] = None       # folder of a persisted index to dedup against
    write_index: bool = False         # add the survivors to `index` once the job succeeded

    @model_validator(mode="after")
    def _check(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm "
                             f"{self.num_perm}")
        if self.ngram < 1 or self.num_perm < 1 or (self.partitions or 1) < 1 or (
                self.cc_rounds or 1) < 1:
            raise ValueError("ngram, num_perm, partitions and cc_rounds must be positive")
        if self.write_index and not self.index:
            raise ValueError("write_index (--update-index) needs index (--index DIR)")
        return self

    def band_rows(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return choose_bands(self.threshold, self.num_perm, 1.0 - self.false_negative_weight,
                            self.false_negative_weight)

    def edge_threshold(self) -> float:
        """The estimated Jaccard a verified edge needs: unless set, the threshold less two
        standard errors of the estimate there, sqrt(t (1 - t) / num_perm). Verifying at the
        threshold itself rejects half of the pairs that sit exactly on it (estimate noise);
        two standard errors rejects ~2%, and only pairs just below the threshold get in."""
        if self.verify_threshold is not None:
            return self.verify_threshold
        t = self.threshold
        return t - 2.0 * (t * (1.0 - t) / self.num_perm) ** 0.5

    def shuffle_partitions(self, options) -> int:
        """Unless set: the local runner's workers (at least 2), else 256 (set it to ~2-4x the
        total worker cores on a cluster). Parallelism needs no more partitions than workers, and
        fewer partitions make connected components converge in fewer rounds (each one a Beam
        step, ~0.9 s on the local multi-process runner whatever the data)."""
        if self.partitions is not None:
            return self.partitions
        workers = local_workers(options)
        return 256 if workers is None else max(2, workers)

    def components_rounds(self, partitions: int) -> int:
        """Unless set: enough for a 10,000-document chain at this many partitions (measured
        rounds to converge: 2 at 2 partitions, 5 at 4, 6 at 8, 10 at 32, 13 at 256; 4, 5, 7, 10,
        14 are unrolled). A cluster that still does not converge fails the run rather than be
        written wrong."""
        if self.cc_rounds is not None:
            return self.cc_rounds
        return math.ceil(1.5 * math.log2(max(2, partitions))) + 2

    def sketch_params(self) -> dict:
        """What must match between a corpus and the index it is compared with."""
        bands, rows = self.band_rows()
        return {"ngram": self.ngram, "shingle": self.shingle, "num_perm": self.num_perm,
                "seed": self.seed, "bands": bands, "rows": rows}


# --- 1. sketch ----------------------------------------------------------------------------------

def node_ids(batch_key: int, rows: int) -> np.ndarray:
    """Per-row node ids: distinct within a batch (fmix64 is a bijection), random across."""
    return fmix64(np.uint64(batch_key) + np.arange(rows, dtype=np.uint64))


def exact_keys(texts: pa.Array, tokens: pa.ListArray, shingling: Shingling) -> tuple:
    """(hi, lo) uint64 halves of xxh3-128 over each normalised text."""
    normalised = pc.if_else(pc.greater(pc.list_value_length(tokens), 0),
                            shingling.normalised(tokens),
                            pc.utf8_trim_whitespace(texts.fill_null("")))
    digests = [xxhash.xxh3_128_intdigest(t) for t in normalised.cast(pa.binary()).to_pylist()]
    hi = np.fromiter((d >> 64 for d in digests), dtype=np.uint64, count=len(digests))
    lo = np.fromiter((d & 0xFFFFFFFFFFFFFFFF for d in digests), dtype=np.uint64,
                     count=len(digests))
    return hi, lo


def quality_scores(batch: pa.RecordBatch, name: Optional[str]) -> np.ndarray:
    """The quality column as float (missing, null or non-numeric: -inf, ranked last)."""
    if not name or name not in batch.schema.names:
        return np.full(batch.num_rows, -np.inf)
    try:
        values = pc.cast(batch.column(name), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        count("dedup.quality_not_numeric", batch.num_rows)
        return np.full(batch.num_rows, -np.inf)
    return values.fill_null(-np.inf).to_numpy(zero_copy_only=False)


class SketchFn(beam.DoFn):
    """documents -> one sketch table row per document; the batch itself is spilled to a file
    and leaves as (batch key, path) on the `spilled` output.

    Spilling keeps the documents out of every shuffle: only sketches, edges and decisions move,
    and the batch is read back once its decisions are known. The key is drawn here, so the
    sketches and the spilled batch of one attempt always agree (no checkpoint step needed)."""

    def __init__(self, config: DedupConfig, spill_dir: str):
        self.config = config
        self.spill_dir = spill_dir

    def setup(self):
        self.shingling = Shingling(self.config.ngram, self.config.shingle)
        self.hasher = MinHasher(self.config.num_perm, self.config.seed)
        self.bands, self.rows = self.config.band_rows()
        self.progress = Progress("dedup")

    def process(self, batch):
        batch_key = uuid.uuid4().int & 0xFFFFFFFFFFFFFFFF
        yield beam.pvalue.TaggedOutput(_SPILLED, (batch_key, spill(batch, self.spill_dir,
                                                                    batch_key)))
        texts = batch.column(TEXT)
        tokens = self.shingling.tokens(texts)
        hi, lo = exact_keys(texts, tokens, self.shingling)
        hashes, offsets = self.shingling.shingle_hashes(tokens)
        signatures = self.hasher.signatures(hashes, offsets)
        self.progress.add(batch.num_rows)
        yield sketch_table(
            node=node_ids(batch_key, batch.num_rows), ids=batch.column(ID),
            batch=np.full(batch.num_rows, batch_key, dtype=np.uint64),
            row=np.arange(batch.num_rows, dtype=np.int32), old=np.zeros(batch.num_rows, bool),
            quality=quality_scores(batch, self.config.quality_column),
            length=pc.utf8_length(texts.fill_null("")).to_numpy(zero_copy_only=False),
            exact_hi=hi, exact_lo=lo, keys=band_keys(signatures, self.bands, self.rows),
            bits=low_bits(signatures), has_shingles=np.diff(offsets) > 0)


def spill(batch: pa.RecordBatch, directory: str, key: int) -> str:
    """Write a batch as an Arrow IPC stream; returns its path."""
    return write_arrow_stream(batch, FileSystems.join(directory, f"{key:016x}.arrow"))


def sketch_table(node, ids, batch, row, old, quality, length, exact_hi, exact_lo, keys, bits,
                 has_shingles) -> pa.Table:
    """One row per document: what the exact step, the band shuffle (band keys and b-bit
    signature, computed per batch) and the survivor choice need; not the full signature."""
    return pa.table({
        "node": pa.array(node, pa.uint64()), ID: pa.array(ids, pa.string()),
        "batch": pa.array(batch, pa.uint64()), "row": pa.array(row, pa.int32()),
        "old": pa.array(old, pa.bool_()), "quality": pa.array(quality, pa.float64()),
        "length": pa.array(length, pa.int64()), "exact_hi": pa.array(exact_hi, pa.uint64()),
        "exact_lo": pa.array(exact_lo, pa.uint64()),
        "band_keys": fixed_size_list(keys, pa.uint64()), "bits": fixed_size_list(bits, pa.uint8()),
        "has_shingles": pa.array(has_shingles, pa.bool_()),
    })


def index_sketches(index: pa.Table) -> pa.Table:
    """Index rows as sketch rows of `old` documents (they win every cluster they are in)."""
    ids = index.column(ID)
    salted = np.fromiter((xxhash.xxh3_64_intdigest(b"index\0" + i)
                          for i in ids.cast(pa.binary()).to_pylist()),
                         dtype=np.uint64, count=len(ids))
    n = index.num_rows
    return sketch_table(
        node=fmix64(salted), ids=ids, batch=np.zeros(n, np.uint64), row=np.full(n, -1, np.int32),
        old=np.ones(n, bool), quality=np.full(n, np.inf), length=np.zeros(n, np.int64),
        exact_hi=column(index, "exact_hi"), exact_lo=column(index, "exact_lo"),
        keys=signatures_of(index, "band_keys"),
        bits=(signatures_of(index, "bits") if "bits" in index.column_names
              else low_bits(signatures_of(index))),  # a version 1 shard: full signatures
        has_shingles=column(index, "has_shingles"))


def signatures_of(table: pa.Table, name: str = "signature") -> np.ndarray:
    """A fixed-size list column as a (rows x list size) matrix."""
    sig = table.column(name).combine_chunks()
    return sig.flatten().to_numpy().reshape(len(sig), sig.type.list_size)


def fixed_size_list(matrix: np.ndarray, value_type: pa.DataType) -> pa.FixedSizeListArray:
    """A (rows x k) matrix as a fixed-size list column (`signatures_of` reads it back)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), value_type), matrix.shape[1])


# --- 2. exact -----------------------------------------------------------------------------------

def _exact_key(table: pa.Table) -> np.ndarray:
    return column(table, "exact_hi")


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """Boolean mask: row starts a new group of equal keys (rows already sorted by the keys)."""
    n = len(keys[0])
    starts = np.zeros(n, dtype=bool)
    if n:
        starts[0] = True
        for key in keys:
            starts[1:] |= key[1:] != key[:-1]
    return starts


def exact_groups(sketches: pa.Table):
    """Link each document to the best of its exact group; yields tagged outputs:
    edges (member -> best), attributes (every row, `exact_rep` marked) and the best rows."""
    order = [("exact_hi", "ascending"), ("exact_lo", "ascending")] + SURVIVOR_ORDER
    table = sketches.sort_by(order)
    node, old = column(table, "node"), column(table, "old")
    starts = _group_starts(column(table, "exact_hi"), column(table, "exact_lo"))
    best = node[np.maximum.accumulate(np.where(starts, np.arange(len(node)), 0))]
    members = ~starts & ~old
    count("dedup.exact_edges", int(members.sum()))
    yield beam.pvalue.TaggedOutput(_EDGES, edge_table(node[members], best[members]))
    table = table.append_column("exact_rep", pa.array(starts))
    yield beam.pvalue.TaggedOutput(_ATTRIBUTES,
                                   table.drop_columns(["band_keys", "bits", "has_shingles"]))
    yield beam.pvalue.TaggedOutput(_REPRESENTATIVES, table.filter(pa.array(starts)))


# --- 3. near: LSH buckets with verified edges ----------------------------------------------------

def band_pieces(representatives: pa.Table, partitions: int, spill_dir: Optional[str] = None):
    """(partition, (band rows, node rows)) for the band shuffle. Band rows are (band key, node),
    one per document and band; node rows carry what verification needs (old flag, content
    order, the b-bit signature: a quarter of the full signature's bytes) once per document and
    partition, not once per band: with few partitions that is several times fewer bytes."""
    table = representatives.filter(representatives.column("has_shingles"))
    if not table.num_rows:
        return
    keys = signatures_of(table, "band_keys")
    document = np.repeat(np.arange(table.num_rows), keys.shape[1])
    keys = keys.ravel()
    nodes = table.select(["node", "old", "exact_hi", "bits"])
    band_rows = pa.table({"band_key": pa.array(keys, pa.uint64()),
                          "node": table.column("node").take(pa.array(document)),
                          "document": pa.array(document)})
    for partition, piece in scatter(band_rows, keys, partitions):
        documents = np.unique(column(piece, "document"))
        yield partition, (stash(piece.drop_columns(["document"]), spill_dir),
                          stash(nodes.take(pa.array(documents)), spill_dir))


def gather_bands(pieces) -> tuple[pa.Table, pa.Table]:
    """A band partition's pieces -> (band rows, node rows); every node comes from one piece."""
    band_rows, nodes = zip(*pieces)
    return gather(band_rows), gather(nodes)


def _pairs_within(bucket_starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j), i < j, of row indices within each bucket [start, start + size)."""
    members = np.repeat(bucket_starts, sizes) + _ranks(sizes)
    later = np.repeat(sizes, sizes) - 1 - _ranks(sizes)
    left = np.repeat(members, later)
    right = left + 1 + _ranks(later)
    return left, right


def _ranks(sizes: np.ndarray) -> np.ndarray:
    """0..size-1 for each size, concatenated."""
    total = int(sizes.sum())
    return np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)


class Verifier:
    """Estimated-Jaccard checks of candidate pairs from b-bit signatures, in chunks."""

    def __init__(self, signatures: np.ndarray, threshold: float, enabled: bool):
        self.signatures = signatures
        self.threshold = threshold
        self.enabled = enabled

    def similarity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        chunk = max(1, (1 << 22) // max(1, self.signatures.shape[1]))
        return np.concatenate([np.zeros(0)] + [
            bbit_jaccard(self.signatures[left[i:i + chunk]], self.signatures[right[i:i + chunk]])
            for i in range(0, len(left), chunk)])

    def passes(self, similarity: np.ndarray) -> np.ndarray:
        return similarity >= self.threshold if self.enabled else np.ones(len(similarity), bool)


def leader_pairs(members: np.ndarray, verifier: Verifier, max_leaders: int):
    """A hot bucket's verified pairs, linear in its size: members are checked against up to
    `max_leaders` leaders (a member that matches no leader becomes one while the budget lasts).
    Returns (left, right, similarity) and the number of members that matched no leader."""
    leaders = [members[0]]
    unmatched = members[1:]
    while len(unmatched) and len(leaders) < max_leaders:
        similar = verifier.passes(verifier.similarity(
            unmatched, np.full(len(unmatched), leaders[-1])))
        unmatched = unmatched[~similar]
        if len(unmatched):
            leaders.append(unmatched[0])
            unmatched = unmatched[1:]
    leaders = np.array(leaders)
    left = np.repeat(members, len(leaders))
    right = np.tile(leaders, len(members))
    keep = left != right
    left, right = left[keep], right[keep]
    similarity = verifier.similarity(left, right)
    keep = verifier.passes(similarity)
    return left[keep], right[keep], similarity[keep], len(unmatched)


def verified_edges(partition: tuple[pa.Table, pa.Table], config: DedupConfig,
                   threshold: float) -> pa.Table:
    """A band partition (band rows, node rows) -> a spanning forest of its verified pairs."""
    band_rows, node_rows = partition
    node_rows = node_rows.sort_by("node")
    table = band_rows.sort_by([("band_key", "ascending"), ("node", "ascending")])
    nodes = column(node_rows, "node")
    index = np.searchsorted(nodes, column(table, "node"))
    signatures = signatures_of(node_rows, "bits")
    old = column(node_rows, "old")
    content_order = column(node_rows, "exact_hi")  # the same in every run, unlike nodes
    verifier = Verifier(signatures, threshold, config.verify)

    starts = np.flatnonzero(_group_starts(column(table, "band_key")))
    sizes = np.diff(np.r_[starts, table.num_rows])
    small = (sizes >= 2) & (sizes <= config.all_pairs_bucket)
    left, right = _pairs_within(starts[small], sizes[small])
    left, right = index[left], index[right]
    keep = (left != right) & ~(old[left] & old[right])
    pairs = np.unique(np.stack([np.minimum(left, right), np.maximum(left, right)])[:, keep], axis=1)
    count("dedup.candidate_pairs", pairs.shape[1])
    similarity = verifier.similarity(pairs[0], pairs[1])
    passed = verifier.passes(similarity)
    lefts, rights, similarities = [pairs[0][passed]], [pairs[1][passed]], [similarity[passed]]

    for start, size in zip(starts[sizes > config.all_pairs_bucket],
                           sizes[sizes > config.all_pairs_bucket]):
        count("dedup.hot_buckets")
        members = np.unique(index[start:start + size])
        members = members[np.argsort(content_order[members], kind="stable")]
        hot_left, hot_right, hot_similarity, unmatched = leader_pairs(
            members, verifier, config.max_leaders)
        count("dedup.hot_bucket_unmatched", unmatched)
        lefts.append(hot_left)
        rights.append(hot_right)
        similarities.append(hot_similarity)

    left, right = np.concatenate(lefts), np.concatenate(rights)
    # weights in [1, 2]: the spanning forest prefers the most similar pairs, none is zero
    graph = coo_matrix((2.0 - np.concatenate(similarities), (left, right)),
                       shape=(len(nodes), len(nodes)))
    forest = minimum_spanning_tree(graph).tocoo()
    count("dedup.edges", forest.nnz)
    return edge_table(nodes[forest.row], nodes[forest.col])


# --- 5. survivors ---------------------------------------------------------------------------------

def choose_survivors(clustered: pa.Table):
    """A component partition -> decisions for dropped documents and `clusters` rows."""
    table = clustered.sort_by([("component", "ascending")] + SURVIVOR_ORDER)
    component = column(table, "component")
    starts = _group_starts(component)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(component)), 0))
    ids = table.column(ID).combine_chunks()
    cluster_id = ids.take(pa.array(first))
    old = column(table, "old")
    cluster_has_index = old[first]
    sizes = np.diff(np.r_[np.flatnonzero(starts), len(component)])
    count("dedup.clusters", int(starts.sum()))
    count("dedup.clustered_documents", int((~old).sum()))
    reasons = np.where(cluster_has_index, INDEX,
                       np.where(column(table, "exact_rep"), NEAR, EXACT))
    new = ~old
    dropped = new & ~starts
    decisions = pa.table({
        "batch": table.column("batch").filter(pa.array(dropped)),
        "row": table.column("row").filter(pa.array(dropped)),
        "node": table.column("node").filter(pa.array(dropped)),
        "reason": pa.array(reasons[dropped], pa.string()),
        "cluster_id": cluster_id.filter(pa.array(dropped)),
    })
    yield beam.pvalue.TaggedOutput(_DECISIONS, decisions)
    yield beam.pvalue.TaggedOutput(_CLUSTERS, pa.table(
        [ids.filter(pa.array(new)), cluster_id.filter(pa.array(new)),
         pa.array(starts[new])], schema=CLUSTER_SCHEMA))
    if len(sizes):
        record_max("dedup.largest_cluster", int(sizes.max()))


# --- 6. apply -------------------------------------------------------------------------------------

class ApplyDecisionsFn(beam.DoFn):
    """(batch key, {spilled: [path], decisions}) -> the spilled batch's surviving documents;
    dropped ones dead-letter."""

    def __init__(self, stage: str):
        self.stage = stage

    def process(self, element):
        _, grouped = element
        decisions = [d for d in grouped["decisions"] if d.num_rows]
        # each spilled file holds one batch (none left once read if that batch was empty)
        for batch in (b for path in grouped["spilled"] for b in read_arrow(path).to_batches()):
            if not decisions:
                yield batch
                continue
            table = pa.concat_tables(decisions)
            rows = column(table, "row")
            keep = np.ones(batch.num_rows, dtype=bool)
            keep[rows] = False
            rejects = Rejects(self.stage)
            dropped_docs = batch.take(pa.array(rows)).to_pylist()
            for doc, reason, cluster in zip(dropped_docs, table.column("reason").to_pylist(),
                                            table.column("cluster_id").to_pylist()):
                rejects.drop(reason, doc.get(ID), doc.get(SOURCE), doc, f"duplicate of {cluster}")
            if keep.any():
                yield batch.filter(pa.array(keep))
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())


def _drop_decided(parts: dict) -> list[pa.Table]:
    """Survivors' sketches: this run's sketches minus the dropped nodes."""
    sketches, decisions = parts["sketches"], parts["decisions"]
    if sketches is None:
        return []
    sketches = sketches.filter(pc.invert(sketches.column("old")))
    if decisions is not None:
        sketches = sketches.filter(pc.invert(pc.is_in(sketches.column("node"),
                                                      decisions.column("node"))))
    return [sketches] if sketches.num_rows else []


def index_rows(sketches: pa.Table) -> pa.Table:
    """The persisted form of survivors' sketches (`dedup_index`)."""
    schema = index_schema(sketches.schema.field("bits").type.list_size,
                          sketches.schema.field("band_keys").type.list_size)
    return sketches.select(schema.names).cast(schema)


class Dedup(Stage):
    """Exact + verified MinHash near-duplicate removal; see the module docstring."""

    Config = DedupConfig

    def contract(self) -> Contract:
        quality = (self.config.quality_column,) if self.config.quality_column else ()
        return Contract(optional=quality)

    def expand(self, documents):
        config, options = self.config, documents.pipeline.options
        partitions = config.shuffle_partitions(options)
        spill_dir = self._spill_dir(options)
        # the local runner holds shuffled elements in its own memory: shuffle paths there
        shuffle_dir = spill_dir if is_local(options) else None
        sketched = documents | "Sketch" >> beam.ParDo(SketchFn(config, spill_dir)).with_outputs(
            _SPILLED, main="sketches")
        survivors = (sketched.sketches
                     | "WithIndex" >> WithIndexSketches(config)
                     | "Clusters" >> Clusters(config, partitions, shuffle_dir))
        if self.context is not None:
            (survivors[_CLUSTERS]
             | "ClusterBatches" >> beam.FlatMap(_record_batches)
             | "WriteClusters" >> self.context.sink("clusters", "clusters"))
        if config.write_index and self.context is not None:
            ({"sketches": sketched.sketches, "decisions": survivors[_DECISIONS]}
             | "IndexUpdate" >> IndexUpdate(partitions, shuffle_dir)
             | "IndexBatches" >> beam.FlatMap(_record_batches)
             | "WriteIndexUpdate" >> self.context.sink("index_update", "index"))
        decisions = survivors[_DECISIONS] | "KeyDecisions" >> beam.FlatMap(_by_batch)
        joined = ({"spilled": sketched[_SPILLED], "decisions": decisions}
                  | "JoinDecisions" >> beam.CoGroupByKey())
        return documents_and_rejects(joined, "Apply", ApplyDecisionsFn("dedup"))

    def _spill_dir(self, options) -> str:
        """Where sketched batches (and, locally, shuffle pieces) are written."""
        if self.context is not None:  # a job's staging folder: removed when the job ends
            return FileSystems.join(self.context.staging_dir, f"spill-{uuid.uuid4().hex}")
        if is_local(options):  # outside a job (tests, library use): gone with this stage
            self._spill_folder = tempfile.TemporaryDirectory(prefix="sluice-dedup-")
            return self._spill_folder.name
        raise ConfigError("dedup on a remote runner needs a job's staging folder, which its "
                          "workers can reach: run it in a Sluice job (JobContext)")


class WithIndexSketches(beam.PTransform):
    """This run's sketches, plus the persisted index's as `old` documents when there is one."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self.config = config

    def expand(self, sketches):
        if not self.config.index:
            return sketches
        stored = open_index(self.config.index, self.config.sketch_params(),
                            create=self.config.write_index)
        old = (sketches.pipeline | "IndexShards" >> beam.Create(stored)
               | "ReadIndex" >> ReadIndex()
               | "IndexSketches" >> beam.Map(index_sketches))
        return (sketches, old) | "Flatten" >> beam.Flatten()


class Clusters(beam.PTransform):
    """Sketches -> {decisions, clusters}: exact groups, verified LSH edges, connected components
    across workers, one survivor per cluster."""

    def __init__(self, config: DedupConfig, partitions: int, shuffle_dir: Optional[str]):
        super().__init__()
        self.config, self.partitions, self.shuffle_dir = config, partitions, shuffle_dir

    def expand(self, sketches):
        config, partitions, shuffle_dir = self.config, self.partitions, self.shuffle_dir
        verify_threshold = config.edge_threshold()
        exact = (sketches
                 | "ExactGroup" >> Shuffle(_exact_key, partitions, spill_dir=shuffle_dir)
                 | "Exact" >> beam.FlatMap(exact_groups).with_outputs(
                     _EDGES, _ATTRIBUTES, _REPRESENTATIVES))
        edges = [exact[_EDGES]]
        if config.near:
            edges.append(exact[_REPRESENTATIVES]
                         | "Bands" >> beam.FlatMap(band_pieces, partitions, shuffle_dir)
                         | "BandGroup" >> beam.GroupByKey()
                         | "Verify" >> beam.MapTuple(lambda _, pieces: verified_edges(
                             gather_bands(pieces), config, verify_threshold)))
        survivors = ({"edges": edges | "AllEdges" >> beam.Flatten(),
                      "attributes": exact[_ATTRIBUTES]}
                     | "Components" >> ConnectedComponents(
                         config.components_rounds(partitions), partitions, shuffle_dir)
                     | "ClusterGroup" >> Shuffle(lambda t: column(t, "component"), partitions,
                                                  spill_dir=shuffle_dir)
                     | "Survivors" >> beam.FlatMap(choose_survivors).with_outputs(
                         _DECISIONS, _CLUSTERS))
        return {_DECISIONS: survivors[_DECISIONS], _CLUSTERS: survivors[_CLUSTERS]}


class IndexUpdate(beam.PTransform):
    """{sketches, decisions} -> index rows of this run's survivors."""

    def __init__(self, partitions: int, shuffle_dir: Optional[str]):
        super().__init__()
        self.partitions, self.shuffle_dir = partitions, shuffle_dir

    def expand(self, parts):
        return (parts
                | "SurvivorSketches" >> CoShuffle({"sketches": node_keys, "decisions": node_keys},
                                                  self.partitions, self.shuffle_dir)
                | "KeepSurvivors" >> beam.FlatMap(_drop_decided)
                | "IndexRows" >> beam.Map(index_rows))


def _record_batches(table: pa.Table) -> list[pa.RecordBatch]:
    return table.combine_chunks().to_batches()


def _by_batch(decisions: pa.Table):
    """(batch key, that batch's decisions), each its own compact table: a pickled slice would
    carry the whole partition's buffers, once per batch."""
    if not decisions.num_rows:
        return
    batches = column(decisions, "batch")
    order = np.argsort(batches, kind="stable")
    table = decisions.select(["row", "reason", "cluster_id"])
    sorted_batches = batches[order]
    starts = np.flatnonzero(_group_starts(sorted_batches))
    ends = np.r_[starts[1:], len(sorted_batches)]
    for lo, hi in zip(starts, ends):
        yield int(sorted_batches[lo]), table.take(pa.array(order[lo:hi]))
