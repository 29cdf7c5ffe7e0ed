"""Shared test settings: deterministic, few threads (CI has 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
