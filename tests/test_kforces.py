"""The per-epoch force balance of the LM coefficients (``odearch.train.kforces``): the mean loss gradient dL/dk and
the mean weight-decay term of every k_n, as the optimizer saw them, in each epoch's metrics row."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import odearch
from conftest import needs_cifar
from datapaths import CIFAR_ROOT
from odearch.train import TrainConfig, fit
from odearch.train.epoch import TrainStep, train_one_epoch
from odearch.train.kforces import KForces
from odearch.train.optim import build_optimizer

WD = 0.01


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), odearch.Stage("lm", [nn.Linear(4, 4) for _ in range(3)]))


@pytest.mark.parametrize(("decay", "center"), [("kappa", 1.0), ("k", 0.0), ("none", None)])
def test_epoch_means_equal_the_gradients_and_decay_terms_step_by_step(decay: str, center: float | None) -> None:
    def build() -> tuple[nn.Module, torch.optim.Optimizer]:
        model = _model()
        return model, build_optimizer(
            model, lr=0.5, momentum=0.9, nesterov=False, weight_decay=WD, lm_weight_decay=decay
        )

    batches = [(torch.randn(8, 4), torch.randint(0, 4, (8,))) for _ in range(3)]
    model, opt = build()
    grads, ks = [], []
    for x, y in batches:  # the reference: an independent autograd of each step's loss at the weights it starts from
        twin = copy.deepcopy(model)
        ks.append(twin[1].lm_k.detach().clone())
        grads.append(torch.autograd.grad(F.cross_entropy(twin(x), y), twin[1].lm_k)[0])
        train_one_epoch(model, [(x, y)], TrainStep(opt, lambda step: 0.5), step=0)
    model, opt = build()
    forces = KForces(model, opt)
    out = train_one_epoch(model, batches, TrainStep(opt, lambda step: 0.5), step=0, kforces=forces)
    row = forces.row(out)
    assert set(row) == {"lm_k_grad", "lm_k_decay"} and list(row["lm_k_grad"]) == ["1"]
    torch.testing.assert_close(torch.tensor(row["lm_k_grad"]["1"]), torch.stack(grads).mean(0))
    expected = WD * (torch.stack(ks).mean(0) - center) if center is not None else torch.zeros(2)
    torch.testing.assert_close(torch.tensor(row["lm_k_decay"]["1"]), expected)
    assert out["lm_steps"] == 3


def test_a_model_without_lm_coefficients_adds_nothing() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    forces = KForces(model, opt)
    out = train_one_epoch(
        model, [(torch.randn(8, 4), torch.randint(0, 4, (8,)))], TrainStep(opt, lambda s: 0.1), step=0, kforces=forces
    )
    assert not forces and forces.row(out) == {} and "lm_grad_sum" not in out


@pytest.mark.slow
@needs_cifar
def test_rows_record_the_forces_and_a_run_cut_every_step_records_the_same(tmp_path: Path) -> None:
    base = {
        "model": "lm_resnet20",
        "subset": 192,
        "batch_size": 64,
        "epochs": 1,
        "eval_subset": 100,
        "data_dir": str(CIFAR_ROOT),
        "download": False,
        "tensorboard": False,
    }
    fit(TrainConfig.from_dict({**base, "out": str(tmp_path / "ref")}))
    cfg = TrainConfig.from_dict({**base, "out": str(tmp_path / "cut"), "max_minutes": 1e-5})
    result = fit(cfg)
    while result["status"] == "stopped":  # one step per session: the partial sums go through the checkpoint
        result = fit(cfg, resume=True)
    rows = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0]) for d in ("ref", "cut")]
    assert rows[0]["lm_k_grad"] == rows[1]["lm_k_grad"] and rows[0]["lm_k_decay"] == rows[1]["lm_k_decay"]
    ref = rows[0]
    assert (
        {s: len(v) for s, v in ref["lm_k_grad"].items()}
        == {s: len(v) for s, v in ref["lm_k"].items()}
        == {"stages.0": 2, "stages.1": 2, "stages.2": 2}
    )
    assert all(v != 0.0 for stage in ref["lm_k_grad"].values() for v in stage)
    # the official decay pulls k (near -0.05 after init) toward 1: wd (k - 1) is about -1.05e-4, negative
    assert all(-1.11e-4 < v < -1.0e-4 for stage in ref["lm_k_decay"].values() for v in stage)
