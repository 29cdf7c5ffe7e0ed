"""Probes of trained LM nets (``odearch.analysis.probes``) on tiny synthetic data: the force balance is the mean
autograd gradient and the decay term, BatchNorm recalibration is an exact average, ablations leave the net intact."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from odearch import create_model
from odearch.analysis import probes
from odearch.data.cifar import dataset_info
from odearch.nn import lm_coefficients


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(
        0, 10, (n,), generator=g
    )


def _net() -> nn.Module:
    torch.manual_seed(0)
    return create_model("lm_resnet20").eval()


def test_force_balance_is_the_mean_gradient_over_the_augmented_epoch_and_the_decay_term() -> None:
    model, (x, y) = _net(), _data(64)
    out = probes.force_balance(
        model, x, y, dataset="cifar10", lm_weight_decay="kappa", weight_decay=1e-4, batch_size=32, seed=3
    )
    assert out["steps"] == 2 and out["decay_center"] == 1.0
    info = dataset_info("cifar10")
    from odearch.data.loader import CifarLoader

    loader = CifarLoader(x, y, 32, train=True, mean=info["mean"], std=info["std"], seed=3)
    loader.set_epoch(0)
    net = copy.deepcopy(model).train()
    total = None
    for bx, by in loader:  # the same augmented batches, one autograd each
        g = torch.autograd.grad(F.cross_entropy(net(bx), by), [net.stages[2].lm_k])[0]
        total = g if total is None else total + g
    got = torch.tensor(out["grad"]["stages.2"], dtype=torch.float64)
    torch.testing.assert_close(got, (total / 2).double(), rtol=1e-4, atol=1e-7)
    k = lm_coefficients(model)
    assert out["decay"]["stages.0"] == pytest.approx([1e-4 * (v - 1) for v in k["stages.0"]])
    assert out["net"]["stages.1"] == pytest.approx(
        [a + b for a, b in zip(out["grad"]["stages.1"], out["decay"]["stages.1"], strict=True)]
    )
    assert lm_coefficients(model) == k  # the probe trained nothing: BN statistics and k of the model unchanged
    none = probes.force_balance(
        model, x, y, dataset="cifar10", lm_weight_decay="none", weight_decay=1e-4, batch_size=32
    )
    assert all(v == 0.0 for stage in none["decay"].values() for v in stage)
    with pytest.raises(ValueError, match="no learnable LM coefficients"):
        probes.force_balance(
            create_model("preact_resnet20"), x, y, dataset="cifar10", lm_weight_decay="kappa", weight_decay=1e-4
        )


def test_recalibrated_batchnorm_statistics_are_the_exact_mean_over_the_images() -> None:
    bn = nn.Sequential(nn.BatchNorm2d(3))
    bn[0].running_mean.fill_(5.0)
    images = torch.randn(1000, 3, 4, 4, dtype=torch.float64).float()
    probes.recalibrate_bn(bn, images)
    torch.testing.assert_close(bn[0].running_mean, images.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert bn[0].momentum == 0.1 and not bn.training


def test_ablation_zeroes_one_k_at_a_time_and_leaves_the_net_alone() -> None:
    model = _net()
    before = copy.deepcopy(model.state_dict())
    out = probes.k_ablation(model, _data(40), _data(30, seed=1), dataset="cifar10", calib=40)
    assert {s: len(v) for s, v in out["k_zero"].items()} == {"stages.0": 2, "stages.1": 2, "stages.2": 2}
    assert all(0.0 <= e <= 100.0 for v in out["k_zero"].values() for e in v)
    assert set(out) == {"trained", "recalibrated", "calib_images", "k_zero", "all_zero"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    prec = probes.precision_eval(model, _data(30, seed=1), dataset="cifar10")
    assert prec["fp32"] == out["trained"] and set(prec) == {"fp32", "bf16"}
