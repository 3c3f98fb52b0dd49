"""Stage `sensitivity`: a weighted sample of `size` documents whose weighted mean estimates the
corpus mean of a per-document loss better than a uniform sample of the same size. Two designs:

`design: stratified` (the default): character n-gram embeddings (classifiers/embeddings.py),
projected on the first principal direction of a uniform sample of them; `size` strata of equal
count cut at the sample's quantiles of that projection (`selection_stratum`); the `size` draws
spread over the strata in projection order by systematic allocation in proportion to their
document counts (Madow 1949), then uniform inside each stratum. Every document is drawn
`size / N` times on average, so `selection_weight = count * N / size` gives an unbiased estimate,
and no loss is needed before drawing: all `size` evaluations go to the sample itself. The
variance falls by the share of the loss that varies between strata, and losses of language
models move with character statistics (script, markup, digits, length). bench/sensitivity.py
measures it against uniform at equal size on held-out real text.

`design: clusters`, the paper's estimator, Axiotis et al. 2024, "Data-Efficient Learning via Clustering-Based Sensitivity Sampling":
1. embed every document, `e(x)` (classifiers/embeddings.py: MiniLM or hashed n-grams);
2. k-means on the embeddings: scikit-learn `MiniBatchKMeans` fitted on a uniform sample of
   `kmeans_sample` embeddings (a bottom-k combine), then every document is assigned to its nearest
   centre `c_a(x)` in parallel;
3. each centre's representative `r_j` is its nearest member (a combine over all documents), and
   only the k representatives need a loss `l(r_j)`: the `loss_field` column, or a small proxy LM
   trained in the job (mean token cross-entropy, or its EL2N);
4. `v(x) = l(r_a(x)) + lambda ||e(x) - c_a(x)||^z`;
5. `size` documents drawn with `p(x) = v(x) / sum v` (balanced over the clusters: each gets
   the floor or ceiling of its share of draws, see `transforms.selection.select`), each with weight
   `w(x) = count(x) / (size p(x))` in `selection_weight`, and the k representatives added. Then
   `|sum_S w l - sum l| <= eps sum l + eps lambda Phi_k` with `size = O(1/eps^2)`.

At equal size (the k representatives counted in the budget) this design did not beat uniform
reliably in bench/sensitivity.py, hence the default above.

Representatives that were not drawn are kept with weight 0 (`selection_representative` true), so
`sum(selection_weight * loss)` over the output is still the unbiased estimate of the corpus total.
Columns added: `stratified`: `selection_stratum`, `sensitivity_value` (1: uniform inside a
stratum); `clusters`: `kmeans_cluster`, `kmeans_distance`, `sensitivity_value`,
`selection_representative`; both: `selection_count`, `selection_probability`, `selection_weight`.
Every other document is dropped as `not_selected`.
"""
from __future__ import annotations

from dataclasses import field
from typing import Literal, Optional, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa

from classifiers.embeddings import EmbeddingConfig
from classifiers.proxy import EL2N, LM_LOSS, ProxyConfig, load_proxy
from transforms.core.accounting import count
from transforms.core.columns import (CLUSTER, CLUSTER_DISTANCE, SELECTION_COUNT,
                                     SELECTION_PROBABILITY, SELECTION_REPRESENTATIVE,
                                     SELECTION_STRATUM, SELECTION_WEIGHT, SENSITIVITY_VALUE)
from transforms.core.config import config_dataclass
from transforms.core.documents import ID, TEXT, with_column
from transforms.core.extras import require
from transforms.core.stage import Contract, Stage
from transforms.selection.clusters import (ClusterConfig, Embed, EmbedAndCluster, EmbeddingSample,
                                           assign, fit_centres, output_dir_of, require_embedder)
from transforms.selection.el2n import TrainProxy
from transforms.selection.select import (WeightedSample, draw_in_batch, draw_plan, float_column,
                                         stratum_masses)

# --- the numerical core (plain numpy, shared with bench/selection.py) -----------------------

