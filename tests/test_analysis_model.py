"""The LM table, the plots and ``odearch analyze`` on fake run directories and on real LM-ResNets."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from odearch.analysis import (
    analyze_model,
    characteristic_roots,
    format_table,
    is_zero_stable,
    k_by_stage_from_state_dict,
    k_history,
    lm_table,
    plot_k_over_epochs,
    plot_k_vs_depth,
    read_lm_k,
    run_analyze,
    write_csv,
)
from odearch.analysis.command import add_analyze_arguments
from odearch.models import create_model
from odearch.nn import lm_coefficients

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def analyze(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="odearch analyze")
    add_analyze_arguments(parser)
    return run_analyze(parser.parse_args([str(a) for a in argv]))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def same_k(a: dict, b: dict) -> bool:
    """Equal k_by_stage dicts (same stages in the same order, k values equal to float32 precision)."""
    return list(a) == list(b) and all(np.allclose(a[s], b[s], rtol=0, atol=1e-7) for s in a)


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


# ---- the table ----------------------------------------------------------------------------------------------


def test_table_rows_follow_the_formulas() -> None:
    rows = lm_table({"stages.0": [-0.2, 0.0], "stages.1": [0.5]}, dt=0.5)
    first, resnet, positive = rows
    assert (first["stage"], first["block"], first["depth"]) == ("stages.0", 1, 1)
    assert (positive["stage"], positive["block"], positive["depth"]) == ("stages.1", 1, 4)  # after 3 blocks
    assert first["one_plus_k"] == pytest.approx(0.8)
    assert first["half_one_minus_k"] == pytest.approx(0.6)
    assert first["effective_step"] == pytest.approx(0.5 / 0.8)  # dt / (1 + k)
    assert first["second_order_weight"] == pytest.approx(1.2 / 1.6)  # (1 - k) / (2 (1 + k))
    assert first["gamma_dt"] == pytest.approx(4.0)  # -(1 + k)/k; check: k = -1/(1 + gamma dt)
    assert -1 / (1 + first["gamma_dt"]) == pytest.approx(-0.2)
    assert (first["root_principal"], first["root_parasitic"]) == pytest.approx((1.0, 0.2))
    assert first["zero_stable"] and first["channels"] == 1
    assert resnet["gamma_dt"] == math.inf and resnet["second_order_weight"] == pytest.approx(0.5)
    assert positive["gamma_dt"] == pytest.approx(-3.0)  # k > 0: anti-damping


@pytest.mark.parametrize("k", [-1.5, -1.0, -0.999, -0.5, 0.0, 0.3, 1.0, 1.2])
def test_roots_and_zero_stability(k: float) -> None:
    principal, parasitic = characteristic_roots(k)
    assert principal == pytest.approx(1.0, abs=1e-7) and parasitic == pytest.approx(-k, abs=1e-7)
    assert is_zero_stable(k) == (-1.0 < k <= 1.0)  # k = -1: double root 1; k = 1: simple roots +-1


def test_per_channel_row_uses_mean_and_flags_any_unstable_channel() -> None:
    stable, unstable = lm_table({"s": [[-0.1, -0.3, -0.2], [-0.5, -1.5, 0.5]]})
    assert stable["channels"] == 3 and stable["k"] == pytest.approx(-0.2)
    assert (stable["k_min"], stable["k_max"]) == pytest.approx((-0.3, -0.1))
    assert stable["zero_stable"] and stable["max_abs_root"] == pytest.approx(1.0)
    assert unstable["k"] == pytest.approx(-0.5)  # the mean alone would be stable...
    assert not unstable["zero_stable"]  # ...but channel 2 (k = -1.5) is not
    assert unstable["max_abs_root"] == pytest.approx(1.5)


def test_csv_and_text(tmp_path: Path) -> None:
    rows = lm_table({"stages.0": [-0.1, -1.0]})
    back = read_csv(write_csv(rows, tmp_path / "t.csv"))
    assert [float(r["k"]) for r in back] == pytest.approx([-0.1, -1.0])
    assert [r["zero_stable"] for r in back] == ["True", "False"]
    text = format_table(rows)
    assert "stages.0" in text and "NO" in text and "(1+k) u'" in text and "C = how many k" in text
    assert format_table([]) == "(no LM blocks)"


def test_k_from_state_dict_groups_by_prefix() -> None:
    state = {"a.lm_k": np.array([-0.1, -0.2]), "a.conv.weight": np.zeros(3), "b.lm_k": np.full((1, 2), -0.3)}
    assert k_by_stage_from_state_dict(state) == {"a": [-0.1, -0.2], "b": [[-0.3, -0.3]]}
    with pytest.raises(ValueError, match="shape"):
        k_by_stage_from_state_dict({"c.lm_k": np.zeros((1, 1, 1))})


# ---- plots --------------------------------------------------------------------------------------------------


def test_plots_write_pngs(tmp_path: Path) -> None:
    runs = {"a": {"stages.0": [-0.1, -0.2], "stages.1": [[-0.3, -0.1]]}, "b": {"stages.0": [0.0, -0.5]}}
    assert is_png(plot_k_vs_depth(runs, tmp_path / "depth.png"))
    metrics = [{"epoch": e, "lm_k": {"stages.0": [-0.1 * e, -0.05 * e]}} for e in range(3)]
    assert is_png(plot_k_over_epochs({"a": metrics}, tmp_path / "one.png"))
    assert is_png(plot_k_over_epochs({"a": metrics, "b": metrics[:2]}, tmp_path / "two.png"))


def test_k_history() -> None:
    metrics = [{"epoch": 0, "loss": 1.0}] + [{"epoch": e, "lm_k": {"s": [[-0.1, -0.3], [e, e]]}} for e in (1, 2)]
    epochs, history = k_history(metrics)
    assert epochs.tolist() == [1.0, 2.0]
    np.testing.assert_allclose(history["s"], [[-0.2, 1.0], [-0.2, 2.0]])  # channel means
    with pytest.raises(ValueError, match="changes"):
        k_history([{"lm_k": {"s": [0.0]}}, {"lm_k": {"s": [0.0, 0.1]}}])
    with pytest.raises(ValueError, match="lm_k"):
        k_history([{"epoch": 0}])


# ---- odearch analyze on a fake run --------------------------------------------------------------------------

FAKE_K = {
    "stages.0.lm_k": torch.tensor([-0.1, -0.4]),
    "stages.1.lm_k": torch.tensor([-1.5, 0.2]),
    "stages.2.lm_k": torch.tensor([[-0.2, -0.4], [-0.6, -0.8]]),  # per channel
}


def make_run(root: Path, name: str = "run", k: dict[str, torch.Tensor] | None = None, best: bool = False) -> Path:
    """A run directory as ``odearch train`` writes it: config.yaml, 3-epoch metrics.jsonl, checkpoints."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    k = FAKE_K if k is None else k
    state = {**k, "stages.0.blocks.0.conv1.weight": torch.randn(4, 4, 3, 3), "head.fc.bias": torch.zeros(10)}
    save_file(state, str(run / "checkpoints" / "last.safetensors"))
    if best:
        save_file({key: value - 0.05 for key, value in k.items()}, str(run / "checkpoints" / "best.safetensors"))
    config = {"model": "lm_resnet20", "model_kwargs": {}, "num_classes": 10}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [
        json.dumps(
            {"epoch": e, "loss": 2.0 - e, "lm_k": {key[:-5]: (v * (e + 1) / 3).tolist() for key, v in k.items()}}
        )
        for e in range(3)
    ]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_analyze_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    assert analyze(run) == 0
    out = run / "analysis"
    rows = read_csv(out / "lm_table.csv")
    assert [(r["stage"], r["block"], r["depth"]) for r in rows] == [
        ("stages.0", "1", "1"),
        ("stages.0", "2", "2"),
        ("stages.1", "1", "4"),
        ("stages.1", "2", "5"),
        ("stages.2", "1", "7"),
        ("stages.2", "2", "8"),
    ]
    assert {r["run"] for r in rows} == {"run"}
    assert [float(r["k"]) for r in rows] == pytest.approx([-0.1, -0.4, -1.5, 0.2, -0.3, -0.7])
    assert [float(r["root_parasitic"]) for r in rows] == pytest.approx([0.1, 0.4, 1.5, -0.2, 0.3, 0.7])
    assert [float(r["root_principal"]) for r in rows] == pytest.approx([1.0] * 6)
    assert [r["zero_stable"] for r in rows] == ["True", "True", "False", "True", "True", "True"]
    assert float(rows[2]["max_abs_root"]) == pytest.approx(1.5)
    assert rows[5]["channels"] == "2"
    assert (float(rows[5]["k_min"]), float(rows[5]["k_max"])) == pytest.approx((-0.8, -0.6))
    assert is_png(out / "k_vs_depth.png") and is_png(out / "k_over_epochs.png")
    printed = capsys.readouterr().out
    assert "NO" in printed and "model lm_resnet20" in printed
    assert (out / "lm_table.txt").read_text().strip() in printed


