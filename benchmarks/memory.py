"""Peak resident memory and time of one training step vs depth, per activation-memory mode (not a test).

    PYTHONPATH=src python benchmarks/memory.py                      # the default grid below, 3 fresh processes each
    PYTHONPATH=src python benchmarks/memory.py --configs rev20:reversible lm164:recompute --repeats 1

Every (model, memory mode) runs in a FRESH Python process, `--repeats` times, one after another (never two at once).
The process builds the model (training mode, SGD momentum 0.9), takes one warm-up step (it allocates the gradients
and the momentum buffers), then, for each of `--steps` timed steps: resets the kernel's peak-RSS counter (writing 5 to
/proc/self/clear_refs), reads the resident set size (VmRSS) as the baseline, runs forward + cross-entropy +
backward + optimizer step, and reads the peak (VmHWM). ``step_peak_mb`` = peak - baseline: the memory the step
itself needs above parameters, gradients, optimizer state and the batch, i.e. activation memory plus transients.
glibc is told to serve every allocation above 64 KiB by mmap (MALLOC_MMAP_THRESHOLD_=65536, a fixed threshold), so a
freed tensor goes back to the kernel and RSS follows the live tensors. Step time is the median over the timed steps;
the summary gives, per config, the median over repeats of both.

Default grid (batch 128, 32x32 inputs, 10 classes, fp32, channels_last off, `--threads` 1):

- ``rev<d>`` for d = 20, 56, 110, 164: the RevNet backbone of ``rev_resnet<d>`` with basic blocks, n = (d - 2) / 6 steps
  per stage, widths 16/32/64 (``rev164`` is ``preact_resnet((27, 27, 27), scheme="rev")``: basic blocks, so that
  depth alone changes along the series); modes store (ordinary autograd) and reversible.
- ``revb164``: the registered ``rev_resnet164`` (bottleneck blocks, 4x wider states), store and reversible.
- ``lm<d>``: the registered ``lm_resnet<d>`` (164: bottleneck), store and recompute.

Writes ``results/bench/memory-<device>-<YYYYMMDD-HHMMSS>.json`` (command, commit, CPU model, torch version, seed,
wall time, every run) and, with ``--plot``, ``docs/memory_vs_depth.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MODELS: dict[str, tuple[str, dict[str, Any]]] = {  # config name -> (registered model or "preact_resnet", kwargs)
    "rev20": ("rev_resnet20", {}),
    "rev56": ("rev_resnet56", {}),
    "rev110": ("rev_resnet110", {}),
    "rev164": ("preact_resnet", {"layers": (27, 27, 27), "scheme": "rev"}),
    "revb164": ("rev_resnet164", {}),
    "lm20": ("lm_resnet20", {}),
    "lm56": ("lm_resnet56", {}),
    "lm110": ("lm_resnet110", {}),
    "lm164": ("lm_resnet164", {}),
}
DEPTH = {
    "rev20": 20,
    "rev56": 56,
    "rev110": 110,
    "rev164": 164,
    "revb164": 164,
    "lm20": 20,
    "lm56": 56,
    "lm110": 110,
    "lm164": 164,
}
DEFAULT_CONFIGS = [f"rev{d}:{m}" for d in (20, 56, 110, 164) for m in ("store", "reversible")]
DEFAULT_CONFIGS += ["revb164:store", "revb164:reversible"]
DEFAULT_CONFIGS += [f"lm{d}:{m}" for d in (20, 56, 110, 164) for m in ("store", "recompute")]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(config: str, memory: str, batch_size: int, steps: int, seed: int, policy: str) -> dict[str, Any]:
    """One fresh process: build, warm up, then time and measure `steps` training steps."""
    import resource

    import torch
    import torch.nn.functional as F

    import odearch
    from odearch.models.preact_resnet import preact_resnet
    from odearch.train.allocator import allocator_state, apply_policy, keep_freed_memory, policy_for

    if policy != "fixed64k":  # as odearch train: keep freed memory (configure_numerics), then the run's policy
        keep_freed_memory()
        apply_policy(policy_for("auto" if policy == "cli" else policy, memory))
    torch.manual_seed(seed)
    name, kwargs = MODELS[config]
    model = preact_resnet(**kwargs) if name == "preact_resnet" else odearch.create_model(name, **kwargs)
    if memory == "memcnn":
        _to_memcnn(model)
    else:
        odearch.set_memory(model, memory)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    Path("/proc/self/clear_refs").write_text("5")
    built = _status_kb("VmRSS")  # the process with its model and batch, before the first step

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up: gradients and momentum buffers exist from here on
    warm_peak = _status_kb("VmHWM")
    rows = []
    for _ in range(steps):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _status_kb("VmRSS")
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        peak = _status_kb("VmHWM")
        rows.append(
            {"seconds": seconds, "base_mb": base / 1024, "peak_mb": peak / 1024, "step_peak_mb": (peak - base) / 1024}
        )
    return {
        "config": config,
        "model": name,
        "model_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "depth": DEPTH[config],
        "memory": memory,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "steps": rows,
        "step_seconds": statistics.median(r["seconds"] for r in rows),
        "step_peak_mb": statistics.median(r["step_peak_mb"] for r in rows),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "policy": policy,
        "cpu_allocator": allocator_state(),
        "process_peak_mb": (max(warm_peak, *(r["peak_mb"] * 1024 for r in rows)) - built) / 1024,
    }


def _to_memcnn(model: Any) -> None:
    """memcnn's reference coupling on the same F, G: each rev step becomes
    ``InvertibleModuleWrapper(AdditiveCoupling(F, G), keep_input=False)`` (y1 = x1 + F(x2), y2 = x2 + G(y1), the
    input freed and rebuilt by memcnn's inverse); transition steps stay ordinary (stored), as in odearch."""
    import memcnn
    from torch import nn

    class MemcnnStage(nn.Module):
        def __init__(self, stage: Any) -> None:
            super().__init__()
            fns = stage.step_fns
            self.shortcut = stage.shortcut
            first = int(self.shortcut is not None)
            self.f0 = fns[0] if first else None
            self.revs = nn.ModuleList(
                memcnn.InvertibleModuleWrapper(
                    memcnn.AdditiveCoupling(Fm=f, Gm=g), keep_input=False, keep_input_inverse=False
                )
                for f, g in fns[first:]
            )

        def forward_with_history(self, u: Any) -> tuple[Any, None]:
            if self.shortcut is not None:
                u = self.shortcut(u) + self.f0(u)
            for m in self.revs:
                u = m(u)
            return u, None

    model.stages = nn.ModuleList(MemcnnStage(s) for s in model.stages)


def run_fresh(config: str, memory: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if args.policy == "fixed64k":  # the live-tensor measure: RSS follows the tensors
        env |= {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    cmd = [
        args.python or sys.executable,
        "-W",
        "ignore",
        __file__,
        "--worker",
        f"{config}:{memory}",
        "--batch-size",
        str(args.batch_size),
        "--policy",
        args.policy,
        "--steps",
        str(args.steps),
        "--seed",
        str(args.seed),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{config}:{memory} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        out.setdefault((r["config"], r["memory"]), []).append(r)
    rows = []
    for (config, memory), rs in out.items():
        rows.append(
            {
                "config": config,
                "model": rs[0]["model"],
                "depth": rs[0]["depth"],
                "memory": memory,
                "params": rs[0]["params"],
                "repeats": len(rs),
                "step_peak_mb": statistics.median(r["step_peak_mb"] for r in rs),
                "step_seconds": statistics.median(r["step_seconds"] for r in rs),
                "peak_rss_mb": statistics.median(r["ru_maxrss_mb"] for r in rs),
                **(
                    {"process_peak_mb": statistics.median(r["process_peak_mb"] for r in rs)}
                    if all("process_peak_mb" in r for r in rs)
                    else {}
                ),
            }
        )
    by = {(r["config"], r["memory"]): r for r in rows}
    for r in rows:  # ratios against the ordinary (store) run of the same model
        ref = by.get((r["config"], "store"))
        if ref is not None and r["memory"] != "store":
            # a step peak of 0 (an allocator that keeps freed memory: the step reuses it) has no ratio
            if ref["step_peak_mb"] > 0:
                r["memory_ratio_vs_store"] = r["step_peak_mb"] / ref["step_peak_mb"]
            if ref.get("process_peak_mb"):
                r["process_ratio_vs_store"] = r["process_peak_mb"] / ref["process_peak_mb"]
            r["time_ratio_vs_store"] = r["step_seconds"] / ref["step_seconds"]
    return rows


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [
        ("rev", "store", "rev (basic blocks), ordinary autograd", "C0", "o-"),
        ("rev", "reversible", "rev (basic blocks), reversible", "C0", "o--"),
        ("lm", "store", "lm_resnet (164: bottleneck), store", "C1", "s-"),
        ("lm", "recompute", "lm_resnet (164: bottleneck), recompute", "C1", "s--"),
    ]
    for fam, mode, label, color, style in series:
        pts = sorted((r["depth"], r) for r in summary if r["memory"] == mode and r["config"] == f"{fam}{r['depth']}")
        if pts:
            ax_m.plot([d for d, _ in pts], [r["step_peak_mb"] for _, r in pts], style, color=color, label=label)
            ax_t.plot([d for d, _ in pts], [r["step_seconds"] for _, r in pts], style, color=color, label=label)
    memcnn_pts = sorted((r["depth"], r["step_peak_mb"]) for r in summary if r["memory"] == "memcnn")
    if memcnn_pts:
        ax_m.plot(*zip(*memcnn_pts), "^:", color="C3", label="memcnn AdditiveCoupling, same F, G")
    for r in summary:
        if r["config"] == "revb164":
            marker = "x" if r["memory"] == "store" else "+"
            label = f"rev_resnet164 (bottleneck), {r['memory']}"
            ax_m.plot([164], [r["step_peak_mb"]], marker, color="C2", ms=9, label=label)
    ax_m.set(xlabel="depth", ylabel="peak RSS of a training step above baseline (MB)", title="activation memory")
    ax_t.set(xlabel="depth", ylabel="seconds per training step (median)", title="step time (loaded machine)")
    for ax in (ax_m, ax_t):
        ax.set_xticks([20, 56, 110, 164])
        ax.grid(alpha=0.3)
    ax_m.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, metavar="CONFIG:MODE")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per process (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per config")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--policy",
        default="fixed64k",
        choices=("fixed64k", "cli", "keep", "return"),
        help="host allocator: fixed64k (MALLOC_MMAP_THRESHOLD_=65536: RSS follows live tensors), cli "
        "(what odearch train chooses for the mode), keep or return (odearch.train.allocator)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--plot", type=Path, default=None, help="write the memory-vs-depth PNG here")
    parser.add_argument("--from-json", type=Path, nargs="+", default=None, help="only re-plot these result files")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--python", default=None, help="interpreter of the worker processes (memcnn: its own venv)")
    args = parser.parse_args()
    if args.worker:
        config, memory = args.worker.split(":")
        print(json.dumps(worker(config, memory, args.batch_size, args.steps, args.seed, args.policy)))
        return
    if args.from_json:
        records = [json.loads(p.read_text()) for p in args.from_json]
        summary = summarise([r for rec in records for r in rec["runs"]])
        plot(summary, args.plot or Path("docs/memory_vs_depth.png"), _title(records[0], summary))
        return

    import torch

    from odearch.train.provenance import provenance

    prov = provenance(torch.device("cpu"))
    wall = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"memory-cpu-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}.json"
    runs: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for rep in range(args.repeats):  # repeats outermost: drift of the machine's load hits every config alike
        for item in args.configs:
            config, memory = item.split(":")
            r = run_fresh(config, memory, args)
            r["repeat"] = rep
            runs.append(r)
            print(
                f"[{rep}] {config:8s} {memory:10s} step peak {r['step_peak_mb']:8.1f} MB  process peak "
                f"{r['process_peak_mb']:8.1f} MB ({r['cpu_allocator']})  {r['step_seconds']:7.2f} s",
                flush=True,
            )
            summary = summarise(runs)
            record = {
                "command": " ".join([sys.executable, *sys.argv]),
                **prov,
                "load_average": os.getloadavg(),
                "cpu_count": os.cpu_count(),
                "threads": args.threads,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "repeats": args.repeats,
                "complete": rep == args.repeats - 1 and item == args.configs[-1],
                "seed": args.seed,
                "wall_seconds": time.perf_counter() - wall,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "policy": args.policy,
                "method": "fresh process per run; step_peak_mb = VmHWM - VmRSS around one training step after a "
                "warm-up step (VmHWM reset via /proc/self/clear_refs); process_peak_mb = the highest VmHWM "
                "over the warm-up and timed steps minus VmRSS after building the model (what a user "
                "watching the process sees); host allocator: --policy",
                "summary": summary,
                "runs": runs,
            }
            path.write_text(json.dumps(record, indent=1) + "\n")  # after every run: a partial grid survives a stop
    print(f"wrote {path}")
    for r in sorted(summary, key=lambda r: (r["config"][:3], r["depth"], r["config"], r["memory"])):
        extra = ""
        if "time_ratio_vs_store" in r:
            extra = f"  mem x{r.get('memory_ratio_vs_store', float('nan')):.3f}  time x{r['time_ratio_vs_store']:.2f}"
        print(f"{r['config']:8s} {r['memory']:10s} {r['step_peak_mb']:8.1f} MB {r['step_seconds']:7.2f} s{extra}")
    if args.plot:
        plot(summary, args.plot, _title(record, summary))


def _title(record: dict[str, Any], summary: list[dict[str, Any]]) -> str:
    repeats = sorted({r["repeats"] for r in summary})
    return (
        f"batch {record['batch_size']}, fp32, {record['threads']} thread(s), {record['device_name']}, torch "
        f"{record['torch_version']}, commit {str(record['git_commit'])[:7]}; median of "
        f"{'-'.join(map(str, repeats))} fresh processes per point (shared, loaded machine)"
    )


if __name__ == "__main__":
    main()