def holder_constant(representative_loss: np.ndarray, centres: np.ndarray, power: float) -> float:
    """Data-driven lambda: `sum |l(r_i) - l(r_j)| / sum ||c_i - c_j||^z` over all pairs of
    clusters, the Holder ratio of the k losses already computed (no extra model calls), so that
    `lambda d^z` is on the scale of how much the loss moves with the embedding."""
    finite = np.isfinite(representative_loss)
    loss, points = representative_loss[finite], centres[finite].astype(np.float64)
    if len(loss) < 2:
        return 0.0
    spread = np.abs(loss[:, None] - loss[None, :]).sum()
    squared = np.maximum((points ** 2).sum(1)[:, None] + (points ** 2).sum(1)[None, :]
                         - 2 * points @ points.T, 0.0)
    scale = (squared ** (power / 2)).sum()
    return float(spread / scale) if scale > 0 else 0.0


def sensitivity_values(representative_loss: np.ndarray, distance: np.ndarray,
                       holder_lambda: float, power: float) -> np.ndarray:
    """`v(x) = l(r_a(x)) + lambda * ||e(x) - c_a(x)||^z`, per document."""
    return representative_loss + holder_lambda * distance.astype(np.float64) ** power


def nearest_members(cluster: np.ndarray, distance: np.ndarray,
                    eligible: np.ndarray) -> dict[int, int]:
    """cluster -> row index of its eligible member closest to the centre."""
    rows = np.flatnonzero(eligible)
    order = rows[np.lexsort((distance[rows], cluster[rows]))]
    clusters, first = np.unique(cluster[order], return_index=True)
    return {int(c): int(order[i]) for c, i in zip(clusters, first)}


def values_in_memory(embeddings: np.ndarray, loss: np.ndarray, clusters: int,
                     holder_lambda="auto", power: float = 2.0,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cluster, v(x)) for a corpus held in memory, through the same functions as the Beam stage
    (steps 1-4, one batch): for benchmarks and tests."""
    centres = fit_centres(embeddings, clusters, seed)
    cluster, distance = assign(embeddings, centres)
    members = nearest_members(cluster, distance, np.isfinite(loss))
    representative_loss = np.full(len(centres), np.nan)
    for c, row in members.items():
        representative_loss[c] = loss[row]
    if holder_lambda == "auto":
        holder_lambda = holder_constant(representative_loss, centres, power)
    return cluster, sensitivity_values(representative_loss[cluster], distance, holder_lambda, power)


def draw_in_memory(values: np.ndarray, strata: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Draw counts of the stage's step 5 (one batch); `strata` all equal: the i.i.d. draw."""
    return draw_in_batch(values, strata, 0, draw_plan(stratum_masses(0, values, strata), size,
                                                      seed), seed)


def principal_axis(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unit first principal direction) of sampled embeddings; the sign is fixed (largest
    component positive) so every run and worker projects the same way."""
    points = np.asarray(sample, dtype=np.float64)
    mean = points.mean(0)
    direction = np.linalg.svd(points - mean, full_matrices=False)[2][0]
    return mean, direction * np.sign(direction[np.argmax(np.abs(direction))])


def projection_strata(sample: np.ndarray, strata: int) -> dict:
    """The `stratified` design's strata: `strata` (= m) equal-count bins of the projection of the
    embeddings on the sample's first principal direction (edges: quantiles of the sample)."""
    mean, direction = principal_axis(sample)
    projection = (np.asarray(sample, dtype=np.float64) - mean) @ direction
    edges = np.quantile(projection, np.arange(1, strata) / strata) if strata > 1 else np.zeros(0)
    return {"mean": mean, "direction": direction, "edges": edges}


def stratum_of(embeddings: np.ndarray, axis: dict) -> tuple[np.ndarray, np.ndarray]:
    """(projection, stratum index) of each embedding."""
    projection = (embeddings.astype(np.float64) - axis["mean"]) @ axis["direction"]
    return projection, np.searchsorted(axis["edges"], projection).astype(np.int64)


