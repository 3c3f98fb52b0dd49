"""Column names that more than one stage reads or writes, defined once.

A stage's defaults use these, so the natural chains line up without configuration:
`quality` -> `dedup` (survivor preference) and `buckets`, `buckets` -> `rephrase` (prompt routing
by bucket), `langid` -> `filter` and `perplexity` (language), `sensitivity`/`select` -> the
trainer (selection weights). The core document fields are in `transforms.core.documents`.
"""
from __future__ import annotations

LANGUAGE, LANGUAGE_SCORE = "language", "language_score"
QUALITY_SCORE = "quality_score"
QUALITY_BUCKET, QUALITY_TIER = "quality_bucket", "quality_tier"
HIGH_QUALITY_MIN_BUCKET = 12          # Nemotron-CC: buckets 12-19 of 0-19 are high quality
PERPLEXITY, PERPLEXITY_BUCKET = "perplexity", "perplexity_bucket"
EL2N, PROXY_LOSS, PROXY_PERPLEXITY = "el2n", "proxy_loss", "proxy_perplexity"
CLUSTER, CLUSTER_DISTANCE = "kmeans_cluster", "kmeans_distance"
SENSITIVITY_VALUE = "sensitivity_value"
SELECTION_STRATUM = "selection_stratum"
SELECTION_COUNT, SELECTION_PROBABILITY = "selection_count", "selection_probability"
SELECTION_WEIGHT, SELECTION_REPRESENTATIVE = "selection_weight", "selection_representative"
MIXTURE_COPY = "mixture_copy"
LICENSE, LICENSE_TIER = "license", "license_tier"
