"""Peak memory in every run's records and the allocator policy that follows the memory mode (issue 37)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_cifar
from datapaths import CIFAR_ROOT
from odearch.train import TrainConfig, fit
from odearch.train.allocator import allocator_state, keep_freed_memory, policy_for
from odearch.train.console import epoch_line


@pytest.mark.parametrize(
    ("option", "mode", "policy"),
    [
        ("auto", "store", "keep"),
        ("auto", "mixed", "keep"),
        ("auto", "recompute", "return"),
        ("auto", "reversible", "return"),
        ("keep", "reversible", "keep"),
        ("return", "store", "return"),
    ],
)
def test_the_policy_follows_the_memory_mode_unless_chosen(option: str, mode: str, policy: str) -> None:
    assert policy_for(option, mode) == policy


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="allocator must be one of"):
        policy_for("lots", "store")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_the_peak_window_resets() -> None:
    """A 256 MiB tensor allocated and freed inside a window shows in its peak, and not in the next window's (in a
    fresh process: a long-lived one may serve the tensor from memory it already holds)."""
    code = """
import json, torch
from odearch.train.peakmem import PeakMemory
peak = PeakMemory(torch.device("cpu"))
peak.reset()
big = torch.ones(64 * 2**20)
del big
first = peak.read()
peak.reset()
print(json.dumps([first, peak.read()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = json.loads(out.stdout.strip().splitlines()[-1])
    assert first["peak_rss_since"] == "epoch" and first["peak_rss_mib"] - second["peak_rss_mib"] > 200, (first, second)


def test_the_epoch_line_shows_the_peak() -> None:
    row = {"epoch": 1, "seconds": 2.0, "train_loss": 1.0, "train_acc": 0.5, "lr": 0.1, "images_per_s": 100.0}
    assert "peak 412 MiB" in epoch_line(row | {"peak_rss_mib": 412.3}, 3)
    assert "peak 80 MiB GPU" in epoch_line(row | {"peak_rss_mib": 900.0, "cuda_peak_allocated_mib": 80.0}, 3)


@pytest.mark.slow
@needs_cifar
@pytest.mark.parametrize(("model", "state"), [("resnet20", "glibc-keep-freed"), ("rev_resnet20", "glibc-return-freed")])
def test_every_run_records_its_peak_memory_and_its_allocator(model: str, state: str, tmp_path: Path) -> None:
    """Each metrics row holds the epoch's peak RSS, result.json the run's; a reversible model (rev_resnet20 trains
    reversibly by default) runs with freed memory returned, a stored one keeps it."""
    cfg = TrainConfig(
        model=model,
        subset=128,
        batch_size=64,
        epochs=2,
        eval_subset=100,
        data_dir=str(CIFAR_ROOT),
        download=False,
        tensorboard=False,
        out=str(tmp_path / "run"),
    )
    try:
        result = fit(cfg)
        assert allocator_state() == state and result["cpu_allocator"] == state
    finally:
        keep_freed_memory()  # the rest of this test process keeps odearch's default
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["peak_rss_mib"] > 50 for r in rows)
    assert result["peak_rss_mib"] == max(r["peak_rss_mib"] for r in rows)


def test_the_progress_line_shows_the_peak(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a progress bar (a log file), each logged step's line ends with the process's peak memory."""
    from odearch.train.console import Eta, progress_hook
    from odearch.train.distributed import DistEnv

    hook = progress_hook(None, 1, 0, 0.0, DistEnv(), Eta(0, 10, 2))
    hook(1, {"loss_sum": torch.tensor(2.0), "correct": torch.tensor(1), "n": 4})
    line = capsys.readouterr().out.strip()
    assert line.startswith("epoch 1 step 1/10") and line.endswith(" MiB") and "peak " in line