def stratified_in_memory(embeddings: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Draw counts of the `stratified` design for a corpus held in memory, through the same
    functions as the stage (strata fitted on all the embeddings): for benchmarks and tests."""
    _, strata = stratum_of(embeddings, projection_strata(embeddings, size))
    return draw_in_memory(np.ones(len(embeddings)), strata, size, seed)


# --- Beam steps -----------------------------------------------------------------------------

def add_stratum(element, axis: dict) -> pa.RecordBatch:
    """(batch, embeddings) -> batch + `selection_stratum` + `sensitivity_value` 1."""
    batch, embeddings = element
    _, strata = stratum_of(embeddings, axis)
    batch = with_column(batch, SELECTION_STRATUM, pa.array(strata))
    return with_column(batch, SENSITIVITY_VALUE, pa.array(np.ones(batch.num_rows)))


class Representatives(beam.CombineFn):
    """cluster -> (distance, id, text, loss) of the member nearest its centre, over all batches.
    Ties go to the smaller id, so the result does not depend on the order of merging."""

    def __init__(self, loss_field: Optional[str], text_chars: int):
        self.loss_field = loss_field
        self.text_chars = text_chars

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, batch):
        cluster = batch.column(CLUSTER).to_numpy()
        distance = batch.column(CLUSTER_DISTANCE).to_numpy()
        loss = (float_column(batch, self.loss_field) if self.loss_field
                else np.zeros(batch.num_rows))
        eligible = np.isfinite(loss)
        candidates = {}
        for c, row in nearest_members(cluster, distance, eligible).items():
            text = None if self.loss_field else batch.column(TEXT)[row].as_py()[: self.text_chars]
            candidates[c] = (float(distance[row]), str(batch.column(ID)[row]), text,
                             float(loss[row]))
        return self.merge_accumulators([accumulator, candidates])

    def merge_accumulators(self, accumulators):
        merged: dict = {}
        for accumulator in accumulators:
            for c, candidate in accumulator.items():
                if c not in merged or candidate[:2] < merged[c][:2]:
                    merged[c] = candidate
        return merged

    def extract_output(self, accumulator):
        return accumulator


def representative_losses(members: dict, model: Optional[bytes], centres: np.ndarray,
                          config: "SensitivityConfig") -> dict:
    """{"loss": {cluster: l(r_j)}, "ids": set of representative ids, "fallback": mean loss,
    "holder_lambda": lambda (the configured one, or `holder_constant` for "auto")}.

    Without `loss_field` the proxy scores the k representatives: k model calls in all.
    """
    clusters = sorted(members)
    if config.loss_field:
        losses = [members[c][3] for c in clusters]
    elif clusters:
        proxy = load_proxy(model, config.proxy.device, config.proxy.threads)
        scores = proxy.score([members[c][2] for c in clusters])
        losses = scores[LM_LOSS if config.proxy_loss == "lm_loss" else EL2N].tolist()
    else:
        losses = []
    losses = [loss if np.isfinite(loss) else np.nan for loss in losses]
    finite = [loss for loss in losses if np.isfinite(loss)]
    count("sensitivity.representatives", len(clusters))
    holder_lambda = config.holder_lambda
    if holder_lambda == "auto":
        holder_lambda = holder_constant(np.array(losses, dtype=np.float64), centres[clusters],
                                        config.power)
    return {"loss": dict(zip(clusters, losses)), "ids": {members[c][1] for c in clusters},
            "fallback": float(np.mean(finite)) if finite else 0.0,
            "holder_lambda": holder_lambda}


def add_values(batch: pa.RecordBatch, representatives: dict, config: "SensitivityConfig"):
    """Adds `sensitivity_value`; a cluster whose representative has no loss uses the mean."""
    cluster = batch.column(CLUSTER).to_numpy()
    table = representatives["loss"]
    fallback = representatives["fallback"]
    rep_loss = np.array([table.get(int(c), fallback) for c in cluster], dtype=np.float64)
    rep_loss = np.where(np.isfinite(rep_loss), rep_loss, fallback)
    values = sensitivity_values(rep_loss, batch.column(CLUSTER_DISTANCE).to_numpy(),
                                representatives["holder_lambda"], config.power)
    return with_column(batch, SENSITIVITY_VALUE, pa.array(values))


@config_dataclass
class SensitivityConfig:
    size: int                               # m: draws
    design: Literal["stratified", "clusters"] = "stratified"  # see the module docstring
    clusters: Optional[int] = None          # clusters: k; default: k = size (docs/selection.md)
    loss_field: Optional[str] = None        # loss column (e.g. el2n, proxy_loss); else proxy LM
    proxy: ProxyConfig = field(default_factory=lambda: ProxyConfig(models=1))
    proxy_loss: Literal["lm_loss", "el2n"] = "lm_loss"
    # default: char_ngrams for `stratified`, hashed for `clusters`
    embedding: Optional[EmbeddingConfig] = None
    holder_lambda: Union[float, Literal["auto"]] = "auto"  # lambda; auto: holder_constant
    power: float = 2.0                      # z: 2 for k-means
    kmeans_sample: int = 100_000            # embeddings sampled to fit the centres or strata
    centres: Optional[str] = None           # load saved centres (.npy/.json) instead of fitting
    save_centres: bool = False              # write <output>/kmeans_centres.npy
    add_representatives: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.embedding is None:
            self.embedding = EmbeddingConfig(
                model="char_ngrams" if self.design == "stratified" else "hashed")
        if self.design == "stratified":
            given = [k for k in ("clusters", "loss_field", "centres") if getattr(self, k)]
            given += ["save_centres"] if self.save_centres else []
            if given:
                raise ValueError(f"{', '.join(given)}: for design 'clusters'; the stratified "
                                 "design needs no clusters and no loss before drawing")
        elif self.clusters is None:
            self.clusters = self.size
        if self.size < 1 or (self.clusters is not None and self.clusters < 1):
            raise ValueError("size and clusters must be >= 1")
        if self.proxy.label_field is not None:
            raise ValueError("the sensitivity proxy is a language model: leave proxy.label_field "
                             "unset (or give loss_field, e.g. an el2n column)")


class Sensitivity(Stage):
    """Keeps a weighted sensitivity sample of `size` draws plus the cluster representatives."""

    Config = SensitivityConfig

    def __init__(self, config: SensitivityConfig, context=None):
        # k-means and hashed embeddings: scikit-learn; the proxy LM and neural embedders: torch
        proxy = config.design == "clusters" and config.loss_field is None
        require_embedder("sensitivity", config.embedding, torch=proxy)
        if proxy and config.proxy.lm == "tokens":
            require("selection", "tokenizers", by="stage 'sensitivity' (proxy LM)")
        super().__init__(config, context)

    def contract(self) -> Contract:
        drawn = (SENSITIVITY_VALUE, SELECTION_COUNT, SELECTION_PROBABILITY, SELECTION_WEIGHT)
        if self.config.design == "stratified":
            return Contract(reads=(TEXT,), writes=(SELECTION_STRATUM, *drawn))
        loss = (self.config.loss_field,) if self.config.loss_field else ()
        representative = (SELECTION_REPRESENTATIVE,) if self.config.add_representatives else ()
        return Contract(reads=(TEXT, *loss), writes=(
            CLUSTER, CLUSTER_DISTANCE, SENSITIVITY_VALUE, SELECTION_COUNT, SELECTION_PROBABILITY,
            SELECTION_WEIGHT, *representative))

    def expand(self, documents):
        c = self.config
        if c.design == "stratified":
            embedded = documents | "Embed" >> Embed(c.embedding, "sensitivity")
            axis = (embedded | "EmbeddingSample" >> EmbeddingSample(c.kmeans_sample, c.seed)
                    | "Strata" >> beam.Map(lambda sample: projection_strata(sample[1], c.size)))
            stratified = embedded | "Stratum" >> beam.Map(add_stratum,
                                                           beam.pvalue.AsSingleton(axis))
            return stratified | "Sample" >> WeightedSample(
                "sensitivity", SENSITIVITY_VALUE, c.size, c.seed, stratum_column=SELECTION_STRATUM)
        clustering = ClusterConfig(k=c.clusters, embedding=c.embedding,
                                   kmeans_sample=c.kmeans_sample, centres=c.centres,
                                   save=c.save_centres, seed=c.seed)
        pairs, centres = documents | "Clusters" >> EmbedAndCluster(
            clustering, output_dir_of(self.context), counter="sensitivity")
        assigned = pairs | "DropEmbeddings" >> beam.Map(lambda e: e[0])
        members = assigned | "Representatives" >> beam.CombineGlobally(
            Representatives(c.loss_field, c.proxy.text_chars))
        model = (None if c.loss_field else
                 beam.pvalue.AsSingleton(documents | "TrainProxy" >> TrainProxy(c.proxy)))
        representatives = members | "RepresentativeLoss" >> beam.Map(
            representative_losses, model, beam.pvalue.AsSingleton(centres), c)
        valued = assigned | "Value" >> beam.Map(add_values,
                                                beam.pvalue.AsSingleton(representatives), c)
        forced = (representatives | "RepresentativeIds" >> beam.Map(lambda r: r["ids"])
                  if c.add_representatives else None)
        return valued | "Sample" >> WeightedSample("sensitivity", SENSITIVITY_VALUE, c.size, c.seed, forced,
                                                   stratum_column=CLUSTER)