def test_analyze_prefers_best_and_accepts_a_checkpoint_file(tmp_path: Path) -> None:
    run = make_run(tmp_path, best=True)
    assert analyze(run, "--out", tmp_path / "a") == 0
    assert float(read_csv(tmp_path / "a" / "lm_table.csv")[0]["k"]) == pytest.approx(-0.15)  # best = last - 0.05
    assert analyze(run / "checkpoints" / "last.safetensors", "--out", tmp_path / "b", "--dt", "0.1") == 0
    rows = read_csv(tmp_path / "b" / "lm_table.csv")
    assert rows[0]["run"] == "run" and float(rows[0]["k"]) == pytest.approx(-0.1)
    assert float(rows[0]["effective_step"]) == pytest.approx(0.1 / 0.9)
    assert is_png(tmp_path / "b" / "k_over_epochs.png")  # metrics found two levels up


def test_analyze_bare_checkpoint_and_several_runs(tmp_path: Path) -> None:
    bare = tmp_path / "loose" / "model.safetensors"
    bare.parent.mkdir()
    save_file(
        {
            "stages.0.lm_k": torch.tensor([-0.25]),
            "stages.10.lm_k": torch.tensor([-0.5]),
            "stages.2.lm_k": torch.tensor([-0.75]),
        },
        str(bare),
    )
    assert analyze(bare) == 0
    out = bare.parent / "analysis"
    rows = read_csv(out / "lm_table.csv")
    assert [r["stage"] for r in rows] == ["stages.0", "stages.2", "stages.10"]  # natural order, not string order
    assert is_png(out / "k_vs_depth.png") and not (out / "k_over_epochs.png").exists()  # no metrics

    first, second = make_run(tmp_path / "x"), make_run(tmp_path / "y", k={"stages.0.lm_k": torch.tensor([-0.9])})
    assert analyze(first, second, bare, "--out", tmp_path / "all") == 0
    rows = read_csv(tmp_path / "all" / "lm_table.csv")
    assert [r["run"] for r in rows] == ["run"] * 6 + ["run#2", "model", "model", "model"]
    assert is_png(tmp_path / "all" / "k_vs_depth.png") and is_png(tmp_path / "all" / "k_over_epochs.png")


