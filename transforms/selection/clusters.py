"""One embedding + k-means step shared by every clustering-based selection method.

`EmbedAndCluster` (a PTransform, not a stage) embeds each batch once (classifiers/embeddings.py,
through Beam's RunInference: `Embed`),
fits scikit-learn `MiniBatchKMeans` on a uniform sample of `kmeans_sample` embeddings (a bottom-k
combine over seeded random keys), or loads saved centres (`centres: PATH`), and assigns every
document to its nearest centre in parallel. Its output is `(batch, embeddings)` pairs, the batch
carrying `kmeans_cluster` and `kmeans_distance` (Euclidean distance to the centre), so later steps
(`semdedup`'s pairwise similarities) use the embeddings without computing them again, plus the
centres as a singleton PCollection. With `save: true` the centres are written to
`<output>/kmeans_centres.npy` (float32, k x d), which a later job reads back with
`clusters: {centres: <output>/kmeans_centres.npy}` so clusters keep their numbers across jobs.

Used by `sensitivity` (transforms/selection/sensitivity.py) and by the pruning stages
(transforms/selection/pruning.py: `balance`, `prototypes`, `semdedup`, `cluster_complexity`).
"""
from __future__ import annotations

import io
from dataclasses import field
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from classifiers.embeddings import EmbeddingConfig, load_embedder, needs_torch, resolved_model
from transforms.core.accounting import count
from transforms.core.columns import CLUSTER, CLUSTER_DISTANCE
from transforms.core.config import config_dataclass
from transforms.core.documents import TEXT, with_column
from transforms.core.extras import require
from transforms.core.files import write_bytes_atomic
from transforms.core.progress import Progress
from transforms.selection.select import BottomK, random_keys

CENTRES_FILE = "kmeans_centres.npy"


# --- the numerical core (plain numpy, shared with the benches and tests) --------------------

