"""The EMA of the weights (``--ema-decay``; issue 36, item 4): timm's ModelEmaV3 rule with warm-up, evaluated each
epoch beside the raw model, kept in every checkpoint, resumed bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import needs_cifar
from datapaths import CIFAR_ROOT
from odearch.train import TrainConfig, fit, load_weights
from odearch.train.checkpoint import load_state
from odearch.train.config import ConfigError
from odearch.train.ema import EmaStep, ema_decay_at
from odearch.train.ship import ShipError, ship_run


def test_the_warmup_follows_timm_and_caps_at_the_decay() -> None:
    assert ema_decay_at(0.9998, 1) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema_decay_at(0.9998, 10**9) == 0.9998
    assert [ema_decay_at(0.99, t) for t in (1, 10, 100)] == sorted(ema_decay_at(0.99, t) for t in (1, 10, 100))


def test_the_average_is_the_recurrence_over_parameters_and_bn_statistics() -> None:
    """Three SGD steps on a conv + BatchNorm net: every floating tensor of the EMA equals
    e <- d_t e + (1 - d_t) w written out, the integer batch counter is copied."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)).double()
    model(torch.randn(2, 3, 6, 6, dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = EmaStep(opt, lambda s: 0.1, model=model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(1, 4):
        x, y = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.randint(0, 2, (4,))
        step(model, x, y, t - 1)
        d = ema_decay_at(0.9, t)
        for k, w in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * w if w.is_floating_point() else w.clone()
    for k, v in step.ema.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12, msg=k)
    assert not torch.equal(step.ema.state_dict()["0.weight"], model.state_dict()["0.weight"])


@pytest.mark.parametrize(
    ("change", "message"),
    [({"ema_decay": 1.0}, r"in \(0, 1\)"), ({"ema_decay": 0.99, "refine_at": [1]}, "changes shape")],
)
def test_bad_ema_options_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({"model": "resnet20", "epochs": 3, **change})


@needs_cifar
@pytest.mark.slow
def test_an_ema_run_records_both_models_and_resumes_bitwise(tmp_path: Path) -> None:
    """Each row holds the raw and the EMA model's test accuracy, the best epoch is chosen on the EMA, and a run
    stopped after every step and resumed ends with the same weights, EMA and rows as the uninterrupted one."""
    base = {
        "model": "resnet20",
        "subset": 128,
        "batch_size": 64,
        "epochs": 2,
        "eval_subset": 100,
        "ema_decay": 0.9,
        "data_dir": str(CIFAR_ROOT),
        "download": False,
        "tensorboard": False,
    }
    ref = fit(TrainConfig.from_dict({**base, "out": str(tmp_path / "ref")}))
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert all({"test_acc", "ema_test_acc"} <= set(r) for r in rows)
    assert ref["best_selected_on"] == "ema_test"
    cfg = TrainConfig.from_dict({**base, "out": str(tmp_path / "cut"), "max_minutes": 1e-5})
    result, sessions = fit(cfg), 1
    while result["status"] == "stopped":
        result, sessions = fit(cfg, resume=True), sessions + 1
    assert sessions == 4  # 2 steps an epoch, 2 epochs
    for name in ("ref", "cut"):
        assert load_state(tmp_path / name / "checkpoints" / "last.state.pt")["train_step"]["updates"] == 4
    a = load_state(tmp_path / "ref" / "checkpoints" / "last.state.pt")["train_step"]["ema"]
    b = load_state(tmp_path / "cut" / "checkpoints" / "last.state.pt")["train_step"]["ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    wa, _ = load_weights(tmp_path / "ref" / "checkpoints" / "last.safetensors")
    wb, _ = load_weights(tmp_path / "cut" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    cut = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    keys = ("train_loss", "test_acc", "ema_test_acc")
    assert [[r[k] for k in keys] for r in cut] == [[r[k] for k in keys] for r in rows]

    # odearch ship --ema: the final EMA, under a tag of its own; a run without an EMA is refused
    reg = tmp_path / "weights" / "registry.json"
    name, entry = ship_run(tmp_path / "ref", registry=reg, any_recipe=True, test_subset=100, ema=True)
    assert name == "resnet20.cifar10_ema_s0" and entry["ema"] and entry["ema_decay"] == 0.9
    shipped, meta = load_weights(reg.parent / entry["file"])
    assert meta["ema"] and all(torch.equal(shipped[k], a[k]) for k in a)
    plain = TrainConfig.from_dict({**base, "ema_decay": None, "epochs": 1, "out": str(tmp_path / "plain")})
    fit(plain)
    with pytest.raises(ShipError, match="without --ema-decay"):
        ship_run(tmp_path / "plain", registry=reg, any_recipe=True, test_subset=100, ema=True)