def expect_error(capsys: pytest.CaptureFixture[str], *argv: str | Path, match: str) -> None:
    assert analyze(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("odearch analyze: error:") and match in err and "\n" not in err


def test_analyze_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_error(capsys, tmp_path / "nope", match="no such file or directory")
    (tmp_path / "text.safetensors").write_text("not a checkpoint")
    expect_error(capsys, tmp_path / "text.safetensors", match="not a readable safetensors file")
    save_file({"stem.weight": torch.zeros(2)}, str(tmp_path / "resnet.safetensors"))
    expect_error(capsys, tmp_path / "resnet.safetensors", match="no LM coefficients")
    (tmp_path / "empty_run").mkdir()
    expect_error(capsys, tmp_path / "empty_run", match="no checkpoints/best.safetensors")
    run = make_run(tmp_path)
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n{oops\n')
    expect_error(capsys, run, match="metrics.jsonl:2")


# ---- real models (the core's lm_coefficients contract) ------------------------------------------------------


@pytest.mark.parametrize(("scheme", "channels"), [(None, 1), ("lm_channel", 16)])
def test_real_lm_resnet20(tmp_path: Path, scheme: str | None, channels: int) -> None:
    model = create_model("lm_resnet20", num_classes=10, **({"scheme": scheme} if scheme else {}))
    rows = analyze_model(model)
    assert [(r["stage"], r["block"], r["depth"]) for r in rows] == [
        (f"stages.{s}", b, 3 * s + b) for s in range(3) for b in (1, 2)
    ]  # 3 basic blocks per stage: block 0 has no k
    assert rows[0]["channels"] == channels
    assert all(-0.1 <= r["k_min"] <= r["k_max"] <= 0.0 and r["zero_stable"] for r in rows)  # init U[-0.1, 0]
    # the state-dict path (what the command reads) agrees with the core's lm_coefficients
    assert same_k(k_by_stage_from_state_dict(model.state_dict()), lm_coefficients(model))
    run = tmp_path / "real"
    (run / "checkpoints").mkdir(parents=True)
    save_file(model.state_dict(), str(run / "checkpoints" / "last.safetensors"))
    assert same_k(read_lm_k(run / "checkpoints" / "last.safetensors"), lm_coefficients(model))
    assert analyze(run) == 0
    assert [float(r["k"]) for r in read_csv(run / "analysis" / "lm_table.csv")] == pytest.approx([r["k"] for r in rows])


def test_real_model_without_lm_coefficients() -> None:
    with pytest.raises(ValueError, match="no LM coefficients"):
        analyze_model(create_model("preact_resnet20", num_classes=10))
