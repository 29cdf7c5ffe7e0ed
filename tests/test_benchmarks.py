"""The benchmark scripts still run against the current package: each, at the smallest settings, writes one JSON
record with its command line and provenance. Timings are not checked (CI's machine is shared); only that the
scripts do not rot while the library under them changes. ``compile_sd.py`` is left out: compiling a network
takes minutes on 2 cores, and ``odearch train --compile`` is tested in test_train.py. ``OUT`` in a case's arguments
stands for the record's folder; a case without it gets ``--out`` that folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import needs_cifar
from datapaths import CIFAR_ROOT, REPO

TINY = ["--batch-size", "4"]
PAIR = ["--pairs", "preact_resnet20:lm_resnet20"]
CASES = {
    "compression_cost": [
        "--models",
        "lm_resnet20",
        "resnet20",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--threads",
        "1",
        *TINY,
    ],
    "allocator_policy": ["--runs", "lm_resnet20:store", "--rounds", "1", "--steps", "1", "--threads", "1", *TINY],
    "forward_backward": ["--models", "lm_resnet20", "--repeats", "1", *TINY],
    "host_allocator": [
        "--models",
        "lm_resnet20",
        "--rounds",
        "1",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--threads",
        "1",
        *TINY,
    ],
    "lm_combine": ["--steps", "2", "--repeats", "2", "--threads", "1"],
    "compile_step": [  # the eager backend: the plumbing without minutes of Inductor compilation
        "--models",
        "lm_resnet20",
        "--backend",
        "eager",
        "--steps",
        "1",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        *TINY,
    ],
    "lm_step_profile": [
        "OUT/lm_step_profile.json",
        *PAIR,
        "--amp",
        "off",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--no-old",
        *TINY,
    ],
    "lm_step": [*PAIR, "--amp", "off", "--steps", "1", "--repeats", "2", "--warmup", "1", "--threads", "1", *TINY],
    "lm_update_cost": [
        "--models",
        "lm_resnet20",
        "--amp",
        "off",
        "--reps",
        "2",
        "--steps",
        "2",
        "--threads",
        "1",
        *TINY,
    ],
    "multilevel": [
        "--epochs",
        "3",
        "--refine-at",
        "1",
        "2",
        "--subset",
        "128",
        "--amp",
        "off",
        "--data-dir",
        str(CIFAR_ROOT),
    ],
    "memory": ["--configs", "lm20:store", "rev20:reversible", "--repeats", "1", "--policy", "cli", *TINY],
    "throughput": [
        "--models",
        "preact_resnet20",
        "lm_resnet20",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--workers",
        "1",
        "--data-dir",
        str(CIFAR_ROOT),
        *TINY,
    ],
}


def run_benchmark(name: str, args: list[str], out: Path) -> dict:
    """Run ``benchmarks/<name>.py`` with `args`, its record going to `out`; the one JSON record it wrote."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    args = [a.replace("OUT", str(out)) for a in args] if "OUT" in " ".join(args) else [*args, "--out", str(out)]
    cmd = [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert proc.returncode == 0, f"{name}.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    records = sorted(out.glob(f"{name}*.json"))
    assert len(records) == 1, f"{name}.py wrote {records} in {out}"
    return json.loads(records[0].read_text())


def assert_provenance(record: dict) -> None:
    """The record says which code and torch produced it (nested under ``provenance`` or at its top level)."""
    prov = record.get("provenance", record)
    assert prov["torch_version"] == torch.__version__
    assert len(prov["git_commit"]) >= 7 and isinstance(prov["git_dirty"], bool)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if n not in ("throughput", "multilevel")])
def test_benchmark_writes_a_record_with_provenance(name: str, tmp_path: Path) -> None:
    record = run_benchmark(name, CASES[name], tmp_path / "bench")
    assert f"benchmarks/{name}.py" in record["command"]
    assert_provenance(record)


@pytest.mark.slow
@needs_cifar
def test_throughput_benchmark_writes_a_record_with_provenance(tmp_path: Path) -> None:
    record = run_benchmark("throughput", CASES["throughput"], tmp_path / "bench")
    assert "benchmarks/throughput.py" in record["command"]
    assert_provenance(record)


