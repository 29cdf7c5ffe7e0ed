"""`odearch train` refuses options that cannot run with one line, exit 2, before it writes anything (issue 30, item
15): milestones that are not positive or not below the epochs, an eval subset larger than the test set, a learning
rate or weight decay the optimizer's float32 arithmetic overflows on, and a classifier smaller or larger than the
labels of a CIFAR data set.

The data are fake tensors in the shapes ``load_cifar`` returns (no files, no download), so that an option the old
code let through went on into training (where it failed with a traceback and left a half-created run directory).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import error_line
from odearch.cli import _config_from_args, build_parser, main
from odearch.data import splits
from odearch.train import ConfigError, TrainConfig


def _fake_cifar(
    root: object, dataset: str = "cifar10", train: bool = True, download: bool = True, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """128 training or 100 test images of ``dataset`` (uint8 CHW, labels over every class), all from a fixed seed."""
    n, classes = (128 if train else 100), (100 if dataset == "cifar100" else 10)
    g = torch.Generator().manual_seed(0 if train else 1)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return images, torch.arange(n) % classes


@pytest.fixture()
def train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``odearch train`` of one epoch on the fake data into ``tmp_path/run`` (the working directory: tmp_path)."""
    monkeypatch.setattr(splits, "load_cifar", _fake_cifar)
    monkeypatch.chdir(tmp_path)
    return [
        "train",
        "--model",
        "resnet20",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--amp",
        "off",
        "--data-dir",
        str(tmp_path / "data"),
        "--no-download",
        "--no-tensorboard",
        "--out",
        str(tmp_path / "run"),
    ]


REFUSED = {
    "lr 3.5e38": (["--lr", "3.5e38"], "lr (--lr) must be at most 3.403e+38"),
    "lr 1e300": (["--lr", "1e300"], "lr (--lr) must be at most 3.403e+38"),
    "weight decay 1e300": (["--weight-decay", "1e300"], "weight_decay (--weight-decay) must be at most 1"),
    "weight decay 2": (["--weight-decay", "2"], "weight_decay (--weight-decay) must be at most 1"),
    "5 classes on cifar10": (["--num-classes", "5"], "num_classes (--num-classes) must be 10 on cifar10"),
    "10 classes on cifar100": (
        ["--dataset", "cifar100", "--num-classes", "10"],
        "num_classes (--num-classes) must be 100 on cifar100",
    ),
    "milestone -5": (["--milestones", "-5"], "milestones (--milestones) must be increasing positive epochs"),
    "milestone 0": (["--milestones", "0", "1"], "milestones (--milestones) must be increasing positive epochs"),
    "milestone at the last epoch": (["--milestones", "1"], "--milestones 1 not below the 1 epochs"),
    "eval subset 10**12": (["--eval-subset", str(10**12)], f"--eval-subset {10**12} exceeds the 100 test images"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_refused_with_one_line_and_nothing_written(
    case: str, train: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, message = REFUSED[case]
    assert main([*train, *flags]) == 2
    assert message in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused run left files behind"


def test_a_refused_run_keeps_a_directory_that_was_there(
    train: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run").mkdir()  # refused at data-build time, after the run directory was locked
    assert main([*train, "--eval-subset", "101"]) == 2
    assert "--eval-subset 101 exceeds the 100 test images of cifar10; use at most 100" in error_line(capsys)
    assert (tmp_path / "run").is_dir() and not any((tmp_path / "run").iterdir())


def test_the_fake_data_train_when_nothing_is_wrong(train: list[str], tmp_path: Path) -> None:
    """The refusals above are the options', not the fake data's: the same command trains with sane values."""
    assert main([*train, "--eval-subset", "100", "--lr", "0.01", "--weight-decay", "1", "--milestones"]) == 0
    assert (tmp_path / "run" / "result.json").is_file()


def test_a_recipe_shortened_by_epochs_keeps_its_milestones(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("model: resnet20\nepochs: 160\nmilestones: [80, 120]\n")
    cfg, _ = _config_from_args(
        build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--epochs", "2"])
    )
    assert (cfg.epochs, cfg.milestones) == (2, (80, 120))  # a smoke run of the recipe: its lr never drops
    assert TrainConfig(model="resnet20", epochs=2).milestones == (80, 120)  # the defaults, likewise


@pytest.mark.parametrize(
    "values",
    [
        {"lr": 3.5e38},
        {"weight_decay": 1.5},
        {"num_classes": 5},
        {"milestones": [0]},
        {"dataset": "cifar100", "num_classes": 10},
    ],
)
def test_the_python_api_refuses_them_too(values: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TrainConfig.from_dict({"model": "resnet20", **values})
