"""Shared test settings and helpers: deterministic, few threads (CI has 2 cores).

Fixtures here are found by pytest; the plain helpers are imported (``from conftest import n_params``). Where the tests
find CIFAR-10 is ``datapaths.py``. ``@pytest.mark.slow`` marks the tests that ``pytest -m "not slow"`` (the inner
loop) leaves out; the default run and CI run them all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from datapaths import HAS_CIFAR, SKIP_REASON
from odearch.train import load_weights

needs_cifar = pytest.mark.skipif(not HAS_CIFAR, reason=SKIP_REASON)


def pytest_configure(config: pytest.Config) -> None:
    """In CI (``$CI`` set) missing CIFAR-10 ends the run with one line instead of skipping the tests that need it."""
    if os.environ.get("CI") and not HAS_CIFAR:
        pytest.exit(f"CI: {SKIP_REASON}", returncode=1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core runner OpenMP barriers under oversubscription cost ~40x.

    A file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(model: nn.Module) -> int:
    """Number of parameters (every tensor of ``model.parameters()``)."""
    return sum(p.numel() for p in model.parameters())


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a wrong mapping of keys shows in the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The tensors of the run's ``checkpoints/last.safetensors``."""
    return load_weights(run / "checkpoints" / "last.safetensors")[0]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a CLI error wrote to stderr (``odearch: error: ...``)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("odearch: error: ")
    return err[0]