@pytest.mark.slow
@needs_cifar
def test_multilevel_benchmark_compares_the_three_runs(tmp_path: Path) -> None:
    """Three epochs of 128 images each (one step): the multi-level run ends at lm_resnet56's parameter count, and the
    record holds the gap and the time ratio against the direct LM run; its table goes into a page's block."""
    record = run_benchmark("multilevel", CASES["multilevel"], tmp_path / "bench")
    assert_provenance(record)
    runs = {r["run"]: r for r in record["runs"]}
    assert runs["multilevel"]["params"] == runs["direct_lm"]["params"]
    assert [e["mesh_level"] for e in runs["multilevel"]["per_epoch"]] == [0, 1, 2]
    gap = runs["multilevel"]["final_test_error_pct"] - runs["direct_lm"]["final_test_error_pct"]
    assert record["error_gap_points"] == pytest.approx(gap)
    page = tmp_path / "mesh.md"
    page.write_text("# Mesh\n\n<!-- ttacc-table:start -->\nold\n<!-- ttacc-table:end -->\n\nafter\n")
    _multilevel_module().write_table(record, page)
    text = page.read_text()
    assert "old" not in text and text.endswith("<!-- ttacc-table:end -->\n\nafter\n")
    assert f"{gap:+.2f} points of test error in {100 * record['time_ratio']:.0f} % of its wall time" in text
    assert text.count("\n| multilevel | `lm_resnet20`, refined to `lm_resnet56`'s shape | 0.856M |") == 1


def _multilevel_module():
    spec = importlib.util.spec_from_file_location("multilevel_bench", REPO / "benchmarks" / "multilevel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_campaign_queue_holds_the_multilevel_benchmark_runs_as_the_benchmark_prints_them() -> None:
    """The time-to-accuracy runs the campaign trains are the benchmark's recipe, entry for entry."""
    printed = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "multilevel.py"),
            "--queue-entries",
            "--seed",
            "1",
            "--prefix",
            "ttacc_",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries = yaml.safe_load("runs:\n" + printed)["runs"]
    queue = yaml.safe_load((REPO / "results" / "campaign" / "queue.yaml").read_text())["runs"]
    assert [e for e in queue if e["name"].startswith("ttacc_")] == entries
    assert [e["name"] for e in entries] == ["ttacc_multilevel", "ttacc_direct_lm", "ttacc_direct_plain"]


def test_campaign_queue_holds_the_full_recipe_multilevel_run_the_benchmark_reads() -> None:
    """The full-recipe multi-level run is queued after the 56-layer twins with the flags of the benchmark's recipe at
    160 epochs, and the benchmark finds the three by their campaign names."""
    bench = _multilevel_module()
    args = argparse.Namespace(epochs=160, refine_at=[32, 72], seed=1, amp="bf16", subset=None, out=Path("runs"))
    args.folders = ["lm_resnet20_ml56_bf16_s1", "lm_resnet56_bf16_s1", "preact_resnet56_bf16_s1"]
    queue = yaml.safe_load((REPO / "results" / "campaign" / "queue.yaml").read_text())["runs"]
    names = [e["name"] for e in queue]
    entry = queue[names.index("lm_resnet20_ml56_bf16_s1")]
    assert names.index("lm_resnet20_ml56_bf16_s1") > names.index("lm_resnet56_bf16_s1")
    assert entry == {
        "name": "lm_resnet20_ml56_bf16_s1",
        "config": bench.config_path("multilevel"),
        "seed": 1,
        "amp": "bf16",
        "args": [*bench.recipe_flags("multilevel", args), "--compile"],  # compiled, as the 56-layer twins
    }
    assert bench.recipe("multilevel", args)["milestones"] == [80, 120]  # the paper's schedule
    for name, folder in zip(bench.RUNS, args.folders, strict=True):
        assert folder in names and bench.run_folder(name, args) == Path("runs") / folder
        assert queue[names.index(folder)]["config"] == bench.config_path(name)
        assert "--compile" in queue[names.index(folder)]["args"]  # the three time alike


def test_multilevel_benchmark_refuses_a_run_of_another_recipe(tmp_path: Path) -> None:
    bench = _multilevel_module()
    run_dir = tmp_path / "ttacc_direct_lm"
    run_dir.mkdir()
    saved = {"model": "lm_resnet56", "epochs": 20, "milestones": [10, 15], "refine_at": [], "seed": 1, "amp": "bf16"}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved | {"subset": None}))
    args = argparse.Namespace(
        epochs=20, refine_at=[4, 9], seed=1, amp="bf16", subset=None, out=tmp_path, prefix="ttacc_", data_dir=None
    )
    bench.check_recipe("direct_lm", run_dir, args)  # the recipe: no complaint
    with pytest.raises(
        SystemExit, match=r"not trained with this recipe \(epochs: run has 20, recipe wants 30, milestones"
    ):
        bench.check_recipe("direct_lm", run_dir, argparse.Namespace(**vars(args) | {"epochs": 30}))


def test_every_benchmark_script_is_covered_or_named_as_left_out() -> None:
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py")}
    assert scripts - set(CASES) == {"compile_sd"}, scripts - set(CASES)
