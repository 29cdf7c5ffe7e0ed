"""Probes of a trained LM net (issue 31): why its k_n end where they do, and how much it relies on them. No training.

- :func:`force_balance`: per k_n, the loss gradient g = dL/dk averaged over the training set as the optimizer sees
  it (one augmented epoch, train-mode BatchNorm, batches of the recipe's size) against the weight-decay pull
  wd (k - c) (c = 1 for the official decay on kappa = 1 - k, 0 for decay on k, none without decay). SGD moves k by
  -lr (g + wd (k - c)): where the two cancel, k rests; where the decay term dominates, the prior holds k, not the data.
- :func:`k_ablation`: test error with each k_n (and all of them) set to 0, after BatchNorm is recalibrated on
  ``calib`` augmented training images (the statistics of the changed net, on the distribution the net was trained on:
  unaugmented images give other statistics, 12.5 % instead of 9.0 % for the unchanged shipped LM-ResNet-20), beside
  the unchanged net with and without the same recalibration: how much the trained net relies on its LM coupling.
- :func:`precision_eval`: test error in float32 and under bf16 autocast, so that fp32- and bf16-trained runs compare.
- :func:`mesh_sweep`: test error of the net refined and coarsened in depth (:mod:`odearch.mesh`), before any
  fine-tuning, with and without BatchNorm recalibration (issue 34).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.cifar import dataset_info
from ..data.loader import CifarLoader
from ..mesh import coarsen, mesh_steps, refine
from ..nn import Stage, lm_coefficients
from ..train.optim import LM_WEIGHT_DECAY, lm_parameters

__all__ = [
    "calibration_images",
    "evaluate_error",
    "force_balance",
    "k_ablation",
    "mesh_sweep",
    "precision_eval",
    "recalibrate_bn",
]


def _loader(
    images: torch.Tensor, labels: torch.Tensor, dataset: str, *, train: bool, batch_size: int, seed: int = 0
) -> CifarLoader:
    info = dataset_info(dataset)
    return CifarLoader(images, labels, batch_size, train=train, mean=info["mean"], std=info["std"], seed=seed)


@torch.no_grad()
def evaluate_error(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, amp: torch.dtype | None = None
) -> float:
    """Test error (%) of ``model`` in eval mode over ``batches`` (under CPU autocast to ``amp`` if given)."""
    model.eval()
    wrong = total = 0
    for x, y in batches:
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            pred = model(x).argmax(1)
        wrong += int((pred != y).sum())
        total += len(y)
    return 100.0 * wrong / total


def force_balance(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    dataset: str,
    lm_weight_decay: str,
    weight_decay: float,
    batch_size: int = 128,
    seed: int = 0,
    epoch: int = 0,
) -> dict[str, Any]:
    """Mean dL/dk per k_n over one augmented training epoch (train-mode BatchNorm, on a copy of ``model``) and the
    decay term wd (k - c) at the trained k; per stage, like ``lm_k``."""
    net = copy.deepcopy(model).train()
    params = lm_parameters(net)
    if not params:
        raise ValueError("force_balance: the model has no learnable LM coefficients (lm_k)")
    loader = _loader(images, labels, dataset, train=True, batch_size=batch_size, seed=seed)
    loader.set_epoch(epoch)
    sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    steps = 0
    for x, y in loader:
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), params)
        for s, g in zip(sums, grads, strict=True):
            s += g.double()
        steps += 1
    center = LM_WEIGHT_DECAY[lm_weight_decay]
    names = [n.rsplit(".", 1)[0] for n, _ in net.named_parameters() if n.rsplit(".", 1)[-1] == "lm_k"]
    k = lm_coefficients(model)
    grad = {name: (s / steps).tolist() for name, s in zip(names, sums, strict=True)}
    decay = {name: [0.0 if center is None else weight_decay * (kk - center) for kk in k[name]] for name in names}
    return {
        "k": k,
        "grad": grad,
        "decay": decay,
        "net": {n: [g + d for g, d in zip(grad[n], decay[n], strict=True)] for n in names},
        "steps": steps,
        "images": steps * batch_size,
        "decay_center": center,
    }


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor) -> None:
    """Resets every BatchNorm's running statistics and re-estimates them (cumulative average) on ``images``
    (normalised, one pass in train mode, no gradient)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    for chunk in images.split(500):
        model(chunk)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()


