"""``odearch train --compile`` (torch.compile, Inductor): the campaign trains its runs from seed 2 on compiled
(docs/campaign-plan.md, amendment of 2026-12-07), so a compiled run must resume bit for bit like an eager one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import needs_cifar
from datapaths import CIFAR_ROOT
from odearch.train import TrainConfig, config_hash, fit, load_weights

pytestmark = pytest.mark.usefixtures("one_thread")
needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="Inductor on CPU needs a C++ compiler"
)


@needs_cifar
@needs_compiler
@pytest.mark.slow
def test_a_compiled_bf16_lm_run_stopped_after_every_step_resumes_bitwise(tmp_path: Path) -> None:
    """lm_resnet20 (its LM step traced by the compiler), bf16 autocast: stopped after every step and resumed, the run
    ends with the uninterrupted run's weights and rows; the compile flag does not enter the config hash, and the
    compiled run's weights differ from the eager run's (the compiler did run)."""
    base = {
        "model": "lm_resnet20",
        "subset": 128,
        "batch_size": 64,
        "epochs": 2,
        "milestones": [1],
        "eval_subset": 100,
        "amp": "bf16",
        "compile": True,
        "data_dir": str(CIFAR_ROOT),
        "download": False,
        "tensorboard": False,
        "device": "cpu",
    }
    fit(TrainConfig.from_dict({**base, "out": str(tmp_path / "ref")}))
    cfg = TrainConfig.from_dict({**base, "out": str(tmp_path / "cut"), "max_minutes": 1e-5})
    result, sessions = fit(cfg), 1
    while result["status"] == "stopped":
        result, sessions = fit(cfg, resume=True), sessions + 1
    assert sessions == 4  # 2 steps an epoch, 2 epochs
    eager = TrainConfig.from_dict({**base, "compile": False, "out": str(tmp_path / "eager")})
    fit(eager)
    assert config_hash(eager) == config_hash(cfg)
    weights = {n: load_weights(tmp_path / n / "checkpoints" / "last.safetensors")[0] for n in ("ref", "cut", "eager")}
    assert all(torch.equal(weights["ref"][k], weights["cut"][k]) for k in weights["ref"])
    assert not all(torch.equal(weights["ref"][k], weights["eager"][k]) for k in weights["ref"])
    rows = {n: (tmp_path / n / "metrics.jsonl").read_text().splitlines() for n in ("ref", "cut")}
    keys = ("train_loss", "test_loss", "test_acc")
    assert [[json.loads(r)[k] for k in keys] for r in rows["cut"]] == [
        [json.loads(r)[k] for k in keys] for r in rows["ref"]
    ]
