"""Helpers shared by the tests: paths to the repository and the real sample data, a
TestPipeline on Beam's in-process FnApiRunner, and a collector of PCollection elements."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("SLUICE_SHARED_DATA", REPO.parent / "shared" / "data"))
DEMO_DATA = REPO / "data" / "demo"


def test_pipeline() -> TestPipeline:
    """A TestPipeline on the in-process FnApiRunner."""
    return TestPipeline(runner=FnApiRunner(), options=PipelineOptions([]),
                        blocking=True, is_integration_test=False)


test_pipeline.__test__ = False  # a factory, not a test


_COLLECTED: dict[str, list] = {}


class _Store:
    """Pickled by reference (a module-level class), so it writes into this module's store."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, elements) -> None:
        _COLLECTED[self.key] = list(elements)


class Collected:
    """Elements of a PCollection gathered (via `assert_that`) for inspection after the run.

    The in-process runner unpickles the matcher in this same process, so it can hand the
    elements back through a module-level store keyed by a unique name.
    """

    def __init__(self, pcoll, label: str):
        self.key = f"{label}-{uuid.uuid4().hex}"
        assert_that(pcoll, _Store(self.key), label=f"Collect{label}")

    @property
    def elements(self) -> list:
        return _COLLECTED[self.key]

    def rows(self) -> list[dict]:
        """Rows of collected record batches."""
        return [row for batch in self.elements for row in batch.to_pylist()]
