"""ImageNet training path and distributed training on CPU (gloo): 2 ranks vs 1, resume across process counts.

Data: a synthetic ImageFolder (4 classes x 8 images of 40 x 40 per split, pixel noise std 40: nearly flat images
make the gradients of a ReLU network sensitive to rounding), 32 x 32 crops, ``resnet20`` with 4 classes on the
ImageNet data path (the pipeline is what is under test; resnet50 at this size would only be slower), global batch
8, so an epoch is 4 steps. Every run uses ``--no-augment`` (training images get the deterministic evaluation
transform: random crops are drawn per rank, so 1 and 2 ranks would crop differently) and ``--sync-bn`` (BatchNorm
statistics of the global batch, :class:`odearch.train.distributed.AllReduceBatchNorm2d` on CPU; a no-op in one
process). Then 1 and 2 processes compute the same function: a global batch holds the same 8 images on any number of
ranks, DDP averages the gradients of the two half-batch losses into the gradient of the global batch's mean loss.
They differ by float32 rounding only, but these tiny networks at initialisation are very sensitive to it (a 1e-7
relative change of the weights moves the gradient by ~1e-3): measured gaps ||w_1 - w_2|| / ||w_1 - w_0|| are 0.02-0.3%
after 4 steps and ~2% after 8, against 44% for the same 2-rank run without --sync-bn. Hence the 5% tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import odearch
from conftest import weights
from datapaths import REPO
from odearch.cli import main
from odearch.data import make_imagenet_loader, make_synthetic_imagefolder
from odearch.train import ConfigError, RunDir, TrainConfig, fit, load_state, load_weights
from odearch.train.distributed import torchrun_command, without_option

ROOT = REPO
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
RUN_FILES = [
    "checkpoints/best.safetensors",
    "checkpoints/last.safetensors",
    "checkpoints/last.state.pt",
    "config.yaml",
    "metrics.jsonl",
    "result.json",
]
pytestmark = pytest.mark.usefixtures("one_thread")


def args(data: Path, *extra: str) -> list[str]:
    return [
        "--dataset",
        "imagenet",
        "--data-dir",
        str(data),
        "--model",
        "resnet20",
        "--num-classes",
        "4",
        "--crop-size",
        "32",
        "--resize-size",
        "36",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-augment",
        "--sync-bn",
        "--lr",
        "0.005",
        "--no-tensorboard",
        "--log-every",
        "0",
        *extra,
    ]


def torchrun(*cli_args: str) -> None:
    r = subprocess.run(torchrun_command(2, cli_args), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def update_gap(a: Path, b: Path) -> float:
    """||w_a - w_b|| / ||w_a - w_0|| over the trained parameters (w_0: the shared initialisation)."""
    torch.manual_seed(0)
    init = odearch.create_model("resnet20", num_classes=4).state_dict()
    wa, wb = weights(a), weights(b)
    keys = [k for k in init if init[k].is_floating_point() and "running" not in k]
    ua = torch.cat([(wa[k] - init[k]).flatten() for k in keys])
    ub = torch.cat([(wb[k] - init[k]).flatten() for k in keys])
    return float((ua - ub).norm() / ua.norm())


def files(run: Path) -> list[str]:
    """The run's files by their stable names (the checkpoint generation they lead to is not listed twice)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "/gen-" not in str(p))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One epoch in 1 process (the CLI, in this process) and in 2 (``odearch train --nproc 2``, so torchrun)."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_synthetic_imagefolder(tmp / "data", classes=4, per_class=8, size=40, noise=40)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PYTHONPATH", str(ROOT / "src"))  # for the torchrun children
            assert main(["train", *args(data, "--epochs", "1", "--out", str(tmp / "one"))]) == 0
            assert (
                main(
                    ["train", "--nproc", "2", *args(data, "--epochs", "1", "--tensorboard"), "--out", str(tmp / "two")]
                )
                == 0
            )
        yield {"data": data, "tmp": tmp, "one": tmp / "one", "two": tmp / "two"}
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ one epoch, 1 and 2 ranks
@pytest.mark.slow
def test_imagenet_cli_run_writes_result_and_metrics(runs: dict[str, Path]) -> None:
    one = runs["one"]
    assert files(one) == RUN_FILES
    res = json.loads((one / "result.json").read_text())
    assert res["status"] == "complete" and res["dataset"] == "imagenet" and res["num_classes"] == 4
    assert (res["train_images"], res["test_images"], res["world_size"], res["step"]) == (32, 32, 1, 4)
    (row,) = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert row["epoch"] == 1 and 0 <= row["test_acc"] <= 1 and row["lr"] == 0.005
    cfg = RunDir(one).read_config()
    assert (cfg.crop_size, cfg.resize_size, cfg.workers, cfg.augment) == (32, 36, 0, False)
    assert cfg.milestones == (30, 60, 80) and cfg.epochs == 1


@pytest.mark.slow
def test_two_processes_with_sync_bn_match_one(runs: dict[str, Path]) -> None:
    one, two = runs["one"], runs["two"]
    res = json.loads((two / "result.json").read_text())
    assert res["world_size"] == 2 and res["train_images"] == 32 and res["test_images"] == 32  # each image once
    assert update_gap(one, two) < 0.05
    (r1,), (r2,) = ([json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (one, two))
    assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-3)
    assert r1["test_loss"] == pytest.approx(r2["test_loss"], rel=1e-2) and r1["test_acc"] == r2["test_acc"]