def fit_centres(sample: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """k-means centres of the sampled embeddings (fewer when there are fewer points)."""
    from sklearn.cluster import MiniBatchKMeans  # the `selection` extra, checked by the stage

    if not len(sample):
        return np.zeros((0, 0), dtype=np.float32)
    kmeans = MiniBatchKMeans(n_clusters=min(clusters, len(sample)), random_state=seed, n_init=3,
                             batch_size=min(4096, len(sample)))
    return kmeans.fit(sample).cluster_centers_.astype(np.float32)


def assign(embeddings: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centre index, Euclidean distance to it) for each embedding."""
    points, means = embeddings.astype(np.float64), centres.astype(np.float64)
    nearest = ((means ** 2).sum(1)[None, :] - 2 * points @ means.T).argmin(1)
    distance = np.linalg.norm(points - means[nearest], axis=1)
    return nearest.astype(np.int32), distance.astype(np.float32)


def centres_to_bytes(centres: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(centres, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def save_centres(centres: np.ndarray, path: str) -> str:
    return write_bytes_atomic(path, centres_to_bytes(centres))


def load_centres(path: str) -> np.ndarray:
    """Centres from an .npy file (as `save_centres` writes) or a JSON list of lists."""
    with FileSystems.open(path) as handle:
        data = handle.read()
    if path.endswith(".json"):
        import json
        centres = np.array(json.loads(data), dtype=np.float32)
    else:
        centres = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
    if centres.ndim != 2 or not len(centres):
        raise ValueError(f"{path}: expected a k x d array of centres, got shape {centres.shape}")
    return centres


@config_dataclass
class ClusterConfig:
    """`clusters:` of every clustering-based stage."""
    k: int = 100                            # k-means clusters
    embedding: EmbeddingConfig = field(default_factory=lambda: EmbeddingConfig(model="hashed"))
    kmeans_sample: int = 100_000            # embeddings sampled to fit the centres
    centres: Optional[str] = None           # load these centres (.npy or .json) instead of fitting
    save: bool = False                      # write <output>/kmeans_centres.npy
    seed: int = 0

    def __post_init__(self):
        if self.k < 1 or self.kmeans_sample < 1:
            raise ValueError("k and kmeans_sample must be >= 1")


# --- Beam steps -----------------------------------------------------------------------------

class EmbeddingHandler(ModelHandler):
    """Beam RunInference's handler for the embedders: each element is a whole RecordBatch
    (already a batch, so `max_batch_size` 1) and its inference the batch's embeddings. The model
    loads once per worker process, or, for a torch model on a GPU (`device: cuda...`), once per
    machine, shared by its worker processes (`share_model_across_processes`)."""

    def __init__(self, config: EmbeddingConfig):
        on_gpu = needs_torch(config) and config.device.startswith("cuda")
        super().__init__(min_batch_size=1, max_batch_size=1, large_model=on_gpu)
        self.config = config

    def load_model(self):
        return load_embedder(self.config)

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(b, model.embed(b.column(TEXT).to_pylist())) for b in batch]

    def get_num_bytes(self, batch) -> int:
        return sum(b.nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return "sluice.embeddings"


class Embed(beam.PTransform):
    """batches -> (batch, embeddings) pairs, through RunInference with `EmbeddingHandler`."""

    def __init__(self, config: EmbeddingConfig, counter: str = "clusters"):
        super().__init__()
        self.config, self.counter = config, counter

    def expand(self, batches):
        counter = f"{self.counter}.embedded_{resolved_model(self.config)}"
        return (batches | "RunInference" >> RunInference(EmbeddingHandler(self.config))
                | "Pairs" >> beam.ParDo(_PairsFn(counter, f"{self.counter}-embed")))


class _PairsFn(beam.DoFn):
    def __init__(self, counter: str, progress: str):
        self.counter, self.progress_name = counter, progress

    def setup(self):
        self.progress = Progress(self.progress_name)

    def process(self, result):
        batch = result.example
        count(self.counter, batch.num_rows)
        self.progress.add(batch.num_rows)
        yield batch, result.inference


def assign_batch(element, centres: np.ndarray):
    """(batch, embeddings) -> (batch + kmeans_cluster + kmeans_distance, embeddings)."""
    batch, embeddings = element
    cluster, distance = assign(embeddings, centres)
    batch = with_column(batch, CLUSTER, pa.array(cluster))
    return with_column(batch, CLUSTER_DISTANCE, pa.array(distance)), embeddings


def _fit_and_save(sample, config: ClusterConfig, output_dir: Optional[str]) -> np.ndarray:
    centres = fit_centres(sample[1], config.k, config.seed)
    count("clusters.fitted_on", len(sample[1]))
    if config.save and output_dir:
        save_centres(centres, FileSystems.join(output_dir, CENTRES_FILE))
    return centres


class EmbeddingSample(beam.PTransform):
    """(batch, embeddings) pairs -> a singleton `(keys, embeddings)`: a uniform sample of `size`
    embeddings (the bottom `size` seeded random keys of the document ids, whatever the batching)."""

    def __init__(self, size: int, seed: int):
        super().__init__()
        self.size, self.seed = size, seed

    def expand(self, embedded):
        seed = self.seed
        return (embedded | "EmbeddingKeys" >> beam.Map(lambda e: (random_keys(e[0], seed), e[1]))
                | "BottomK" >> beam.CombineGlobally(BottomK(self.size)))


class EmbedAndCluster(beam.PTransform):
    """batches -> `(pairs, centres)`: `pairs` a PCollection of (batch with `kmeans_cluster`,
    `kmeans_distance`; its embeddings), `centres` a singleton PCollection (k x d)."""

    def __init__(self, config: ClusterConfig, output_dir: Optional[str] = None,
                 counter: str = "clusters"):
        super().__init__()
        self.config = config
        self.output_dir = output_dir
        self.counter = counter

    def expand(self, batches):
        c = self.config
        embedded = batches | "Embed" >> Embed(c.embedding, self.counter)
        if c.centres:
            path = c.centres
            centres = (batches.pipeline | "CentresPath" >> beam.Create([path])
                       | "LoadCentres" >> beam.Map(load_centres))
        else:
            centres = (embedded | "EmbeddingSample" >> EmbeddingSample(c.kmeans_sample, c.seed)
                       | "KMeans" >> beam.Map(_fit_and_save, c, self.output_dir))
        assigned = embedded | "Assign" >> beam.Map(assign_batch,
                                                   beam.pvalue.AsSingleton(centres))
        return assigned, centres


def require_embedder(stage: str, embedding: EmbeddingConfig, torch: bool = False) -> None:
    """Fail before running when the stage's extras are missing: scikit-learn (k-means, the
    hashed embedders) always, torch for a neural embedder (or `torch`, e.g. a proxy LM), and
    sentence-transformers for `minilm` / `sentence-transformers` models."""
    neural = needs_torch(embedding)
    require("selection", "sklearn", *(["torch"] if neural or torch else []),
            by=f"stage '{stage}'")
    if neural:
        require("minilm", "sentence_transformers", by=f"stage '{stage}' (embedding "
                f"'{resolved_model(embedding)}')")


def output_dir_of(context) -> Optional[str]:
    return getattr(context, "output_dir", None) or None
