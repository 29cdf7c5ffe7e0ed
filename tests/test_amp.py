"""Training precision: bf16 autocast on CPU, and the effective dtype recorded and kept across a resume (issue 19)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import needs_cifar
from datapaths import CIFAR_ROOT
from odearch.train import TrainConfig, fit
from odearch.train import state as state_mod
from odearch.train.checkpoint import load_state, save_state

pytestmark = needs_cifar


def _cfg(tmp_path: Path, **kw: object) -> TrainConfig:
    base = {
        "model": "lm_resnet20",
        "subset": 128,
        "batch_size": 64,
        "epochs": 1,
        "eval_subset": 100,
        "device": "cpu",
        "data_dir": str(CIFAR_ROOT),
        "download": False,
        "tensorboard": False,
        "out": str(tmp_path / "run"),
    }
    return TrainConfig.from_dict({**base, **kw})


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_bf16_on_cpu_trains_and_records_the_requested_and_effective_dtype(tmp_path: Path) -> None:
    seen: list[torch.dtype] = []
    fwd = torch.nn.Conv2d.forward

    def spy(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        out = fwd(self, x)
        if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):  # training and evaluation passes; not the
            seen.append(out.dtype)  # model's one float32 shape probe at construction (feature_info, pool_size)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Conv2d, "forward", spy)
        result = fit(_cfg(tmp_path, amp="bf16"))
    assert seen and set(seen) == {torch.bfloat16}  # the convolutions ran in bf16
    assert result["amp"] == "bf16" and result["amp_dtype"] == "bfloat16"
    assert _rows(tmp_path / "run")[0]["amp_dtype"] == "bfloat16"
    assert "amp: bf16" in (tmp_path / "run" / "config.yaml").read_text()
    assert load_state(tmp_path / "run" / "checkpoints" / "last.state.pt")["amp_dtype"] == "bfloat16"


@pytest.mark.slow
def test_resume_keeps_the_recorded_precision_when_auto_would_resolve_otherwise(tmp_path: Path) -> None:
    """A run started with amp auto on CPU trains in float32; were auto to mean bf16 later (another release, another
    machine), its resume still trains in float32, the dtype its checkpoint records."""
    cfg = _cfg(tmp_path, amp="auto")
    assert fit(cfg)["amp_dtype"] == "float32"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(state_mod, "amp_dtype", lambda amp, device: torch.bfloat16)  # a future `auto`
        result = fit(cfg.replace(epochs=2), resume=True)
    assert result["amp_dtype"] == "float32"
    assert [r["amp_dtype"] for r in _rows(tmp_path / "run")] == ["float32", "float32"]


@pytest.mark.slow
def test_resume_of_a_checkpoint_without_a_recorded_dtype_uses_todays_resolution(tmp_path: Path) -> None:
    """Checkpoints written before the dtype was recorded resume as they started: auto is float32 on CPU."""
    cfg = _cfg(tmp_path, amp="auto")
    fit(cfg)
    ckpt = tmp_path / "run" / "checkpoints"
    state = load_state(ckpt / "last.state.pt")
    del state["amp_dtype"]
    # such checkpoints predate the checksummed generations too: rewrite the run in that layout (plain files)
    weights = {n: (ckpt / n).read_bytes() for n in ("last.safetensors", "best.safetensors")}
    shutil.rmtree(ckpt)
    ckpt.mkdir()
    for name, data in weights.items():
        (ckpt / name).write_bytes(data)
    save_state(ckpt / "last.state.pt", state)
    assert fit(cfg.replace(epochs=2), resume=True)["amp_dtype"] == "float32"
