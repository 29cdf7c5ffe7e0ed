"""Shipped weights: ``create_model(name, pretrained=True)``, ``odearch ship RUN``, the registry, the wheel.

Every shipped model is re-evaluated on the CIFAR-10 test set and must score its recorded count exactly. The whole
mechanism is also tested end to end on a tiny run trained here and shipped into a registry in a temp folder.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import odearch
from conftest import needs_cifar
from datapaths import CIFAR_ROOT, HAS_CIFAR, REPO, SKIP_REASON
from odearch.analysis.command import resolve_checkpoint
from odearch.cli import main
from odearch.models import _pretrained
from odearch.models._pretrained import PretrainedError, read_registry
from odearch.packing import unpack_weights
from odearch.train import RunDir, TrainConfig, fit, load_weights
from odearch.train.ship import ShipError, evaluate_weights, prune_checkpoints, ship_run

SHIPPED = list(read_registry())


@needs_cifar
@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED or [pytest.param(None, marks=pytest.mark.skip(reason="no weights shipped"))])
def test_shipped_weights_score_their_recorded_accuracy(name: str) -> None:
    entry = read_registry()[name]
    model = odearch.create_model(name, pretrained=True)
    correct, n = evaluate_weights(model, entry["dataset"], CIFAR_ROOT)
    assert (correct, n) == (entry["test_correct"], entry["test_images"]) and n == 10000
    assert entry["test_acc"] == correct / n and not entry.get("not_the_paper_recipe")


def test_registry_pins_every_shipped_file() -> None:
    """Every weights file in the package folder has a registry entry, and every entry's file matches its sha256
    (an unlisted or replaced file fails, even while the registry is empty)."""
    folder = _pretrained.REGISTRY_FILE.parent
    listed = {entry["file"] for entry in read_registry().values()}
    assert {p.name for p in folder.glob("*.safetensors*")} <= listed
    for entry in read_registry().values():
        assert _pretrained.file_sha256(_pretrained.REGISTRY_FILE.parent / entry["file"]) == entry["sha256"]
        assert {"dataset", "recipe", "test_acc", "commits"} <= set(entry)


# ---------------------------------------------------------------------------------------- end to end, tiny run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet20, 1 epoch on 256 training images: a finished (if useless) run."""
    if not HAS_CIFAR:
        pytest.skip(SKIP_REASON)
    out = tmp_path_factory.mktemp("ship") / "resnet20_tiny"
    fit(
        TrainConfig(
            model="resnet20",
            epochs=1,
            subset=256,
            eval_subset=200,
            batch_size=64,
            data_dir=str(CIFAR_ROOT),
            download=False,
            device="cpu",
            amp="off",
            tensorboard=False,
            out=str(out),
        ),
        progress_bar=False,
    )
    return out


@pytest.fixture()
def registry(tmp_path: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """The tiny run shipped into a registry in a temp folder, which the package then reads."""
    reg = tmp_path / "weights" / "registry.json"
    monkeypatch.setattr(_pretrained, "REGISTRY_FILE", reg)
    name, entry = ship_run(tiny_run, registry=reg, any_recipe=True, test_subset=500)
    assert name == "resnet20.cifar10_s0"
    return reg, entry


def test_pretrained_loads_the_run_final_weights(registry: tuple[Path, dict], tiny_run: Path) -> None:
    _, entry = registry
    final = load_file(tiny_run / "checkpoints" / "last.safetensors")
    for name in ("resnet20", "resnet20.cifar10_s0"):
        model = odearch.create_model(name, pretrained=True)
        assert model.pretrained_cfg["name"] == "resnet20.cifar10_s0"
        assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())
    assert evaluate_weights(model, "cifar10", CIFAR_ROOT, 500) == (entry["test_correct"], 500)
    assert entry["test_images"] == 500 and entry["not_the_paper_recipe"]
    assert entry["recipe"]["epochs"] == 1 and entry["dataset"] == "cifar10" and entry["commits"]
    assert not odearch.create_model("resnet20").state_dict()["head.2.weight"].equal(final["head.2.weight"])


def test_pretrained_with_a_new_head_loads_all_but_the_classifier(registry: tuple[Path, dict], tiny_run: Path) -> None:
    final = load_file(tiny_run / "checkpoints" / "last.safetensors")
    model = odearch.create_model("resnet20", pretrained=True, num_classes=100)
    own = model.state_dict()
    assert own["head.2.weight"].shape == (100, 64)
    assert all(torch.equal(own[k], v) for k, v in final.items() if not k.startswith("head.2."))