def calibration_images(train: tuple[torch.Tensor, torch.Tensor], dataset: str, calib: int) -> torch.Tensor:
    """The first ``calib`` training images, normalised, randomly cropped and flipped as in training (seed 0): what
    :func:`recalibrate_bn` re-estimates BatchNorm statistics on."""
    info = dataset_info(dataset)
    images, labels = train[0][:calib], train[1][:calib]
    loader = CifarLoader(
        images, labels, 500, train=True, mean=info["mean"], std=info["std"], shuffle=False, drop_last=False
    )
    loader.set_epoch(0)
    return torch.cat([x for x, _ in loader])


def mesh_sweep(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    dataset: str,
    factors: tuple[int, ...] = (2, 4, 8),
    calib: int = 2000,
) -> list[dict[str, Any]]:
    """Test error (%) of a trained net at other depth meshes, before any fine-tuning (issue 34): the net itself,
    :func:`odearch.refine` by each of ``factors``, and :func:`odearch.coarsen` by every factor that divides
    each stage's mesh; each as it comes and with BatchNorm recalibrated on ``calib`` augmented training images.
    One row per mesh: ``kind``, ``factor``, ``steps_per_stage``, ``params``, ``error``, ``error_recalibrated``."""
    meshes = [mesh_steps(m) for m in model.modules() if isinstance(m, Stage)]
    divisors = [f for f in range(2, max(meshes) + 1) if all(n % f == 0 for n in meshes)]
    nets = [("trained", 1, model)] + [("refine", f, refine(model, f)) for f in factors]
    nets += [("coarsen", f, coarsen(model, f)) for f in divisors]
    calib_x = calibration_images(train, dataset, calib)
    test_batches = list(_loader(*test, dataset, train=False, batch_size=1000))
    rows = []
    for kind, factor, net in nets:
        net = net.to(memory_format=torch.channels_last).eval()
        row = {
            "kind": kind,
            "factor": factor,
            "params": sum(p.numel() for p in net.parameters()),
            "steps_per_stage": [len(m) for m in net.modules() if isinstance(m, Stage)],
            "error": evaluate_error(net, test_batches),
        }
        recalibrate_bn(net, calib_x)
        rows.append(row | {"error_recalibrated": evaluate_error(net, test_batches), "calib_images": calib})
    return rows


def k_ablation(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    dataset: str,
    calib: int = 2000,
) -> dict[str, Any]:
    """Test error (%) of the trained net; recalibrated (BatchNorm on the first ``calib`` training images, randomly
    cropped and flipped as in training, seed 0); and with each k_n, then all of them, set to 0 and recalibrated.
    Keys: ``trained``, ``recalibrated``, ``k_zero`` (per stage and block), ``all_zero``."""
    calib_x = calibration_images(train, dataset, calib)
    test_batches = list(_loader(*test, dataset, train=False, batch_size=1000))

    def error_with(zero: list[tuple[nn.Parameter, int]] | None) -> float:
        net = copy.deepcopy(model)
        params = dict(zip(map(id, lm_parameters(model)), lm_parameters(net), strict=True))
        with torch.no_grad():
            for p, i in zero or []:
                params[id(p)][i] = 0.0
        if zero is not None:
            recalibrate_bn(net, calib_x)
        return evaluate_error(net, test_batches)

    names = [n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "lm_k"]
    every = [(p, i) for p in lm_parameters(model) for i in range(p.shape[0])]
    out: dict[str, Any] = {"trained": error_with(None), "recalibrated": error_with([]), "calib_images": calib}
    out["k_zero"] = {
        name: [error_with([(p, i)]) for i in range(p.shape[0])]
        for name, p in zip(names, lm_parameters(model), strict=True)
    }
    out["all_zero"] = error_with(every)
    return out


def precision_eval(model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], *, dataset: str) -> dict[str, float]:
    """Test error (%) in float32 and under CPU bf16 autocast."""
    batches = list(_loader(*test, dataset, train=False, batch_size=1000))
    return {"fp32": evaluate_error(model, batches), "bf16": evaluate_error(model, batches, amp=torch.bfloat16)}
