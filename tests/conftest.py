"""Shared test set-up: deterministic, single-threaded torch, and paths to the shared real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

# Each pytest-xdist worker gets one thread: two workers on a 2-core machine, no oversubscription.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """The project's real test assets (``../shared/data``); skips where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (a checkout without ../shared)")
    return SHARED_DATA
