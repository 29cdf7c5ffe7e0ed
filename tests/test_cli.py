"""The `odearch` command line: a real 1-epoch run on CIFAR-10, eval, models, flag/YAML precedence, error paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import odearch
from conftest import error_line, needs_cifar
from datapaths import CIFAR_ROOT, REPO
from odearch.cli import _config_from_args, build_parser, main, model_table
from odearch.train import load_state, load_weights

ROOT = REPO
DATA = CIFAR_ROOT
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def odearch_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "odearch", *args], env=ENV, capture_output=True, text=True, timeout=600
    )


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes (to prove that nothing was written)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`odearch train --model resnet20 --subset 1000 --epochs 1` as a real subprocess."""
    if not (DATA / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 not found in {DATA}")
    out = tmp_path_factory.mktemp("cli") / "run"
    r = odearch_cli(
        "train",
        "--model",
        "resnet20",
        "--subset",
        "1000",
        "--epochs",
        "1",
        "--batch-size",
        "100",
        "--eval-subset",
        "500",
        "--data-dir",
        str(DATA),
        "--no-download",
        "--seed",
        "3",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "epoch   1/1" in r.stdout
    return out


# ------------------------------------------------------------------------------------------------ happy paths
@pytest.mark.slow
def test_train_writes_every_output(run_dir: Path) -> None:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"] == "resnet20" and cfg["dataset"] == "cifar10" and cfg["num_classes"] == 10
    assert cfg["model_kwargs"] == {} and cfg["subset"] == 1000 and cfg["seed"] == 3 and cfg["milestones"] == [80, 120]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s", "lm_k"):
        assert key in row, key
    assert row["epoch"] == 1 and row["lr"] == 0.1 and row["lm_k"] == {} and 0 <= row["test_acc"] <= 1
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    ckpt = run_dir / "checkpoints"
    for name in ("last.safetensors", "last.state.pt", "best.safetensors"):
        assert (ckpt / name).is_file(), name
    tensors, meta = load_weights(ckpt / "last.safetensors")
    assert meta["model"] == "resnet20" and meta["step"] == 10 and "stem.0.weight" in tensors
    state = load_state(ckpt / "last.state.pt")  # weights_only=True inside
    assert {"optimizer", "scheduler", "epoch", "step", "rng", "best", "config_hash", "model"} <= set(state)
    assert state["epoch"] == 1 and state["step"] == 10 and state["scheduler"]["step"] == 10
    assert {"torch", "cuda", "python"} <= set(state["rng"])
    res = json.loads((run_dir / "result.json").read_text())
    for key in (
        "command",
        "git_commit",
        "git_dirty",
        "torch_version",
        "device_name",
        "seed",
        "wall_seconds",
        "epochs",
        "final_test_acc",
        "final_test_error_pct",
        "best_acc",
        "best_epoch",
        "params",
        "model",
        "dataset",
        "metrics",
    ):
        assert key in res, key
    assert res["command"].startswith("odearch train --model resnet20") and res["status"] == "complete"
    assert res["params"] == 269722 and res["final_test_acc"] == row["test_acc"] and res["best_epoch"] == 1
    assert res["best_selected_on"] == "test" and "TEST" in res["best_note"]
    assert Path(res["metrics"]) == run_dir / "metrics.jsonl"
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.slow
def test_eval_run_dir_prints_and_writes_json(run_dir: Path) -> None:
    r = odearch_cli("eval", str(run_dir), "--subset", "300", "--data-dir", str(DATA))
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "airplane" in r.stdout
    out = json.loads((run_dir / "eval_last.json").read_text())
    assert out["test_images"] == 300 and set(out["per_class_acc"]) == set(odearch.data.CIFAR10_CLASSES)
    assert 0 <= out["test_acc"] <= 1 and out["model"] == "resnet20"


@pytest.mark.slow
def test_eval_bare_checkpoint_prints_json(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best = str(run_dir / "checkpoints" / "best.safetensors")
    assert main(["eval", best, "--subset", "100", "--data-dir", str(DATA)]) == 0
    assert "{" not in capsys.readouterr().out  # JSON only on request
    assert main(["eval", best, "--subset", "100", "--data-dir", str(DATA), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["test_images"] == 100


@pytest.mark.slow
def test_models_lists_every_model_with_params(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in odearch.list_models():
        assert f"\n{name} " in out, name
    rows = {r["name"]: r for r in model_table()}
    assert rows["resnet20"]["params"] == 269722 and rows["lm_resnet56"]["scheme"] == "lm"
    assert rows["lm_resnext29_8x64d"]["family"] == "resnext"
    assert main(["models", "--markdown", "--pattern", "lm_*"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| model |") and len(md) == 2 + len(odearch.list_models("lm_*"))
    assert rows["lm_resnet50"]["classes"] == 1000 and rows["lm_resnet56"]["classes"] == 10


# ------------------------------------------------------------------------------------- YAML + flag precedence
def test_yaml_sets_defaults_and_flags_override(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("model: lm_resnet56\nlr: 0.05\nepochs: 10\nmodel_kwargs: {a: 1, b: 2}\n")
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            str(tmp_path / "c.yaml"),
            "--epochs",
            "2",
            "--model-kw",
            "b=[3, 4]",
            "--p-last",
            "0.8",
            "--no-channels-last",
        ]
    )
    cfg, resume = _config_from_args(args)
    assert not resume
    assert (cfg.model, cfg.lr, cfg.epochs, cfg.channels_last) == ("lm_resnet56", 0.05, 2, False)
    assert cfg.model_kwargs == {"a": 1, "b": [3, 4], "p_last": 0.8}
    assert cfg.weight_decay == 1e-4 and cfg.milestones == (80, 120)  # neither YAML nor flag: the paper's default
    cfg, _ = _config_from_args(build_parser().parse_args(["train", "--model", "resnet20"]))
    assert cfg.model_kwargs == {} and cfg.nesterov is False  # unset flags never override


def test_every_config_field_has_a_flag() -> None:
    import dataclasses

    from odearch.train import TrainConfig

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()  # type: ignore[union-attr]
    for f in dataclasses.fields(TrainConfig):
        flag = "--model-kw" if f.name == "model_kwargs" else "--" + f.name.replace("_", "-")
        assert flag in help_text, flag


# ------------------------------------------------------------------------------------------------ error paths
def test_unknown_model_lists_close_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "lm_resnet21", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean" in error_line(capsys) and "lm_resnet20" in capsys.readouterr().err + "lm_resnet20"
    assert not (tmp_path / "r").exists()


def test_unknown_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "resnet20", "--weight-decy", "1"]) == 2
    assert "unrecognized arguments: --weight-decy" in error_line(capsys)


def test_unknown_yaml_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text("model: resnet20\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "unknown key(s) 'learning_rate'" in error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_model_rejecting_its_keywords(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "train",
            "--model",
            "resnet20",
            "--model-kw",
            "no_such_option=1",
            "--out",
            str(tmp_path / "r"),
            "--data-dir",
            str(tmp_path),
        ]
    )
    assert rc == 2 and "rejected its options" in error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_missing_data_without_download(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "train",
            "--model",
            "resnet20",
            "--data-dir",
            str(tmp_path / "nodata"),
            "--no-download",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 1 and "CIFAR-10 files missing" in error_line(capsys)
    assert not (tmp_path / "r").exists() and not (tmp_path / "nodata").exists()


@pytest.mark.slow
def test_existing_run_is_not_overwritten(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run_dir)
    assert main(["train", "--model", "resnet20", "--out", str(run_dir), "--data-dir", str(DATA)]) == 1
    assert "--resume" in error_line(capsys) and "--overwrite" in capsys.readouterr().err + "--overwrite"
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_resume_cannot_change_the_recipe(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run_dir)
    assert main(["train", "--resume", str(run_dir), "--lr", "0.5"]) == 2
    assert "cannot change --lr" in error_line(capsys)
    assert snapshot(run_dir) == before


@pytest.mark.slow
@needs_cifar
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_on_resume_and_eval(
    run_dir: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    w = run / "checkpoints" / "last.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x00" * 64)
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(DATA)]) == 1
    assert "not a valid safetensors checkpoint" in error_line(capsys)
    assert main(["eval", str(run), "--data-dir", str(DATA)]) == 1
    assert "not a valid safetensors checkpoint" in error_line(capsys)
    assert snapshot(run) == before


@pytest.mark.slow
@needs_cifar
def test_truncated_state_on_resume(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    s = run / "checkpoints" / "last.state.pt"
    s.write_bytes(s.read_bytes()[:100])
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(DATA)]) == 1
    assert "not a valid training-state file" in error_line(capsys)
    assert snapshot(run) == before


@pytest.mark.slow
@needs_cifar
def test_checkpoint_of_another_model(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from odearch.train import save_weights

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    save_weights(
        run / "checkpoints" / "last.safetensors",
        odearch.create_model("lm_resnet20"),
        {"model": "lm_resnet20", "num_classes": 10, "step": 10},
    )
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(DATA)]) == 1
    assert "saved from model 'lm_resnet20'" in error_line(capsys)
    assert main(["eval", str(run), "--data-dir", str(DATA)]) == 1
    line = error_line(capsys)
    assert "holds weights of model 'lm_resnet20'" in line and "is a run of 'resnet20'" in line
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------------------------ analyze
@pytest.mark.slow
def test_analyze_a_trained_lm_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`odearch train` an LM-ResNet-20 for 2 short epochs, then `odearch analyze` its run directory: the table's
    k_n are the checkpoint's `lm_k` tensors, and both plots (k against depth, k over the 2 epochs) are written."""
    import csv

    if not (DATA / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 not found in {DATA}")
    run = tmp_path / "lm"
    assert (
        main(
            [
                "train",
                "--model",
                "lm_resnet20",
                "--subset",
                "256",
                "--epochs",
                "2",
                "--batch-size",
                "64",
                "--eval-subset",
                "256",
                "--data-dir",
                str(DATA),
                "--no-download",
                "--no-tensorboard",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["analyze", str(run), "--out", str(tmp_path / "an")]) == 0
    assert "max|xi|" in capsys.readouterr().out
    for name in ("lm_table.csv", "lm_table.txt", "k_vs_depth.png", "k_over_epochs.png"):
        assert (tmp_path / "an" / name).stat().st_size > 0, name
    tensors, _ = load_weights(run / "checkpoints" / "best.safetensors")
    want = sorted(float(k) for key, t in tensors.items() if key.endswith(".lm_k") for k in t.flatten())
    with open(tmp_path / "an" / "lm_table.csv") as f:
        got = sorted(float(r["k"]) for r in csv.DictReader(f))
    assert len(want) == 3 * 2 and got == pytest.approx(want, abs=1e-6)  # 3 stages x (3 blocks - 1 transition)
    assert all(-0.2 < k < 0.1 for k in want) and len(set(want)) == len(want)  # read back, not a default


@pytest.mark.slow
def test_analyze_a_plain_model_is_one_error_line(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no LM coefficients" in err[0]
