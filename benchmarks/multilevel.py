"""Time to accuracy of multi-level training against direct training of the deep twins (issue 34; not a test).

    python benchmarks/multilevel.py --data-dir ../shared/data                      # the default: ~2 h of 2 cores, bf16
    python benchmarks/multilevel.py --epochs 20 --refine-at 4 9 --out results/bench/multilevel-short

Three runs of ``odearch train`` on CIFAR-10 with one shortened recipe (``--epochs``, the lr dropped by 10 at half and
three quarters of them, SGD momentum 0.9, batch 128, ``--amp``, the same seed): ``lm_resnet20`` refined by 2 after
each ``--refine-at`` epoch (1 + 2 -> 1 + 4 -> 1 + 8 blocks a stage: ``lm_resnet56``'s shape at the end), and
``lm_resnet56`` and ``preact_resnet56`` trained directly. Each run directory is resumable (a rerun continues the
unfinished ones and skips the finished); the record ``multilevel.json`` in ``--out`` holds, per run, the final test
error, the mean over the last lr phase, the wall time and the run's own provenance, and the ratios of the
multi-level run to the direct LM run (the goal: within 0.3 points in at most 65 % of the time).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RUNS = {"multilevel": "lm_resnet20", "direct_lm": "lm_resnet56", "direct_plain": "preact_resnet56"}


def train_args(name: str, args: argparse.Namespace) -> list[str]:
    """The ``odearch train`` flags of run ``name`` under the shortened recipe."""
    half, three_quarters = max(1, args.epochs // 2), max(1, (3 * args.epochs) // 4)
    flags = ["--model", RUNS[name], "--epochs", str(args.epochs), "--milestones", str(half), str(three_quarters)]
    flags += ["--seed", str(args.seed), "--amp", args.amp, "--out", str(args.out / name), "--no-tensorboard"]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    if args.subset:
        flags += ["--subset", str(args.subset), "--eval-subset", str(args.subset)]
    if name == "multilevel":
        flags += ["--refine-at", *map(str, args.refine_at)]
    return flags


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Trains (or resumes, or reads) run ``name``; returns its summary."""
    folder = args.out / name
    result_file = folder / "result.json"
    done = result_file.is_file() and json.loads(result_file.read_text()).get("status") == "complete"
    if not done:
        resume = (folder / "checkpoints").is_dir()
        cmd = [sys.executable, "-m", "odearch", "train"]
        cmd += ["--resume", str(folder)] if resume else train_args(name, args)
        print("multilevel:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    result = json.loads(result_file.read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    last_phase = [100 * (1 - r["test_acc"]) for r in rows if r["epoch"] > (3 * args.epochs) // 4]
    return {
        "run": name,
        "model": RUNS[name],
        "final_test_error_pct": result["final_test_error_pct"],
        "last_phase_mean_error_pct": sum(last_phase) / len(last_phase) if last_phase else None,
        "wall_seconds": result["wall_seconds"],
        "params": result["params"],
        "command": result["command"],
        "git_commit": result.get("git_commit"),
        "device_name": result.get("device_name"),
        "torch_version": result.get("torch_version"),
        "seed": result["seed"],
        "amp_dtype": result.get("amp_dtype"),
        "per_epoch": [{k: r.get(k) for k in ("epoch", "test_acc", "seconds", "params", "mesh_level")} for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="the shortened recipe's epochs")
    p.add_argument("--refine-at", type=int, nargs="+", default=[4, 9], help="the multi-level run's refinements")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", default="bf16", choices=("bf16", "off"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--subset", type=int, default=None, help="train and evaluate on this many images (smoke runs)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "multilevel")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = [run(name, args) for name in RUNS]
    ml, lm = runs[0], runs[1]
    import torch

    from odearch.train.provenance import provenance

    record = {
        "benchmark": "multilevel",
        "command": shlex.join([sys.executable, *sys.argv]),
        "provenance": provenance(torch.device("cpu")),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": runs,
        "error_gap_points": ml["final_test_error_pct"] - lm["final_test_error_pct"],
        "time_ratio": ml["wall_seconds"] / lm["wall_seconds"],
        "wall_seconds_this_call": time.perf_counter() - t0,
    }
    record["goal_met"] = record["error_gap_points"] <= 0.3 and record["time_ratio"] <= 0.65
    path = args.out / "multilevel.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"multilevel: gap {record['error_gap_points']:+.2f} points, time x{record['time_ratio']:.2f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
