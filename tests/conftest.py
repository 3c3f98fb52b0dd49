"""Shared fixtures: Beam's in-process FnApiRunner (never the Prism-downloading DirectRunner),
paths to the real sample data in ../shared/data, and small file writers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SLUICE_SHARED_DATA", REPO.parent / "shared" / "data"))
DEMO_DATA = REPO / "data" / "demo"

os.environ.setdefault("SLUICE_QUIET", "1")


def test_pipeline() -> TestPipeline:
    """A TestPipeline on the in-process FnApiRunner."""
    return TestPipeline(runner=FnApiRunner(), options=PipelineOptions([]),
                        blocking=True, is_integration_test=False)


test_pipeline.__test__ = False  # a factory, not a test


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real sample data at {SHARED_DATA}")
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA
