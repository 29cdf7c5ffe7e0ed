"""Multi-level training (issue 34): ``--refine-at`` refines the model between epochs, carries the momentum, records
each level, and resumes bit for bit across a refinement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import odearch
from conftest import needs_cifar
from datapaths import CIFAR_ROOT
from odearch.cli import main
from odearch.train import TrainConfig, fit, load_weights
from odearch.train.config import ConfigError
from odearch.train.multilevel import carry_momentum, mesh_level, refined_model
from odearch.train.ship import ShipError, ship_run
from odearch.train.state import make_optimizer

BASE = {
    "model": "lm_resnet20",
    "subset": 128,
    "batch_size": 64,
    "epochs": 3,
    "eval_subset": 100,
    "refine_at": [1, 2],
    "data_dir": str(CIFAR_ROOT),
    "download": False,
    "tensorboard": False,
}


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_mesh_level_follows_the_position_in_the_run() -> None:
    cfg = TrainConfig.from_dict({**BASE, "epochs": 10, "refine_at": [3, 6]})
    assert [mesh_level(cfg, e, 0) for e in range(8)] == [0, 0, 0, 0, 1, 1, 1, 2]  # refined as epoch e + 1 begins
    assert [mesh_level(cfg, e, 1) for e in (2, 3, 6)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"refine_at": [2, 1]}, "strictly increasing"),
        ({"refine_at": [0]}, "strictly increasing"),
        ({"refine_at": [3]}, r"in 1\.\.2"),
        ({"refine_at": ["x"]}, "list of epochs"),
        ({"refine_factor": 1}, ">= 2"),
    ],
)
def test_bad_refinement_options_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**BASE, **change})


def test_carried_momentum_commutes_with_refinement() -> None:
    """One momentum-only SGD step (zero gradients) then refine equals refine then the step with the carried
    buffers: the buffers went through the weights' linear map (halved on the scaled layers, copied elsewhere)."""
    torch.manual_seed(0)
    cfg = TrainConfig.from_dict({**BASE, "weight_decay": 0.0})
    model = odearch.create_model("lm_resnet20")
    opt = make_optimizer(model, cfg)
    model(torch.randn(4, 3, 32, 32)).square().mean().backward()
    opt.step()  # momentum buffers now hold the gradient
    new, maps = refined_model(model, 2)
    new_opt = make_optimizer(new, cfg)
    assert carry_momentum(opt.state, new_opt.state, maps) == len(list(new.parameters()))
    before = {n: p.detach().clone() for n, p in new.named_parameters()}
    for o, params in ((opt, model.parameters()), (new_opt, new.parameters())):
        for p in params:
            p.grad = torch.zeros_like(p)
        o.step()
    stepped, _ = refined_model(model, 2)
    for (name, a), b in zip(new.named_parameters(), stepped.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert any(not torch.equal(p, before[n]) for n, p in new.named_parameters())  # the step moved the weights


@needs_cifar
@pytest.mark.slow
def test_a_multilevel_run_records_its_levels_and_resumes_bitwise(tmp_path: Path) -> None:
    """lm_resnet20 refined after epochs 1 and 2 ends with lm_resnet56's shape; a run stopped after every single
    step (so also right after each refinement) and resumed each time ends with the same weights and rows."""
    flags = [
        "--model",
        "lm_resnet20",
        "--subset",
        "128",
        "--batch-size",
        "64",
        "--epochs",
        "3",
        "--eval-subset",
        "100",
        "--refine-at",
        "1",
        "2",
        "--data-dir",
        str(CIFAR_ROOT),
        "--no-download",
        "--no-tensorboard",
    ]
    assert main(["train", *flags, "--out", str(tmp_path / "ref")]) == 0  # the command line a user types
    ref = json.loads((tmp_path / "ref" / "result.json").read_text())
    got = rows(tmp_path / "ref")
    counts = [
        sum(p.numel() for p in odearch.create_model(n).parameters())
        for n in ("lm_resnet20", "lm_resnet32", "lm_resnet56")
    ]
    assert [r["mesh_level"] for r in got] == [0, 1, 2] and [r["params"] for r in got] == counts
    assert [len(r["lm_k"]["stages.0"]) for r in got] == [2, 4, 8]
    assert ref["refine_at"] == [1, 2] and ref["params"] == counts[-1]
    final, meta = load_weights(tmp_path / "ref" / "checkpoints" / "last.safetensors")
    assert meta["mesh_level"] == 2 and set(final) == set(odearch.create_model("lm_resnet56").state_dict())
    assert main(["eval", str(tmp_path / "ref"), "--subset", "100", "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["test_acc"] == got[-1]["test_acc"]
    with pytest.raises(ShipError, match="multi-level run"):
        ship_run(tmp_path / "ref", registry=tmp_path / "w" / "registry.json", any_recipe=True, test_subset=100)

    cfg = TrainConfig.from_dict({**BASE, "out": str(tmp_path / "cut"), "max_minutes": 1e-5})
    result, sessions = fit(cfg), 1
    while result["status"] == "stopped":
        result, sessions = fit(cfg, resume=True), sessions + 1
    assert sessions == 6  # 2 steps an epoch, 3 epochs, one step a session
    assert result["config_hash"] == ref["config_hash"]  # the same run as the one the flags made
    cut, _ = load_weights(tmp_path / "cut" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(final[k], cut[k]) for k in final)
    drop = ("seconds", "images_per_s", "git_dirty", "peak_rss_mib")  # timings and memory vary by run
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows(tmp_path / "cut")] == [
        {k: v for k, v in r.items() if k not in drop} for r in got
    ]
