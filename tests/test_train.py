"""Training library: schedule, config, checkpoints, the epoch and evaluation functions, `fit` on real CIFAR-10."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import odearch
from conftest import needs_cifar
from datapaths import CIFAR_ROOT, REPO
from odearch.train import (
    RECIPES,
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    RunDir,
    TrainConfig,
    TrainStep,
    evaluate,
    fit,
    load_state,
    load_weights,
    load_yaml,
    lr_at,
    save_state,
    save_weights,
    train_one_epoch,
)
from odearch.train.checkpoint import atomic_write, weights_into

ROOT = REPO
DATA = CIFAR_ROOT
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


# ------------------------------------------------------------------------------------------------------ lr_at
class TestLrAt:
    def test_paper_step_schedule(self) -> None:
        kw = {"base_lr": 0.1, "steps_per_epoch": 391, "epochs": 160, "milestones": (80, 120), "gamma": 0.1}
        assert lr_at(0, **kw) == 0.1
        assert lr_at(80 * 391 - 1, **kw) == 0.1  # last step of epoch 80 (1-based)
        assert lr_at(80 * 391, **kw) == pytest.approx(0.01)  # first step after 80 full epochs
        assert lr_at(120 * 391 - 1, **kw) == pytest.approx(0.01)
        assert lr_at(120 * 391, **kw) == pytest.approx(0.001)
        assert lr_at(160 * 391 - 1, **kw) == pytest.approx(0.001)

    def test_warmup_is_linear_per_step(self) -> None:
        kw = {"base_lr": 0.4, "steps_per_epoch": 10, "epochs": 5, "milestones": (3,), "warmup_epochs": 1.0}
        assert [lr_at(s, **kw) for s in range(3)] == pytest.approx([0.04, 0.08, 0.12])
        assert lr_at(9, **kw) == pytest.approx(0.4)
        assert lr_at(10, **kw) == pytest.approx(0.4)
        assert lr_at(30, **kw) == pytest.approx(0.04)

    def test_cosine_ends_at_zero_and_is_pure(self) -> None:
        kw = {"base_lr": 0.1, "steps_per_epoch": 100, "epochs": 10, "schedule": "cosine"}
        assert lr_at(0, **kw) == pytest.approx(0.1)
        assert lr_at(500, **kw) == pytest.approx(0.05)
        assert lr_at(1000, **kw) == pytest.approx(0.0, abs=1e-12)
        assert lr_at(250, **kw) == lr_at(250, **kw) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))

    def test_unknown_schedule_raises(self) -> None:
        with pytest.raises(ValueError, match="unknown schedule"):
            lr_at(0, base_lr=0.1, steps_per_epoch=1, epochs=1, schedule="linear")


# ----------------------------------------------------------------------------------------------------- config
class TestConfig:
    def test_paper_defaults_per_dataset(self) -> None:
        c10 = TrainConfig(model="lm_resnet20")
        assert (c10.epochs, c10.milestones, c10.num_classes) == (160, (80, 120), 10)
        assert (c10.lr, c10.momentum, c10.nesterov, c10.weight_decay, c10.batch_size) == (0.1, 0.9, False, 1e-4, 128)
        c100 = TrainConfig(model="lm_resnet164", dataset="cifar100")
        assert (c100.epochs, c100.milestones, c100.num_classes) == (300, (150, 225), 100)
        assert RECIPES["cifar100"] == (300, (150, 225))

    def test_data_dir_default_from_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ODEARCH_DATA", "/somewhere")
        assert TrainConfig(model="resnet20").data_dir == "/somewhere"
        monkeypatch.delenv("ODEARCH_DATA")
        assert TrainConfig(model="resnet20").data_dir == "data"

    def test_unknown_key_lists_close_match(self) -> None:
        with pytest.raises(ConfigError, match=r"unknown key.*'weight_decy'.*did you mean 'weight_decay'"):
            TrainConfig.from_dict({"model": "resnet20", "weight_decy": 1e-4}, source="x.yaml")

    def test_unknown_model_lists_close_matches(self) -> None:
        with pytest.raises(ConfigError, match=r"unknown model 'lm_resnet21'.*lm_resnet20"):
            TrainConfig(model="lm_resnet21")

    @pytest.mark.parametrize(
        "bad",
        [
            {"lr": "fast"},
            {"epochs": 2.5},
            {"batch_size": 0},
            {"amp": "fp8"},
            {"milestones": 80},
            {"nesterov": "yes"},
            {"select_on": "val"},
            {"model_kwargs": [1]},
        ],
    )
    def test_bad_values_raise_config_error(self, bad: dict) -> None:
        with pytest.raises(ConfigError):
            TrainConfig.from_dict({"model": "resnet20", **bad})

    def test_yaml_1_1_exponent_string_is_a_float(self, tmp_path: Path) -> None:
        (tmp_path / "c.yaml").write_text("model: resnet20\nweight_decay: 1e-4\n")  # PyYAML reads 1e-4 as a str
        assert TrainConfig.from_dict(load_yaml(tmp_path / "c.yaml")).weight_decay == 1e-4

    def test_round_trip_through_dict(self) -> None:
        cfg = TrainConfig(model="lm_resnet20", milestones=(2, 4), model_kwargs={"a": 1})
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg

    @pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
    def test_every_config_file_is_valid(self, path: Path) -> None:
        cfg = TrainConfig.from_dict(load_yaml(path), source=str(path))
        assert odearch.models.is_model(cfg.model)
        assert cfg.dataset == path.parent.name
        assert cfg.epochs == RECIPES[cfg.dataset][0] or cfg.model_kwargs.get("p_last")  # SD runs are 500 epochs
        if "resnext" in cfg.model:
            assert cfg.weight_decay == 5e-4

    def test_configs_cover_the_paper_rows(self) -> None:
        names = {f"{p.parent.name}/{p.stem}" for p in CONFIGS}
        for d in (20, 32, 44, 56, 110):
            assert {f"cifar10/resnet{d}", f"cifar10/preact_resnet{d}", f"cifar10/lm_resnet{d}"} <= names
        rest = {"cifar10/preact_resnet164", "cifar10/lm_resnet164", "cifar100/preact_resnet164"}
        assert rest | {"cifar100/lm_resnet164", "cifar100/resnext29_8x64d", "cifar100/lm_resnext29_8x64d"} <= names


# ------------------------------------------------------------------------------------------------ checkpoints
class TestCheckpoint:
    def test_atomic_write_replaces_and_leaves_no_temp(self, tmp_path: Path) -> None:
        atomic_write(tmp_path / "f", b"old")
        atomic_write(tmp_path / "f", b"new")
        assert (tmp_path / "f").read_bytes() == b"new"
        assert os.listdir(tmp_path) == ["f"]

    def test_weights_round_trip_channels_last(self, tmp_path: Path) -> None:
        model = odearch.create_model("lm_resnet20").to(memory_format=torch.channels_last)
        save_weights(tmp_path / "w.safetensors", model, {"model": "lm_resnet20", "step": 3})
        tensors, meta = load_weights(tmp_path / "w.safetensors")
        assert meta == {"model": "lm_resnet20", "step": 3}
        other = odearch.create_model("lm_resnet20")
        weights_into(other, tensors, meta, "w", "lm_resnet20")
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))

    def test_truncated_weights_raise_checkpoint_error(self, tmp_path: Path) -> None:
        save_weights(tmp_path / "w.safetensors", nn.Linear(4, 2), {"model": "x"})
        data = (tmp_path / "w.safetensors").read_bytes()
        (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_weights(tmp_path / "w.safetensors")

    def test_weights_of_another_model_name_it(self, tmp_path: Path) -> None:
        save_weights(tmp_path / "w.safetensors", odearch.create_model("resnet20"), {"model": "resnet20"})
        tensors, meta = load_weights(tmp_path / "w.safetensors")
        with pytest.raises(CheckpointError, match=r"saved from model 'resnet20'.*does not fit 'lm_resnet20'"):
            weights_into(odearch.create_model("lm_resnet20"), tensors, meta, "w", "lm_resnet20")

    def test_state_loads_weights_only_and_rejects_garbage(self, tmp_path: Path) -> None:
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
        from odearch.train.checkpoint import capture_rng

        save_state(tmp_path / "s.pt", {"step": 7, "optimizer": opt.state_dict(), "rng": capture_rng()})
        assert torch.load(tmp_path / "s.pt", weights_only=True)["step"] == 7
        assert load_state(tmp_path / "s.pt")["step"] == 7
        (tmp_path / "bad.pt").write_bytes(b"not a zip")
        with pytest.raises(CheckpointError, match="not a valid training-state file"):
            load_state(tmp_path / "bad.pt")


# --------------------------------------------------------------------------------------------- epoch and eval
def test_train_one_epoch_and_evaluate_return_dicts() -> None:
    torch.manual_seed(0)
    model = odearch.create_model("lm_resnet20", num_classes=3)
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))) for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lrs = []
    step = TrainStep(opt, lr_fn=lambda s: lrs.append(s) or 0.01 * (s + 1), autocast=contextlib.nullcontext)
    out = train_one_epoch(model, batches, step, step=5)
    assert (out["step"], out["batches"], out["n"], out["stopped"]) == (8, 3, 24, False)
    assert lrs == [5, 6, 7] and opt.param_groups[0]["lr"] == pytest.approx(0.08)
    assert isinstance(out["loss_sum"], torch.Tensor) and 0 <= int(out["correct"]) <= 24
    res = evaluate(model, batches, num_classes=3)
    assert set(res) == {"loss", "acc", "n", "per_class_acc", "per_class_n"} and res["n"] == 24
    assert sum(res["per_class_n"]) == 24 and not model.training


def test_a_train_step_override_is_the_one_place_to_change_the_update() -> None:
    """Gradient clipping as the one short override of `TrainStep.update` the docs show: `train_one_epoch` runs it on
    every batch of an iterator that starts where the epoch resumes, and the on_step hook can end the epoch."""
    torch.manual_seed(0)
    model = odearch.create_model("resnet20", num_classes=3)
    batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))) for _ in range(4)]
    norms: list[float] = []

    class ClippedStep(TrainStep):
        def update(self, loss: torch.Tensor) -> None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm=1e-3)))
            self.optimizer.step()

    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    out = train_one_epoch(
        model, iter(batches[1:]), ClippedStep(opt, lr_fn=lambda s: 1.0), step=1, on_step=lambda step, sums: step == 3
    )
    assert (out["step"], out["batches"], out["n"], out["stopped"]) == (3, 2, 8, True) and len(norms) == 2
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert norms[0] > 1e-3 and float(moved) <= 2 * 1e-3 + 1e-6  # two clipped steps of lr 1 move at most 2e-3


# ------------------------------------------------------------------------------------------------- fit (real data)
def _cfg(tmp_path: Path, **kw: object) -> TrainConfig:
    base = {
        "model": "resnet20",
        "subset": 128,
        "batch_size": 64,
        "epochs": 1,
        "eval_subset": 100,
        "data_dir": str(DATA),
        "download": False,
        "tensorboard": False,
        "out": str(tmp_path / "run"),
    }
    return TrainConfig.from_dict({**base, **kw})


@pytest.mark.slow
@needs_cifar
def test_fit_python_api_with_val_split(tmp_path: Path) -> None:
    result = fit(_cfg(tmp_path, model="lm_resnet20", val_split=300))
    assert result["status"] == "complete" and result["best_selected_on"] == "val" and result["best_note"] is None
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert {"val_loss", "val_acc", "test_loss", "test_acc"} <= set(row)
    assert set(row["lm_k"]) == {"stages.0", "stages.1", "stages.2"}


@pytest.mark.slow
@needs_cifar
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    # lr 1e6: epoch 1 ends with a huge but finite loss yet non-finite weights; epoch 2 overflows to NaN. A checkpoint
    # is "good" only if every saved tensor is finite (issue 15): none may hold NaN/inf.
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        fit(_cfg(tmp_path, lr=1e6, epochs=3, subset=256, log_every=1))
    run = tmp_path / "run"
    if (run / "checkpoints" / "last.safetensors").exists():
        assert all(torch.isfinite(v).all() for v in load_weights(run / "checkpoints" / "last.safetensors")[0].values())
    assert not (run / "result.json").exists()
    rows = RunDir(run).read_metrics()
    assert all(math.isfinite(r["train_loss"]) for r in rows) and len(rows) < 3


@pytest.mark.slow
@needs_cifar
def test_distributed_two_processes_match_one(tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks (gloo), global batch 64 = 2 x 32, against 1 process with batch 64.

    The comparison is loose: BatchNorm normalises each rank's 32 images on their own (no --sync-bn here),
    and at initialisation that alone changes the stem's gradient by ~90% (measured: per-half-batch BN vs full-batch
    BN on the same 64 images). So the test checks that the 2-rank run moves the weights the same way (cosine of the
    two updates), that both ranks' images are counted once, and that rank 0 alone wrote the run directory. The tight
    comparison, with --sync-bn, is in tests/test_distributed.py.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [
        "--model",
        "resnet20",
        "--subset",
        "256",
        "--batch-size",
        "64",
        "--epochs",
        "1",
        "--eval-subset",
        "100",
        "--data-dir",
        str(DATA),
        "--no-download",
        "--no-tensorboard",
        "--lr",
        "0.02",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    r = subprocess.run(
        [sys.executable, "-m", "odearch", "train", *args, "--out", str(one)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "odearch",
            "train",
            *args,
            "--out",
            str(two),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((two / "result.json").read_text())
    assert res["world_size"] == 2 and res["train_images"] == 256
    torch.manual_seed(0)
    init = odearch.create_model("resnet20").state_dict()
    w1, _ = load_weights(one / "checkpoints" / "last.safetensors")
    w2, _ = load_weights(two / "checkpoints" / "last.safetensors")
    convs = [k for k, v in init.items() if v.ndim == 4]
    u1 = torch.cat([(w1[k] - init[k]).flatten() for k in convs])
    u2 = torch.cat([(w2[k] - init[k]).flatten() for k in convs])
    assert torch.nn.functional.cosine_similarity(u1, u2, dim=0) > 0.5
    assert w1.keys() == w2.keys()
    rows = (two / "metrics.jsonl").read_text().splitlines()
    names = sorted(p.name for p in (two / "checkpoints").iterdir())  # one generation behind the stable names
    assert (
        len(rows) == 1
        and [n for n in names if not n.startswith("gen-")]
        == ["best.safetensors", "current", "last.safetensors", "last.state.pt"]
        and sum(n.startswith("gen-") for n in names) == 1
    )
