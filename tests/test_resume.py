"""Exact resumption on CPU: SIGKILL mid-epoch, and --max-minutes stops mid-epoch, both end bitwise equal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import needs_cifar
from datapaths import CIFAR_ROOT, REPO
from odearch.train import TrainConfig, fit, load_weights

ROOT = REPO
DATA = CIFAR_ROOT
pytestmark = needs_cifar
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
ARGS = [
    "--model",
    "resnet20",
    "--subset",
    "512",
    "--batch-size",
    "64",
    "--epochs",
    "3",
    "--eval-subset",
    "200",
    "--data-dir",
    str(DATA),
    "--no-download",
    "--no-tensorboard",
]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, _ = load_weights(a)
    wb, _ = load_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_exact(tmp_path: Path) -> None:
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    r = subprocess.run(
        [sys.executable, "-m", "odearch", "train", *ARGS, "--out", str(ref)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "odearch", "train", *ARGS, "--out", str(killed)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # metrics.jsonl gets its first row right after epoch 1's checkpoint: epoch 2 is then under way.
        deadline = time.monotonic() + 300
        while not (killed / "metrics.jsonl").is_file() or not (killed / "metrics.jsonl").read_text():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "epoch 1 never finished"
            time.sleep(0.01)
        assert (killed / "checkpoints" / "last.safetensors").is_file()
        time.sleep(0.3)  # well inside epoch 2 (an epoch of 8 steps takes over a second here)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(metric_rows(killed)) == 1, "the kill was meant to land in epoch 2"
    assert not (killed / "result.json").exists()

    r = subprocess.run(
        [sys.executable, "-m", "odearch", "train", "--resume", str(killed)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert_same_weights(ref / "checkpoints" / "last.safetensors", killed / "checkpoints" / "last.safetensors")
    drop = ("seconds", "images_per_s", "peak_rss_mib")
    strip = lambda rows: [{k: v for k, v in row.items() if k not in drop} for row in rows]  # noqa: E731
    assert strip(metric_rows(killed)) == strip(metric_rows(ref))
    assert json.loads((killed / "result.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_max_minutes_stops_mid_epoch_and_resumes_exactly(tmp_path: Path) -> None:
    """A budget far below one step stops every session after its first step, always mid-epoch but at the end."""
    base = {
        "model": "resnet20",
        "subset": 192,
        "batch_size": 64,
        "epochs": 2,
        "eval_subset": 100,
        "data_dir": str(DATA),
        "download": False,
        "tensorboard": False,
    }
    fit(TrainConfig.from_dict({**base, "out": str(tmp_path / "ref")}))
    cfg = TrainConfig.from_dict({**base, "out": str(tmp_path / "cut"), "max_minutes": 1e-5})
    result = fit(cfg)
    assert result["status"] == "stopped" and result["step"] == 1 and result["epochs_done"] == 0
    sessions = 1
    while result["status"] == "stopped":
        result = fit(cfg, resume=True)
        sessions += 1
        assert sessions <= 6
    assert sessions == 6  # 3 steps per epoch, 2 epochs, one step per session
    assert_same_weights(
        tmp_path / "ref" / "checkpoints" / "last.safetensors", tmp_path / "cut" / "checkpoints" / "last.safetensors"
    )
    ref, cut = metric_rows(tmp_path / "ref"), metric_rows(tmp_path / "cut")
    assert [(r["train_loss"], r["train_acc"], r["test_acc"]) for r in ref] == [
        (r["train_loss"], r["train_acc"], r["test_acc"]) for r in cut
    ]
