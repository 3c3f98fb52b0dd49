"""Fixtures for every test: the real sample data in ../shared/data, and the tiny locally built
model with its vLLM server (tests/support/tiny_model.py). Helpers live in tests/support."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import SHARED_DATA
from tests.support.models import langid_model, quality_model, wiki_lm  # noqa: F401  (fixtures)
from tests.support.tiny_model import tiny_model_dir, vllm_server  # noqa: F401  (fixtures)

os.environ.setdefault("SLUICE_QUIET", "1")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real sample data at {SHARED_DATA}")
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA
