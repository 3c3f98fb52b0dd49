"""Model wrappers used by the stages (fastText, KenLM, proxy LMs, embeddings, RegMix regressors,
vLLM client and server). The bottom layer: nothing here imports `transforms` or `pipelines`."""

# Strict validation for the settings dataclasses defined here when a stage's config nests them
# (pydantic reads it from plain dataclasses): unknown keys and wrong types are errors.
STRICT_SETTINGS = {"extra": "forbid", "strict": True}


class ModelError(ValueError):
    """A model that cannot be used as asked: a missing file, a label it lacks, nothing to learn."""
