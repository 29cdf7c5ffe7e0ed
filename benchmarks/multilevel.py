"""Time to accuracy of multi-level training against direct training of the deep twins (issue 34; not a test).

    python benchmarks/multilevel.py --data-dir ../shared/data                      # the default: ~2 h of 2 cores, bf16
    python benchmarks/multilevel.py --epochs 20 --refine-at 4 9 --out results/bench/multilevel-short
    python benchmarks/multilevel.py --queue-entries --seed 1 --prefix ttacc_       # the same three runs as campaign
    python benchmarks/multilevel.py --out results/campaign --prefix ttacc_ --seed 1 --record results/bench/m.json
    python benchmarks/multilevel.py --epochs 160 --refine-at 32 72 --seed 1 --out results/campaign \
        --folders lm_resnet20_ml56_bf16_s1 lm_resnet56_bf16_s1 preact_resnet56_bf16_s1   # the full recipe's runs

Three runs of ``odearch train`` on CIFAR-10 with the paper's recipe (``configs/cifar10/<model>.yaml``: SGD momentum
0.9, batch 128, weight decay 1e-4, the LM decay on kappa) shortened to ``--epochs`` (the lr dropped by 10 at half and
three quarters of them), ``--amp`` and one seed: ``lm_resnet20`` refined by 2 after each ``--refine-at`` epoch
(1 + 2 -> 1 + 4 -> 1 + 8 blocks a stage: ``lm_resnet56``'s shape at the end), and ``lm_resnet56`` and
``preact_resnet56`` trained directly. Each run directory (``--out``/``--prefix``NAME) is resumable: a rerun continues
the unfinished ones and reads the finished, after checking that each was trained with this recipe. The three runs can
also train as entries of the CPU campaign's queue (``--queue-entries`` prints them), the benchmark then only reading
them. The record (``--record``, default ``--out``/multilevel.json) holds, per run, the final test error, the mean over
the last lr phase, the wall time, the summed epoch times and the median training speed (to show how quiet the machine
was), and the run's own provenance, and the ratios of the multi-level run to the direct LM run (the goal: within 0.3
points in at most 65 % of the time).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RUNS = {"multilevel": "lm_resnet20", "direct_lm": "lm_resnet56", "direct_plain": "preact_resnet56"}


def recipe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """What run ``name``'s saved config must say: the config values the shortened recipe sets."""
    half, three_quarters = max(1, args.epochs // 2), max(1, (3 * args.epochs) // 4)
    return {
        "model": RUNS[name],
        "epochs": args.epochs,
        "milestones": [half, three_quarters],
        "refine_at": list(args.refine_at) if name == "multilevel" else [],
        "seed": args.seed,
        "amp": args.amp,
        "subset": args.subset,
    }


def config_path(name: str) -> str:
    """The paper-recipe config of run ``name``, relative to the repository."""
    return f"configs/cifar10/{RUNS[name]}.yaml"


def recipe_flags(name: str, args: argparse.Namespace) -> list[str]:
    """The ``odearch train`` flags that shorten the config's recipe (what a campaign entry passes as ``args``)."""
    want = recipe(name, args)
    flags = ["--epochs", str(want["epochs"]), "--milestones", *map(str, want["milestones"])]
    if args.subset:
        flags += ["--subset", str(args.subset), "--eval-subset", str(args.subset)]
    if want["refine_at"]:
        flags += ["--refine-at", *map(str, want["refine_at"])]
    return flags


def run_folder(name: str, args: argparse.Namespace) -> Path:
    """Run ``name``'s directory: ``--out``/``--prefix``NAME, or its entry of ``--folders`` (runs named otherwise, as
    the campaign's full-recipe runs are)."""
    folders = getattr(args, "folders", None)
    return args.out / (folders[list(RUNS).index(name)] if folders else args.prefix + name)


def train_args(name: str, args: argparse.Namespace) -> list[str]:
    """All ``odearch train`` flags of a new run ``name``."""
    flags = ["--config", str(REPO / config_path(name)), *recipe_flags(name, args), "--seed", str(args.seed)]
    flags += ["--amp", args.amp, "--out", str(run_folder(name, args)), "--no-tensorboard"]
    return flags + (["--data-dir", args.data_dir] if args.data_dir else [])


def queue_entries(args: argparse.Namespace) -> str:
    """The three runs as entries of ``results/campaign/queue.yaml`` (flow style, as the queue writes them)."""
    lines = []
    for name in RUNS:
        entry = {"name": args.prefix + name, "config": config_path(name), "seed": args.seed, "amp": args.amp}
        entry["args"] = recipe_flags(name, args)
        if name == "multilevel":
            entry["requires"] = "refine_at"
        lines.append("  - " + yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=1000).strip())
    return "\n".join(lines)