@pytest.mark.slow
def test_only_rank_zero_writes_and_checkpoints_hold_the_bare_model(runs: dict[str, Path]) -> None:
    two = runs["two"]
    assert [f for f in files(two) if not f.startswith("tb/")] == RUN_FILES  # no stray temp or per-rank files
    assert len(list((two / "tb").iterdir())) == 1  # one TensorBoard event file: rank 0's
    expected = set(odearch.create_model("resnet20", num_classes=4).state_dict())
    assert set(weights(two)) == expected  # no DDP "module." prefix, same names as BatchNorm2d
    assert set(load_weights(two / "checkpoints" / "best.safetensors")[0]) == expected


# --------------------------------------------------------------------------------- resume with another process count
@pytest.mark.slow
def test_resume_across_process_counts(runs: dict[str, Path]) -> None:
    """Epoch 2 after an epoch-boundary checkpoint: 1 -> 1 (reference), 2 -> 1 and 1 -> 2 processes agree."""
    tmp = runs["tmp"]
    for name, src in (("ref", "one"), ("two_to_one", "two"), ("one_to_two", "one")):
        shutil.copytree(runs[src], tmp / name)
    assert main(["train", "--resume", str(tmp / "ref"), "--epochs", "2"]) == 0
    assert main(["train", "--resume", str(tmp / "two_to_one"), "--epochs", "2"]) == 0
    torchrun("--resume", str(tmp / "one_to_two"), "--epochs", "2")
    for name in ("ref", "two_to_one", "one_to_two"):
        state = load_state(tmp / name / "checkpoints" / "last.state.pt")
        assert (state["epoch"], state["step"]) == (2, 8), name
        assert len((tmp / name / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp / "one_to_two" / "result.json").read_text())["world_size"] == 2
    assert update_gap(tmp / "ref", tmp / "two_to_one") < 0.05
    assert update_gap(tmp / "ref", tmp / "one_to_two") < 0.05


@pytest.mark.slow
def test_mid_epoch_stop_and_resume_on_imagenet_is_exact(runs: dict[str, Path]) -> None:
    """--max-minutes stops after the first batch; the resume skips it (unread) and ends bitwise where `one` ends
    (workers 0: nothing random is drawn outside the checkpointed RNG)."""
    cfg = RunDir(runs["one"]).read_config().replace(out=str(runs["tmp"] / "stopped"), max_minutes=1e-9)
    res = fit(cfg)
    assert res["status"] == "stopped"
    assert load_state(runs["tmp"] / "stopped" / "checkpoints" / "last.state.pt")["batch"] == 1
    res = fit(cfg.replace(max_minutes=None), resume=True)
    assert res["status"] == "complete" and res["step"] == 4
    a, b = weights(runs["one"]), weights(runs["tmp"] / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_iter_from_skips_batches_without_reading_them(runs: dict[str, Path]) -> None:
    loader = make_imagenet_loader(runs["data"], "train", batch_size=8, workers=0, crop=32, resize=36, augment=False)
    reads = []
    read = loader.dataset.loader
    loader.dataset.loader = lambda path: reads.append(path) or read(path)
    loader.set_epoch(3)
    full = list(loader)
    reads.clear()
    rest = list(loader.iter_from(2))
    assert len(reads) == 16 and len(rest) == 2 and len(loader) == 4  # only batches 2 and 3 were read
    assert all(torch.equal(x, fx) and torch.equal(y, fy) for (x, y), (fx, fy) in zip(rest, full[2:]))
    assert len(list(loader)) == 4  # the skip applies to one iteration only


# -------------------------------------------------------------------------------------------------------- errors
@pytest.mark.slow  # builds the module's distributed runs (its data set lives there)
def test_batch_not_divisible_by_world_size(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = runs["tmp"] / "never"
    assert main(["train", "--nproc", "3", *args(runs["data"], "--out", str(out))]) == 2  # 8 % 3: refused, no launch
    assert "batch_size 8 is the global batch and must split evenly over the 3 processes" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")  # as under torchrun: refused before joining a process group
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="use a multiple of 3"):
        fit(TrainConfig(model="resnet20", dataset="imagenet", data_dir=str(runs["data"]), batch_size=8, out=str(out)))
    assert main(["train", "--nproc", "2", *args(runs["data"], "--out", str(out))]) == 2  # no --nproc under torchrun
    assert "inside a torchrun launch" in capsys.readouterr().err
    assert not out.exists()


def test_without_option_and_torchrun_command() -> None:
    kept = without_option(["--nproc", "2", "--lr", "0.1", "--nproc=4", "--nprocs"], "--nproc")
    assert kept == ["--lr", "0.1", "--nprocs"]
    cmd = torchrun_command(4, ["--model", "resnet20"])
    assert cmd[0] == sys.executable and cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "odearch",
        "train",
        "--model",
        "resnet20",
    ]


def test_imagenet_config_defaults() -> None:
    cfg = TrainConfig(model="resnet50", dataset="imagenet")
    assert (cfg.epochs, cfg.milestones, cfg.num_classes) == (90, (30, 60, 80), 1000)
    assert (cfg.crop_size, cfg.resize_size) == (224, 256)
    assert (cfg.workers, cfg.decode, cfg.augment) == (None, "pil", True)
    with pytest.raises(ConfigError):
        TrainConfig(model="resnet50", dataset="imagenet", crop_size=0)


@pytest.mark.slow
def test_eval_of_an_imagenet_run_matches_its_last_epoch(runs: dict[str, Path], tmp_path: Path) -> None:
    """`odearch eval RUN` on an ImageNet run reads val/ with the run's crop: the accuracy of its last checkpoint
    is the test accuracy that training logged for the last epoch."""
    one = runs["one"]
    assert main(["eval", str(one), "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    out = json.loads((tmp_path / "e.json").read_text())
    (row,) = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert out["dataset"] == "imagenet" and out["test_images"] == 32
    assert out["test_acc"] == pytest.approx(row["test_acc"]) and len(out["per_class_acc"]) == 4