def test_sha256_mismatch_is_refused(registry: tuple[Path, dict]) -> None:
    reg, entry = registry
    path = reg.parent / entry["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match=r"sha256 mismatch for 'resnet20\.cifar10_s0'"):
        odearch.create_model("resnet20", pretrained=True)
    path.unlink()
    with pytest.raises(PretrainedError, match="missing"):
        odearch.create_model("resnet20", pretrained=True)


def test_pretrained_without_weights_lists_the_models_that_have_them(registry: tuple[Path, dict]) -> None:
    with pytest.raises(
        ValueError,
        match=r"no pretrained weights for 'lm_resnet20'; models with weights: "
        r"resnet20\.cifar10_s0$",
    ):
        odearch.create_model("lm_resnet20", pretrained=True)
    with pytest.raises(ValueError, match=r"no pretrained weights for 'resnet20\.other'"):
        odearch.create_model("resnet20.other", pretrained=True)
    assert odearch.list_pretrained() == ["resnet20.cifar10_s0"] and odearch.list_pretrained("lm_*") == []


def test_eval_and_analyze_take_a_shipped_weights_name(
    registry: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``odearch eval NAME`` evaluates shipped weights as their file would be; a tag that does not exist, a model
    without weights and a damaged file each fail with a message naming what there is."""
    reg, entry = registry
    out = tmp_path / "e.json"
    flags = ["--data-dir", str(CIFAR_ROOT), "--subset", "300", "--json", str(out)]
    assert main(["eval", str(reg.parent / entry["file"]), *flags]) == 0
    by_file = json.loads(out.read_text())
    monkeypatch.chdir(tmp_path)  # relative names: nothing of the kind here
    for name in ("resnet20.cifar10_s0", "resnet20"):
        out.unlink()
        assert main(["eval", name, *flags]) == 0
        assert json.loads(out.read_text()) == by_file
    assert resolve_checkpoint(Path("resnet20")) == (reg.parent / entry["file"], None)  # odearch analyze NAME
    capsys.readouterr()
    assert main(["eval", "resnet20.other", *flags]) == 1
    err = capsys.readouterr().err
    assert "no pretrained weights for 'resnet20.other'; models with weights: resnet20.cifar10_s0" in err
    assert main(["eval", "lm_resnet20", *flags]) == 1
    assert "nor the name of shipped weights (resnet20.cifar10_s0)" in capsys.readouterr().err
    assert main(["analyze", "lm_resnet20"]) == 2
    assert "nor the name of shipped weights: lm_resnet20" in capsys.readouterr().err
    (reg.parent / entry["file"]).write_bytes(b"damaged")
    assert main(["eval", "resnet20", *flags]) == 1 and "sha256 mismatch" in capsys.readouterr().err
    assert main(["analyze", "resnet20"]) == 2 and "sha256 mismatch" in capsys.readouterr().err


@pytest.mark.skipif("lm_resnet20.cifar10_s0" not in SHIPPED, reason="lm_resnet20 weights not shipped")
def test_analyze_a_shipped_lm_net_by_name_writes_beside_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "lm_resnet20.cifar10_s0"]) == 0
    with open(tmp_path / "analysis" / "lm_resnet20.cifar10_s0" / "lm_table.csv") as f:
        rows = list(csv.DictReader(f))
    weights = load_weights(_pretrained.pretrained_file("lm_resnet20.cifar10_s0"))[0]
    k = [float(v) for stage in ("stages.0", "stages.1", "stages.2") for v in weights[f"{stage}.lm_k"].flatten()]
    assert len(k) == 6 and [float(r["k"]) for r in rows] == pytest.approx(k, rel=1e-7)
    assert {r["run"] for r in rows} == {"lm_resnet20.cifar10_s0"}
    assert not (_pretrained.REGISTRY_FILE.parent / "analysis").exists()


def test_empty_registry_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pretrained, "REGISTRY_FILE", tmp_path / "registry.json")
    with pytest.raises(ValueError, match="models with weights: none"):
        odearch.create_model("lm_resnet20", pretrained=True)


def test_models_command_marks_the_names_with_weights(
    registry: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--pattern", "*resnet20"]) == 0
    lines = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["resnet20"] == "cifar10_s0" and lines["lm_resnet20"] == "-"


def test_ship_refuses_unfinished_and_short_runs(tiny_run: Path, tmp_path: Path) -> None:
    reg = tmp_path / "registry.json"
    with pytest.raises(ShipError, match=r"not the paper's full recipe: 1 epochs .*; trained on part"):
        ship_run(tiny_run, registry=reg)
    stopped = tmp_path / "stopped"
    shutil.copytree(tiny_run, stopped)
    result = json.loads((stopped / "result.json").read_text())
    (stopped / "result.json").write_text(json.dumps({**result, "status": "stopped"}))
    with pytest.raises(ShipError, match="is not finished"):
        ship_run(stopped, registry=reg, any_recipe=True)
    (stopped / "result.json").unlink()
    with pytest.raises(ShipError, match=r"no result\.json"):
        ship_run(stopped, registry=reg, any_recipe=True)
    assert not reg.exists()


def test_ship_cli_refuses_a_second_entry_of_the_same_name(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "w" / "registry.json"
    args = ["ship", str(tiny_run), "--registry", str(reg), "--any-recipe", "--test-subset", "100", "--tag", "tiny"]
    assert main(args) == 0
    assert "shipped resnet20.tiny" in capsys.readouterr().out
    assert main(args) == 1 and "already in" in capsys.readouterr().err
    assert list(read_registry(reg)) == ["resnet20.tiny"] and (reg.parent / "resnet20.tiny.safetensors.xz").is_file()


@pytest.mark.slow
def test_wheel_carries_the_weights(tmp_path: Path) -> None:
    """pyproject's package-data puts the registry and every weights file into the wheel."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, tmp_path / f)
    (src / "odearch" / "weights" / "probe.cifar10_s0.safetensors").write_bytes(b"not really weights")
    (src / "odearch" / "weights" / "probe.cifar10_s0.safetensors.xz").write_bytes(b"not really packed weights")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(tmp_path),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("odearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "odearch/weights/registry.json" in names and "odearch/weights/probe.cifar10_s0.safetensors" in names
    assert "odearch/weights/probe.cifar10_s0.safetensors.xz" in names


def test_a_real_run_records_and_reports_its_device_and_commit(tiny_run: Path) -> None:
    """Each metrics row names the machine and the commit that trained it (runs span both); the report reads them."""
    from odearch.report import summarize

    result = json.loads((tiny_run / "result.json").read_text())
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["device_name"] == result["device_name"] and rows[0]["git_commit"] == result["git_commit"]
    s = summarize(tiny_run)
    assert s.devices == [result["device_name"]] and s.commits == [result["git_commit"]] and s.complete
    assert s.recipe_diff and s.params == result["params"] and s.precision == "fp32" and s.wall_exact


def test_prune_checkpoints_keeps_the_final_weights_reachable(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``odearch ship RUN --prune-checkpoints`` deletes the checkpoints only once the final weights ship byte for byte;
    ``odearch eval RUN`` then evaluates the shipped copy and gets the same numbers, and asks for the history for the
    best-epoch weights."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    reg = tmp_path / "weights" / "registry.json"
    monkeypatch.setattr(_pretrained, "REGISTRY_FILE", reg)
    final = (run / "checkpoints" / "last.safetensors").read_bytes()
    ev = ["eval", str(run), "--data-dir", str(CIFAR_ROOT), "--subset", "300", "--json", str(tmp_path / "e.json")]
    assert main(ev) == 0
    before = json.loads((tmp_path / "e.json").read_text())
    with pytest.raises(ShipError, match="ship the run before pruning"):
        prune_checkpoints(run, reg)
    assert (run / "checkpoints" / "last.safetensors").is_file()

    ship = [
        "ship",
        str(run),
        "--registry",
        str(reg),
        "--any-recipe",
        "--test-subset",
        "100",
        "--prune-checkpoints",
        "--force",
    ]  # a temp folder: no git history holds the checkpoints (tests/test_ship.py tests that refusal)
    assert main(ship) == 0
    out = capsys.readouterr().out
    assert "shipped resnet20.cifar10_s0" in out and "deleted" in out
    assert not (run / "checkpoints").exists()
    record = json.loads((run / "shipped.json").read_text())
    assert record["weights"] == "resnet20.cifar10_s0"
    assert "checkpoints/current/last.safetensors" not in record["deleted"]  # symlinks are not files of their own
    assert any(k.endswith("last.state.pt") for k in record["deleted"]) and len(record["deleted"]) >= 3
    assert unpack_weights((reg.parent / "resnet20.cifar10_s0.safetensors.xz").read_bytes()) == final
    assert RunDir(run).foreign() == []

    assert resolve_checkpoint(run) == (reg.parent / "resnet20.cifar10_s0.safetensors.xz", run)  # odearch analyze RUN
    assert main(ev) == 0
    after = json.loads((tmp_path / "e.json").read_text())
    assert "pruned after shipping" in capsys.readouterr().err
    assert {k: after[k] for k in ("test_acc", "test_loss", "per_class_acc", "epoch")} == {
        k: before[k] for k in ("test_acc", "test_loss", "per_class_acc", "epoch")
    }
    assert main([*ev[:2], "--checkpoint", "best", *ev[2:]]) == 1
    assert "git log" in capsys.readouterr().err
    assert main(ship) == 0 and "already shipped as resnet20.cifar10_s0 and pruned" in capsys.readouterr().out
    assert main(ship[:-2]) == 1 and "already shipped and pruned" in capsys.readouterr().err  # shipping again

    (reg.parent / "resnet20.cifar10_s0.safetensors.xz").write_bytes(final[:-4] + b"\0\0\0\0")  # a damaged shipped copy
    assert main(ev) == 1 and "differs" in capsys.readouterr().err


def test_prune_of_an_already_shipped_run_does_not_ship_again(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    reg = tmp_path / "w" / "registry.json"
    ship_run(run, registry=reg, any_recipe=True, test_subset=100, tag="tiny")
    assert main(["ship", str(run), "--registry", str(reg), "--prune-checkpoints", "--force"]) == 0  # no --any-recipe
    assert "already shipped as resnet20.tiny" in capsys.readouterr().out
    assert list(read_registry(reg)) == ["resnet20.tiny"] and not (run / "checkpoints").exists()
