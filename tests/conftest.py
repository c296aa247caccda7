"""Shared fixtures: the real default model, pulled into the store once per machine."""

from pathlib import Path

import pytest

from deeproots.store import DEFAULT_MODEL, ModelStore


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return ModelStore().pull(DEFAULT_MODEL, quiet=True).path
