"""Cluster-based pruning and balancing stages: `balance`, `prototypes`, `semdedup`,
`cluster_complexity` (docs/selection.md).

All four use one embedding + k-means step (`transforms.selection.clusters.EmbedAndCluster`,
config key `clusters:`) and one exact "keep q_c documents of group c by a score" step
(`QuotaKeep`):

- `balance` (MetaCLIP, Xu et al. 2023, "Demystifying CLIP Data"): cap every concept (a k-means
  cluster, or the values of a metadata `column`) at `max_per_cluster` = T documents, a seeded
  uniform choice (the T smallest hashes of seed and id) inside a concept over T; concepts with at
  most T documents stay whole. Drop reason `balance_over_cap`.
- `prototypes` (Sorscher et al. 2022, "Beyond neural scaling laws"): score = distance to the
  nearest k-means prototype; keep the `easy` (closest) or `hard` (farthest) `fraction`, per
  cluster or globally. Drop reason `prototype_pruned`.
- `semdedup` (Abbas et al. 2023, "SemDeDup"): inside each cluster, documents whose cosine
  similarity (normalised embeddings) to an earlier one is >= 1 - eps are dropped
  (`semantic_duplicate`), the order being farthest from the centre first (the paper keeps the
  least prototypical) or highest `quality_column` first.
- `cluster_complexity` (Abbas et al. 2024, "Effective pruning of web-scale datasets based on
  complexity of concept clusters", density-based pruning): per cluster `d_intra` (mean cosine
  distance of its members to the centre) and `d_inter` (mean cosine distance of its centre to
  the `neighbours` nearest other centres), complexity `C = d_intra * d_inter`, quotas
  `N_c = softmax(C / temperature) * fraction * N` (capped at the cluster's size, the excess
  redistributed), kept inside each cluster by prototypicality (`keep: hard` = farthest first).
  Drop reason `complexity_pruned`.

Exactness: `QuotaKeep` counts every group (CombinePerKey) and keeps, per group, the `exact_up_to`
smallest `(score, hash)` keys plus a uniform sample of as many; a quota of at most `exact_up_to`
is met exactly (for `balance` always: the cap is T), a larger one is cut at the sample's quantile.
"""
from __future__ import annotations

import math
from dataclasses import field
from typing import Literal, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import xxhash

from transforms.core.accounting import Rejects, count, record_max
from transforms.core.columns import CLUSTER, CLUSTER_DISTANCE
from transforms.core.config import config_dataclass
from transforms.core.documents import ID, SOURCE, TEXT
from transforms.core.stage import REJECTS, Contract, Stage, documents_and_rejects
from transforms.selection.clusters import (ClusterConfig, EmbedAndCluster, output_dir_of,
                                           require_embedder)
from transforms.selection.select import float_column

BALANCE_OVER_CAP = "balance_over_cap"
PROTOTYPE_PRUNED = "prototype_pruned"
SEMANTIC_DUPLICATE = "semantic_duplicate"
COMPLEXITY_PRUNED = "complexity_pruned"
NULL_GROUP = "\0null"


# --- the numerical core (plain numpy: the Beam steps, the bench and the tests use it) -------

def document_hashes(ids, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per document id, independent of batching."""
    prefix = f"{seed}\0"
    return np.array([xxhash.xxh3_64_intdigest((prefix + str(i)).encode("utf-8", "surrogatepass"))
                     for i in ids], dtype=np.float64) / 2.0 ** 64


def _smallest(scores: np.ndarray, ties: np.ndarray, size: int):
    order = np.lexsort((ties, scores))[:size]
    return scores[order], ties[order]


class GroupSummary(beam.CombineFn):
    """Per group: (documents, the `cap` smallest (score, tie) keys sorted, a uniform sample of
    `cap` keys: those with the smallest ties). Inputs are (scores, ties) arrays of one batch."""

    def __init__(self, cap: int):
        self.cap = cap

    def create_accumulator(self):
        return 0, (np.zeros(0), np.zeros(0)), (np.zeros(0), np.zeros(0))

    def add_input(self, accumulator, element):
        scores, ties = element
        return self.merge_accumulators([accumulator, (len(scores), (scores, ties), (scores, ties))])

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        n = sum(a[0] for a in accumulators)
        smallest = _smallest(np.concatenate([a[1][0] for a in accumulators]),
                             np.concatenate([a[1][1] for a in accumulators]), self.cap)
        ties = np.concatenate([a[2][1] for a in accumulators])
        scores = np.concatenate([a[2][0] for a in accumulators])
        keep = np.argsort(ties, kind="stable")[: self.cap]
        return n, smallest, (scores[keep], ties[keep])

    def extract_output(self, accumulator):
        n, smallest, (scores, ties) = accumulator
        return n, smallest, _smallest(scores, ties, len(scores))


def threshold(summary, quota: int):
    """The largest (score, tie) key kept for a quota: None keeps all, (-inf, -inf) none."""
    n, (scores, ties), (sample_scores, sample_ties) = summary
    if quota >= n:
        return None
    if quota <= 0:
        return (-math.inf, -math.inf)
    if quota <= len(scores):
        return float(scores[quota - 1]), float(ties[quota - 1])
    index = min(len(sample_scores) - 1, max(0, math.ceil(quota / n * len(sample_scores)) - 1))
    return float(sample_scores[index]), float(sample_ties[index])


def thresholds(summaries: dict, quotas: dict) -> dict:
    out = {}
    for group, summary in summaries.items():
        out[group] = threshold(summary, int(quotas.get(group, summary[0])))
    return out


def within(scores: np.ndarray, ties: np.ndarray, bound) -> np.ndarray:
    if bound is None:
        return np.ones(len(scores), dtype=bool)
    return (scores < bound[0]) | ((scores == bound[0]) & (ties <= bound[1]))


def keep_quotas_in_memory(groups, scores, ties, quota_fn, cap: int = 100_000) -> np.ndarray:
    """Keep mask of `QuotaKeep` for one in-memory corpus: `quota_fn({group: n}) -> {group: q}`."""
    groups = np.asarray(groups)
    summaries = {}
    fn = GroupSummary(cap)
    for g in np.unique(groups):
        rows = groups == g
        summaries[g.item() if hasattr(g, "item") else g] = fn.extract_output(
            fn.add_input(fn.create_accumulator(), (scores[rows], ties[rows])))
    bounds = thresholds(summaries, quota_fn({g: s[0] for g, s in summaries.items()}))
    keep = np.zeros(len(groups), dtype=bool)
    for g, bound in bounds.items():
        rows = np.flatnonzero(groups == g)
        keep[rows] = within(scores[rows], ties[rows], bound)
    return keep


def cap_quotas(counts: dict, cap: int) -> dict:
    """MetaCLIP balancing: min(n_c, T)."""
    return {g: min(int(n), cap) for g, n in counts.items()}


def fraction_quotas(counts: dict, fraction: float) -> dict:
    return {g: int(round(fraction * n)) for g, n in counts.items()}


def cosine_distances_to_centres(embeddings: np.ndarray, centres: np.ndarray,
                                cluster: np.ndarray) -> np.ndarray:
    e = embeddings.astype(np.float64)
    c = centres[cluster].astype(np.float64)
    norms = np.linalg.norm(e, axis=1) * np.linalg.norm(c, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(norms > 0, (e * c).sum(1) / norms, 0.0)
    return 1.0 - cosine


def inter_cluster_distance(centres: np.ndarray, neighbours: int) -> np.ndarray:
    """d_inter: mean cosine distance of each centre to its `neighbours` nearest other centres."""
    c = centres.astype(np.float64)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    distance = 1.0 - c @ c.T
    np.fill_diagonal(distance, np.inf)
    if len(c) < 2:
        return np.zeros(len(c))
    l = min(neighbours, len(c) - 1)
    return np.sort(distance, axis=1)[:, :l].mean(1)


def complexity_quotas(sizes: dict, d_intra: dict, d_inter: np.ndarray, total: int,
                      temperature: float) -> dict:
    """Abbas et al. 2024: `N_c = softmax(C_c / temperature) * total`, `C = d_intra * d_inter`;
    a quota over the cluster's size is capped and the excess shared out again by the softmax of
    the clusters still below their size. Rounded by largest remainders (sum = total)."""
    groups = sorted(sizes)
    n = np.array([sizes[g] for g in groups], dtype=np.float64)
    complexity = np.array([d_intra[g] * d_inter[g] for g in groups])
    total = int(min(total, n.sum()))
    logits = complexity / temperature
    quota = np.zeros(len(groups))
    open_ = np.ones(len(groups), dtype=bool)
    remaining = float(total)
    while remaining > 1e-9 and open_.any():
        weights = np.exp(logits[open_] - logits[open_].max())
        share = np.zeros(len(groups))
        share[open_] = remaining * weights / weights.sum()
        room = n - quota
        over = open_ & (share >= room)
        if not over.any():
            quota += share
            break
        quota[over] = n[over]
        remaining = total - quota.sum()
        open_ &= ~over
    base = np.floor(quota + 1e-9)
    left = int(round(total - base.sum()))
    if left > 0:
        order = np.argsort(-(quota - base), kind="stable")
        for i in order:
            if left == 0:
                break
            if base[i] < n[i]:
                base[i] += 1
                left -= 1
    return {g: int(q) for g, q in zip(groups, base)}


def semdedup_cluster(embeddings: np.ndarray, order_key: np.ndarray, eps: float,
                     block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SemDeDup inside one cluster. Documents are ranked by `order_key` descending (distance to
    the centre: the least prototypical first; or a quality score); a document is a duplicate
    when its cosine similarity to any earlier-ranked one is >= 1 - eps (the paper's
    `triu(sim, 1).max(0) > 1 - eps`). Returns (duplicate mask, index of its most similar
    earlier document, that similarity), in the input order. Memory O(n * block), time O(n^2 d)."""
    n = len(embeddings)
    duplicate = np.zeros(n, dtype=bool)
    partner = np.full(n, -1, dtype=np.int64)
    best = np.zeros(n)
    if n < 2:
        return duplicate, partner, best
    order = np.lexsort((np.arange(n), -order_key))
    e = embeddings[order].astype(np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    for start in range(1, n, block):
        stop = min(n, start + block)
        sims = e[:stop] @ e[start:stop].T                    # (earlier incl. block) x block
        rows = np.arange(stop)[:, None]
        cols = np.arange(start, stop)[None, :]
        sims[rows >= cols] = -np.inf                         # only strictly earlier documents
        arg = sims.argmax(0)
        value = sims[arg, np.arange(stop - start)]
        duplicate[order[start:stop]] = value >= 1 - eps
        partner[order[start:stop]] = order[arg]
        best[order[start:stop]] = value
    return duplicate, partner, best


# --- Beam steps -----------------------------------------------------------------------------

def group_values(batch: pa.RecordBatch, column: Optional[str]) -> np.ndarray:
    """Group of each row: the column's values (null -> its own group), or 0 for all."""
    if column is None:
        return np.zeros(batch.num_rows, dtype=np.int64)
    if column == CLUSTER:
        return batch.column(CLUSTER).to_numpy(zero_copy_only=False).astype(np.int64)
    if column not in batch.schema.names:
        return np.array([NULL_GROUP] * batch.num_rows, dtype=object)
    return np.array([NULL_GROUP if v is None else str(v) for v in batch.column(column).to_pylist()],
                    dtype=object)


def score_values(batch: pa.RecordBatch, score: str) -> np.ndarray:
    """The order within a group, smaller kept first: zero (uniform by hash), distance (easy
    first), -distance (hard first)."""
    if score == "zero":
        return np.zeros(batch.num_rows)
    distance = float_column(batch, CLUSTER_DISTANCE)
    distance = np.where(np.isfinite(distance), distance, 0.0)
    return distance if score == "distance" else -distance


class QuotaSpec:
    """How `QuotaKeep` reads a batch: its group column, score kind and hash seed."""

    def __init__(self, group_column: Optional[str], score: str, seed: int):
        self.group_column, self.score, self.seed = group_column, score, seed

    def read(self, batch):
        return (group_values(batch, self.group_column), score_values(batch, self.score),
                document_hashes(batch.column(ID).to_pylist(), self.seed))


def _keyed_parts(batch, spec: QuotaSpec):
    groups, scores, ties = spec.read(batch)
    if groups.dtype == object:
        uniques = sorted(set(groups.tolist()))
    else:
        uniques = np.unique(groups).tolist()
    for g in uniques:
        rows = groups == g
        yield g, (scores[rows], ties[rows])


class KeepFn(beam.DoFn):
    def __init__(self, stage: str, reason: str, spec: QuotaSpec):
        self.stage, self.reason, self.spec = stage, reason, spec

    def process(self, batch, bounds):
        groups, scores, ties = self.spec.read(batch)
        keep = np.ones(batch.num_rows, dtype=bool)
        for g in (set(groups.tolist()) if groups.dtype == object else np.unique(groups).tolist()):
            rows = np.flatnonzero(groups == g)
            keep[rows] = within(scores[rows], ties[rows], bounds.get(g))
        yield from emit(self.stage, self.reason, batch, keep, groups,
                        lambda row: f"group {groups[row]}")


def emit(stage: str, reason: str, batch, keep: np.ndarray, groups, detail, extra=None):
    """The kept rows, and a dead-letter batch (id, source, group) for the others."""
    if not keep.all():
        rejects = Rejects(stage)
        ids = batch.column(ID).to_pylist()
        sources = (batch.column(SOURCE).to_pylist() if SOURCE in batch.schema.names
                   else [None] * len(ids))
        for row in np.flatnonzero(~keep):
            payload = {ID: ids[row], SOURCE: sources[row], "group": _plain(groups[row])}
            if extra is not None:
                payload.update(extra(row))
            rejects.drop(reason, ids[row], sources[row], payload, detail(row))
        yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())
    if keep.all():
        yield batch
    elif keep.any():
        yield batch.filter(pa.array(keep))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


class QuotaKeep(beam.PTransform):
    """(documents, rejects): per group of `spec.group_column`, keep the `q_c` documents with
    the smallest (score, hash) keys; `quotas` maps the summaries ({group: (n, ...)}) to
    {group: q_c}, with `side_inputs` passed on."""

    def __init__(self, stage: str, reason: str, spec: QuotaSpec, quotas, *side_inputs,
                 exact_up_to: int = 100_000):
        super().__init__()
        self.stage, self.reason, self.spec = stage, reason, spec
        self.quotas, self.side_inputs, self.exact_up_to = quotas, side_inputs, exact_up_to

    def expand(self, batches):
        spec, stage, quota_fn = self.spec, self.stage, self.quotas
        summaries = (batches
                     | "GroupKeys" >> beam.FlatMap(_keyed_parts, spec)
                     | "GroupSummary" >> beam.CombinePerKey(GroupSummary(self.exact_up_to))
                     | "Summaries" >> beam.combiners.ToDict())
        quotas = summaries | "Quotas" >> beam.Map(
            lambda s, *sides: quota_fn({g: v[0] for g, v in s.items()}, *sides),
            *self.side_inputs)
        bounds = summaries | "Bounds" >> beam.Map(_bounds_and_count,
                                                  beam.pvalue.AsSingleton(quotas), stage)
        return documents_and_rejects(batches, "Keep", KeepFn(stage, self.reason, spec),
                                     beam.pvalue.AsSingleton(bounds))


def _bounds_and_count(summaries: dict, quotas: dict, stage: str) -> dict:
    count(f"{stage}.groups", len(summaries))
    if summaries:
        record_max(f"{stage}.largest_group", max(s[0] for s in summaries.values()))
    count(f"{stage}.groups_capped", sum(1 for g, s in summaries.items()
                                         if int(quotas.get(g, s[0])) < s[0]))
    return thresholds(summaries, quotas)


def _batches(pairs):
    return pairs | "DropEmbeddings" >> beam.Map(lambda e: e[0])


# --- stages ---------------------------------------------------------------------------------

@config_dataclass
class BalanceConfig:
    max_per_cluster: int                    # T: documents kept per concept at most
    column: Optional[str] = None            # balance over a metadata column instead of clusters
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    seed: int = 0

    def __post_init__(self):
        if self.max_per_cluster < 1:
            raise ValueError("max_per_cluster must be >= 1")


class Balance(Stage):
    """MetaCLIP balancing: at most `max_per_cluster` documents per concept."""

    Config = BalanceConfig

    def __init__(self, config: BalanceConfig, context=None):
        if config.column is None:
            require_embedder("balance", config.clusters.embedding)
        super().__init__(config, context)

    def contract(self) -> Contract:
        if self.config.column:
            return Contract(reads=(self.config.column,))
        return Contract(reads=(TEXT,), writes=(CLUSTER, CLUSTER_DISTANCE))

    def expand(self, documents):
        c = self.config
        if c.column is None:
            pairs, _ = documents | "Clusters" >> EmbedAndCluster(
                c.clusters, output_dir_of(self.context), "balance")
            documents = _batches(pairs)
        cap = c.max_per_cluster
        return documents | "Cap" >> QuotaKeep(
            "balance", BALANCE_OVER_CAP, QuotaSpec(c.column or CLUSTER, "zero", c.seed),
            lambda counts: cap_quotas(counts, cap), exact_up_to=cap)


@config_dataclass
class PrototypesConfig:
    fraction: float = 0.5                   # share kept
    keep: Literal["easy", "hard"] = "hard"  # hard: farthest from the prototype
    per_cluster: bool = True                # the fraction of every cluster, or of the corpus
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    exact_up_to: int = 100_000              # quotas up to this many per group are exact
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")


class Prototypes(Stage):
    """Sorscher et al. 2022: keep by distance to the nearest k-means prototype."""

    Config = PrototypesConfig

    def __init__(self, config: PrototypesConfig, context=None):
        require_embedder("prototypes", config.clusters.embedding)
        super().__init__(config, context)

    def contract(self) -> Contract:
        return Contract(reads=(TEXT,), writes=(CLUSTER, CLUSTER_DISTANCE))

    def expand(self, documents):
        c = self.config
        pairs, _ = documents | "Clusters" >> EmbedAndCluster(
            c.clusters, output_dir_of(self.context), "prototypes")
        fraction = c.fraction
        spec = QuotaSpec(CLUSTER if c.per_cluster else None,
                         "distance" if c.keep == "easy" else "-distance", c.seed)
        return _batches(pairs) | "Keep" >> QuotaKeep(
            "prototypes", PROTOTYPE_PRUNED, spec, lambda counts: fraction_quotas(counts, fraction),
            exact_up_to=c.exact_up_to)


@config_dataclass
class SemDedupConfig:
    eps: float = 0.1                        # duplicates: cosine similarity >= 1 - eps
    keep: Literal["farthest", "quality"] = "farthest"  # which member of a group survives
    quality_column: Optional[str] = None    # keep: quality -> the highest value survives
    max_cluster_size: int = 20_000          # larger clusters are compared in chunks this big
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.eps < 2:
            raise ValueError(f"eps must be in [0, 2), got {self.eps}")
        if self.keep == "quality" and not self.quality_column:
            raise ValueError("keep: quality needs quality_column")
        if self.max_cluster_size < 2:
            raise ValueError("max_cluster_size must be >= 2")


def _cluster_members(element, config: SemDedupConfig):
    batch, embeddings = element
    cluster = batch.column(CLUSTER).to_numpy()
    if config.keep == "quality":
        order = float_column(batch, config.quality_column)
        order = np.where(np.isfinite(order), order, -np.inf)
    else:
        order = float_column(batch, CLUSTER_DISTANCE)
    ids = np.array(batch.column(ID).to_pylist(), dtype=object)
    for c in np.unique(cluster):
        rows = cluster == c
        yield int(c), (ids[rows], order[rows], embeddings[rows].astype(np.float32))


def _dedup_group(element, config: SemDedupConfig):
    cluster, parts = element
    parts = list(parts)
    ids = np.concatenate([p[0] for p in parts])
    order = np.concatenate([p[1] for p in parts])
    embeddings = np.concatenate([p[2] for p in parts])
    record_max("semdedup.largest_cluster", len(ids))
    # chunks of at most max_cluster_size, in a seeded order (exact for clusters that fit)
    chunks = [np.arange(len(ids))]
    if len(ids) > config.max_cluster_size:
        count("semdedup.clusters_split")
        shuffled = np.argsort(document_hashes(ids.tolist(), config.seed), kind="stable")
        chunks = [shuffled[i:i + config.max_cluster_size]
                  for i in range(0, len(ids), config.max_cluster_size)]
    for chunk in chunks:
        duplicate, partner, similarity = semdedup_cluster(embeddings[chunk], order[chunk],
                                                          config.eps)
        count("semdedup.pairs_compared", len(chunk) * (len(chunk) - 1) // 2)
        for i in np.flatnonzero(duplicate):
            yield str(ids[chunk[i]]), (str(ids[chunk[partner[i]]]), float(similarity[i]), cluster)


class DropDuplicatesFn(beam.DoFn):
    def process(self, batch, duplicates):
        ids = batch.column(ID).to_pylist()
        keep = np.array([i not in duplicates for i in ids], dtype=bool)
        groups = batch.column(CLUSTER).to_numpy()
        yield from emit("semdedup", SEMANTIC_DUPLICATE, batch, keep, groups,
                        lambda row: f"cosine {duplicates[ids[row]][1]:.4f} with "
                                    f"{duplicates[ids[row]][0]}",
                        lambda row: {"duplicate_of": duplicates[ids[row]][0],
                                     "similarity": duplicates[ids[row]][1]})


class SemDedup(Stage):
    """Abbas et al. 2023: drop near-duplicates by embedding inside each k-means cluster."""

    Config = SemDedupConfig

    def __init__(self, config: SemDedupConfig, context=None):
        require_embedder("semdedup", config.clusters.embedding)
        super().__init__(config, context)

    def contract(self) -> Contract:
        reads = (TEXT, self.config.quality_column) if self.config.keep == "quality" else (TEXT,)
        return Contract(reads=reads, writes=(CLUSTER, CLUSTER_DISTANCE))

    def expand(self, documents):
        c = self.config
        pairs, _ = documents | "Clusters" >> EmbedAndCluster(
            c.clusters, output_dir_of(self.context), "semdedup")
        duplicates = (pairs
                      | "ClusterMembers" >> beam.FlatMap(_cluster_members, c)
                      | "ByCluster" >> beam.GroupByKey()
                      | "Pairwise" >> beam.FlatMap(_dedup_group, c)
                      | "Duplicates" >> beam.combiners.ToDict())
        return documents_and_rejects(_batches(pairs), "Drop", DropDuplicatesFn(),
                                     beam.pvalue.AsSingleton(duplicates))


@config_dataclass
class ComplexityConfig:
    fraction: float = 0.5                   # share of the corpus kept
    temperature: float = 0.1                # softmax temperature over the cluster complexities
    neighbours: int = 20                    # d_inter: nearest other centres averaged
    keep: Literal["easy", "hard"] = "hard"  # inside a cluster: hard = farthest from the centre
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    exact_up_to: int = 100_000
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.temperature <= 0 or self.neighbours < 1:
            raise ValueError("temperature must be > 0 and neighbours >= 1")


def _intra_parts(element, centres):
    batch, embeddings = element
    cluster = batch.column(CLUSTER).to_numpy()
    distance = cosine_distances_to_centres(embeddings, centres, cluster)
    for c in np.unique(cluster):
        rows = cluster == c
        yield int(c), (int(rows.sum()), float(distance[rows].sum()))


def _complexity_quotas(counts: dict, intra: dict, centres: np.ndarray,
                       config: ComplexityConfig) -> dict:
    d_inter = inter_cluster_distance(centres, config.neighbours)
    d_intra = {g: intra[g][1] / max(intra[g][0], 1) for g in counts}
    total = int(round(config.fraction * sum(counts.values())))
    return complexity_quotas(counts, d_intra, {g: d_inter[g] for g in counts}, total,
                             config.temperature)


class ClusterComplexity(Stage):
    """Abbas et al. 2024: per-cluster quotas from cluster complexity, then prototypicality."""

    Config = ComplexityConfig

    def __init__(self, config: ComplexityConfig, context=None):
        require_embedder("cluster_complexity", config.clusters.embedding)
        super().__init__(config, context)

    def contract(self) -> Contract:
        return Contract(reads=(TEXT,), writes=(CLUSTER, CLUSTER_DISTANCE))

    def expand(self, documents):
        c = self.config
        pairs, centres = documents | "Clusters" >> EmbedAndCluster(
            c.clusters, output_dir_of(self.context), "cluster_complexity")
        intra = (pairs
                 | "IntraParts" >> beam.FlatMap(_intra_parts, beam.pvalue.AsSingleton(centres))
                 | "IntraSum" >> beam.CombinePerKey(lambda values: tuple(map(sum, zip(*values))))
                 | "Intra" >> beam.combiners.ToDict())
        spec = QuotaSpec(CLUSTER, "distance" if c.keep == "easy" else "-distance", c.seed)
        return _batches(pairs) | "Keep" >> QuotaKeep(
            "cluster_complexity", COMPLEXITY_PRUNED, spec,
            lambda counts, intra_, centres_: _complexity_quotas(counts, intra_, centres_, c),
            beam.pvalue.AsSingleton(intra), beam.pvalue.AsSingleton(centres),
            exact_up_to=c.exact_up_to)
