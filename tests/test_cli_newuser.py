"""The command line as a new user meets it (issue 33): fast help, quiet eval, plain final lines, schedule warnings,
config.yaml without keys that do not apply, one-line errors that say where, aligned tables, readable plots."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import error_line, needs_cifar
from datapaths import CIFAR_ROOT, REPO
from odearch.cli import _models_text, main
from odearch.train import RunDir, TrainConfig, config_hash
from odearch.train.console import Eta, outcome, progress_hook
from odearch.train.distributed import DistEnv
from odearch.train.rundir import config_record
from odearch.train.schedule import late_milestones


# ------------------------------------------------------------------------------------------------ 1: fast help
def test_help_and_import_load_no_torch() -> None:
    """``odearch --help`` (and ``models --help``, ``--version``, ``import odearch``) answer without importing torch:
    a fraction of a second instead of seconds."""
    code = (
        "import sys, contextlib, io, odearch, odearch.cli\n"
        "for argv in (['--help'], ['models', '--help'], ['--version']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        assert odearch.cli.main(argv) == 0, argv\n"
        "    assert 'usage: odearch' in out.getvalue() or 'odearch 0' in out.getvalue(), argv\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'odearch.train', 'odearch.models') if m in sys.modules))"
    )
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_lazy_names_still_import() -> None:
    import odearch

    assert callable(odearch.create_model) and odearch.data.CIFAR10_CLASSES[0] == "airplane"
    with pytest.raises(AttributeError, match="no_such_name"):
        odearch.no_such_name  # noqa: B018


# ------------------------------------------------------------------------------------------------------ 2: eval
@needs_cifar
def test_eval_prints_a_rounded_table_and_json_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--data-dir", str(CIFAR_ROOT), "--subset", "100", "--no-download"]
    assert main(["eval", "lm_resnet20.cifar10_s0", *flags]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "accuracy" in out and "airplane" in out  # a checkpoint by name: no JSON unless asked
    assert max(len(decimals) for decimals in re.findall(r"\d\.(\d+)", out)) <= 4  # rounded: 0.7832, 91.00%
    assert main(["eval", "lm_resnet20.cifar10_s0", *flags, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)  # stdout is the JSON alone; the table went to stderr
    assert res["test_images"] == 100 and "accuracy" in err
    assert res["test_error_pct"] == round(100 * (1 - res["test_acc"]), 10)


# ----------------------------------------------------------------------------------- 3: progress after a resume
def test_progress_rate_counts_only_this_process_steps(capsys: pytest.CaptureFixture[str]) -> None:
    """Resumed at step 100 of 200 with 6400 images already in the epoch's sums: 10 more steps of 64 images in 2 s
    are 320 img/s (not 3520), and the ETA comes from the same rate."""
    import time

    import torch

    t0 = time.perf_counter() - 2.0
    hook = progress_hook(None, 10, 0, t0, DistEnv(), Eta(100, 200, 1), start_n=6400)
    hook(110, {"loss_sum": torch.tensor(7040.0), "correct": torch.tensor(704.0), "n": 7040})
    line = capsys.readouterr().out
    rate = float(line.split(" img/s")[0].split()[-1])
    assert 300 < rate < 330, line
    assert "epoch 1 step 110/200" in line and "run ETA 0:00:18" in line


# --------------------------------------------------------------------------------------- 4: the run's last line
def test_outcome_of_a_run_stopped_before_any_evaluation() -> None:
    none = {"final_test_acc": None, "best_acc": None, "best_epoch": None}
    assert outcome(none, "test") == "stopped before the first evaluation: no accuracy yet"
    done = {"final_test_acc": 0.9, "best_acc": 0.91, "best_epoch": 3}
    assert outcome(done, "val") == "final test acc  90.00%, best  91.00% (val, epoch 3)"
    assert "n/a" not in outcome(none, "test") + outcome(done, "test")


# ------------------------------------------------------------------------------- 5: --epochs below the milestones
def test_a_shortened_recipe_warns_that_the_lr_never_drops() -> None:
    note = late_milestones(TrainConfig(model="resnet20", epochs=4))
    assert note is not None and "80 120" in note and "stays 0.1 throughout" in note and "--milestones 2 3" in note
    note = late_milestones(TrainConfig(model="resnet20", epochs=100))
    assert note is not None and "milestones 120 " in note and "does not drop there" in note
    assert late_milestones(TrainConfig(model="resnet20")) is None  # the recipe itself
    assert late_milestones(TrainConfig(model="resnet20", epochs=4, milestones=(2, 3))) is None
    assert late_milestones(TrainConfig(model="resnet20", epochs=4, schedule="cosine")) is None
    assert "more --epochs" in (late_milestones(TrainConfig(model="resnet20", epochs=1)) or "")


# ------------------------------------------------------------------------ 6: config.yaml records what applies
@pytest.mark.slow
def test_config_yaml_of_a_cifar_run_has_no_imagenet_keys_and_the_same_hash(tmp_path: Path) -> None:
    imagenet_only = {"crop_size", "resize_size", "workers", "decode"}
    cfg = TrainConfig(model="resnet20", epochs=2, out=str(tmp_path / "r"))
    run = RunDir(tmp_path / "r")
    run.root.mkdir()
    run.write_config(cfg)
    assert not imagenet_only & set(yaml.safe_load(run.config.read_text()))
    back = run.read_config()
    assert back == cfg and config_hash(back) == config_hash(cfg)
    old = tmp_path / "old"  # a run directory written before: every key listed
    old.mkdir()
    (old / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert config_hash(RunDir(old).read_config()) == config_hash(cfg)
    assert imagenet_only <= set(config_record(TrainConfig(model="resnet50", dataset="imagenet")))
    for rec in sorted(REPO.glob("results/*/*/config.yaml")):  # the committed runs: rewritten, the same config
        copy = tmp_path / "copies" / rec.parent.name
        copy.mkdir(parents=True)
        (copy / "config.yaml").write_text(rec.read_text())
        before = RunDir(copy).read_config()
        RunDir(copy).write_config(before)  # as a resume does
        assert RunDir(copy).read_config() == before and config_hash(RunDir(copy).read_config()) == config_hash(before)
    assert config_record(cfg.replace(crop_size=32))["crop_size"] == 32  # a value set on purpose stays on record


# ------------------------------------------------------------------------------------------- 7: errors, tables
def test_yaml_error_names_file_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text("model: resnet20\nlr: [0.1\nepochs: 2\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    line = error_line(capsys)
    assert f"{tmp_path / 'c.yaml'}:3:7: invalid YAML" in line and "expected ',' or ']'" in line


@needs_cifar
def test_too_large_val_split_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "train",
            "--model",
            "resnet20",
            "--val-split",
            "60000",
            "--data-dir",
            str(CIFAR_ROOT),
            "--no-download",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 2
    assert "--val-split 60000 leaves none of the 50000 training images" in error_line(capsys)


def test_models_pattern_matching_nothing_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--pattern", "foo*"]) == 2
    assert "no model matches --pattern 'foo*'" in error_line(capsys)


def test_models_table_columns_fit_the_longest_name() -> None:
    rows = [
        {
            "name": "lm_shake_resnet26_2x96d_long",
            "params": 26.2e6,
            "classes": 10,
            "family": "shake_resnet",
            "scheme": "lm",
            "pretrained": [],
        },
        {
            "name": "resnet20",
            "params": 269722,
            "classes": 10,
            "family": "cifar_resnet",
            "scheme": "euler",
            "pretrained": ["cifar10_s0"],
        },
    ]
    lines = _models_text(rows).splitlines()
    end = lines[0].index("params (M)") + len("params (M)")  # numbers right-aligned under their header
    assert lines[1].index("26.200") + len("26.200") == lines[2].index("0.270") + len("0.270") == end
    assert lines[1].rindex("shake_resnet") == lines[2].index("cifar_resnet") == lines[0].index("family")
    assert lines[1].index(" -") + 1 == lines[2].index("cifar10_s0") == lines[0].index("pretrained weights")


def test_lm_table_explains_its_columns() -> None:
    from odearch.analysis import format_table, lm_table

    text = format_table(lm_table({"stages.0": [[-0.1, -0.2], [0.0, 0.1]]}))
    assert "C = " in text.splitlines()[-1] and "channels" in text.splitlines()[-1]


def test_analyze_says_which_checkpoint_it_read(tmp_path: Path) -> None:
    from odearch.analysis.command import RunSource, _header

    best = RunSource("r", tmp_path / "r" / "checkpoints" / "best.safetensors", tmp_path / "r", {}, None, "lm_resnet20")
    bare = RunSource("w", tmp_path / "w.safetensors", None, {}, None, None)
    lines = _header([best, bare])
    assert "best epoch's weights" in lines[0] and "odearch eval RUN reads last.safetensors" in lines[0]
    assert lines[1] == f"run w: {tmp_path / 'w.safetensors'}"


def test_k_vs_depth_legend_hides_no_point_and_the_y_axis_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from odearch.analysis import plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or Path(path))
    k = {f"stages.{s}": [-0.05 - 0.01 * i + 0.02 * s for i in range(8)] for s in range(3)}
    plots.plot_k_vs_depth({"a": k}, tmp_path / "k.png")
    ax = figs[0].axes[0]
    low, high = ax.get_ylim()
    ks = [v for ks in k.values() for v in ks]
    assert low <= min(ks) and max(ks) <= high and low > -0.5  # the data fills the axis, not the k = -1 line
    renderer = FigureCanvasAgg(figs[0]).get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # right of the axes: over no point