def check_recipe(name: str, folder: Path, args: argparse.Namespace) -> None:
    """Exit with one line when run ``name``'s saved config is not this recipe (no silent mix of recipes)."""
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    wrong = {k: (saved.get(k), v) for k, v in recipe(name, args).items() if saved.get(k) != v}
    if wrong:
        diffs = ", ".join(f"{k}: run has {have!r}, recipe wants {want!r}" for k, (have, want) in wrong.items())
        sys.exit(f"multilevel: error: {folder} was not trained with this recipe ({diffs})")


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Trains (or resumes, or reads) run ``name``; returns its summary."""
    folder = run_folder(name, args)
    result_file = folder / "result.json"
    if (folder / "config.yaml").is_file():
        check_recipe(name, folder, args)
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
        "folder": str(folder),
        "model": RUNS[name],
        "final_test_error_pct": result["final_test_error_pct"],
        "last_phase_mean_error_pct": sum(last_phase) / len(last_phase) if last_phase else None,
        "wall_seconds": result["wall_seconds"],
        "epoch_seconds_sum": sum(r["seconds"] for r in rows),
        "median_images_per_s": statistics.median(r["images_per_s"] for r in rows),
        "params": result["params"],
        "command": result["command"],
        "git_commit": result.get("git_commit"),
        "device_name": result.get("device_name"),
        "torch_version": result.get("torch_version"),
        "seed": result["seed"],
        "amp_dtype": result.get("amp_dtype"),
        "per_epoch": [
            {k: r.get(k) for k in ("epoch", "test_acc", "seconds", "images_per_s", "params", "mesh_level")}
            for r in rows
        ],
    }


TABLE_START, TABLE_END = "<!-- ttacc-table:start -->", "<!-- ttacc-table:end -->"


def table(record: dict[str, Any]) -> str:
    """The time-to-accuracy table of ``record`` and the sentence its ratios give (Markdown)."""
    lm = next(r for r in record["runs"] if r["run"] == "direct_lm")
    rows = [
        "| run | model | params (end) | error % after the last epoch | mean error %, last lr phase | wall time | "
        "summed epoch time | median img/s | time / direct LM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["runs"]:
        model = f"`{r['model']}`" + (", refined to `lm_resnet56`'s shape" if r["run"] == "multilevel" else "")
        phase = r["last_phase_mean_error_pct"]
        rows.append(
            f"| {r['run']} | {model} | {r['params'] / 1e6:.3f}M | {r['final_test_error_pct']:.2f} | "
            f"{'—' if phase is None else f'{phase:.2f}'} | {r['wall_seconds'] / 60:.1f} min | "
            f"{r['epoch_seconds_sum'] / 60:.1f} min | {r['median_images_per_s']:.0f} | "
            f"{r['wall_seconds'] / lm['wall_seconds']:.2f} |"
        )
    settings, prov = record["settings"], record["provenance"]
    goal = "met" if record["goal_met"] else "not met"
    return "\n".join(
        [
            *rows,
            "",
            f"Multi-level against direct LM training: {record['error_gap_points']:+.2f} points of test error in "
            f"{100 * record['time_ratio']:.0f} % of its wall time ({100 * record['epoch_seconds_ratio']:.0f} % of its "
            f"summed epoch time): the goal (within 0.3 points in at most 65 % of the time) is {goal}. "
            f"{settings['epochs']} epochs, refined after epochs {', '.join(map(str, settings['refine_at']))}, seed "
            f"{settings['seed']}, {settings['amp']}, {prov['device_name']}, torch {prov['torch_version']}; one seed, "
            "so a gap under ~0.3 points is within seed noise.",
        ]
    )


def write_table(record: dict[str, Any], page: Path) -> None:
    """Replace the generated block of ``page`` (between the ttacc-table markers) with :func:`table`."""
    text = page.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        sys.exit(f"multilevel: error: {page} has no {TABLE_START} ... {TABLE_END} block to generate")
    before, rest = text.split(TABLE_START, 1)
    page.write_text(f"{before}{TABLE_START}\n{table(record)}\n{TABLE_END}{rest.split(TABLE_END, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="the shortened recipe's epochs")
    p.add_argument("--refine-at", type=int, nargs="+", default=[4, 9], help="the multi-level run's refinements")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", default="bf16", choices=("bf16", "off"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--subset", type=int, default=None, help="train and evaluate on this many images (smoke runs)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "multilevel", help="the runs' folder")
    p.add_argument("--prefix", default="", help="each run's folder is --out/PREFIX + multilevel|direct_lm|direct_plain")
    p.add_argument(
        "--folders",
        nargs=3,
        metavar=("MULTILEVEL", "DIRECT_LM", "DIRECT_PLAIN"),
        help="the three runs' folders under --out instead of PREFIX + name (e.g. the campaign's full-recipe runs)",
    )
    p.add_argument("--record", type=Path, help="where the JSON record goes (default: --out/multilevel.json)")
    p.add_argument("--queue-entries", action="store_true", help="print the three runs as campaign queue entries")
    p.add_argument("--page", type=Path, help="a page whose ttacc-table block gets the table (e.g. docs/mesh.md)")
    args = p.parse_args(argv)
    if args.queue_entries:
        print(queue_entries(args))
        return 0
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
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "record", "queue_entries", "page")},
        "runs": runs,
        "error_gap_points": ml["final_test_error_pct"] - lm["final_test_error_pct"],
        "time_ratio": ml["wall_seconds"] / lm["wall_seconds"],
        "epoch_seconds_ratio": ml["epoch_seconds_sum"] / lm["epoch_seconds_sum"],
        "wall_seconds_this_call": time.perf_counter() - t0,
    }
    record["goal_met"] = record["error_gap_points"] <= 0.3 and record["time_ratio"] <= 0.65
    path = args.record or args.out / "multilevel.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"multilevel: gap {record['error_gap_points']:+.2f} points, time x{record['time_ratio']:.2f}; wrote {path}")
    if args.page:
        write_table(record, args.page)
        print(f"multilevel: wrote the table of {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
