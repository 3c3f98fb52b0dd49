"""One embedding + k-means step shared by every clustering-based selection method.

`EmbedAndCluster` (a PTransform, not a stage) embeds each batch once (classifiers/embeddings.py),
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

from classifiers.embeddings import EmbeddingConfig, load_embedder
from transforms.core.accounting import count
from transforms.core.columns import CLUSTER, CLUSTER_DISTANCE
from transforms.core.config import config_dataclass
from transforms.core.documents import TEXT, with_column
from transforms.core.files import write_bytes_atomic
from transforms.core.models import acquire, model_handle
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

class EmbedFn(beam.DoFn):
    """batch -> (batch, embeddings)."""

    def __init__(self, config: EmbeddingConfig, counter: str = "clusters"):
        self.config = config
        self.counter = counter
        self._shared_embedder = model_handle(load_embedder, repr(config))

    def setup(self):
        self.embedder = acquire(self._shared_embedder, lambda: load_embedder(self.config),
                                repr(self.config))
        self.progress = Progress(f"{self.counter}-embed")

    def process(self, batch):
        embeddings = self.embedder.embed(batch.column(TEXT).to_pylist())
        count(f"{self.counter}.embedded_{self.embedder.name}", batch.num_rows)
        self.progress.add(batch.num_rows)
        yield batch, embeddings


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
        embedded = batches | "Embed" >> beam.ParDo(EmbedFn(c.embedding, self.counter))
        if c.centres:
            path = c.centres
            centres = (batches.pipeline | "CentresPath" >> beam.Create([path])
                       | "LoadCentres" >> beam.Map(load_centres))
        else:
            output_dir = self.output_dir
            centres = (embedded
                       | "EmbeddingKeys" >> beam.Map(lambda e: (random_keys(e[0], c.seed), e[1]))
                       | "EmbeddingSample" >> beam.CombineGlobally(BottomK(c.kmeans_sample))
                       | "KMeans" >> beam.Map(_fit_and_save, c, output_dir))
        assigned = embedded | "Assign" >> beam.Map(assign_batch,
                                                   beam.pvalue.AsSingleton(centres))
        return assigned, centres


def output_dir_of(context) -> Optional[str]:
    return getattr(context, "output_dir", None) or None
