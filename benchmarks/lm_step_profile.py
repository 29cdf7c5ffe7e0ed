"""Where the LM step's time goes: per-op profile (torch.profiler, self CPU time per training step) of the twins.

    python benchmarks/lm_step_profile.py results/bench/lm_step-profile-cpu-<date>.json
    python benchmarks/lm_step_profile.py OUT.json --pairs preact_resnet56:lm_resnet56 --amp bf16 --rounds 6
    python benchmarks/lm_step_profile.py OUT.json --device cuda --batch-size 1024 --no-old   # GPU kernel time too

Batch 128, channels_last, one fixed random batch, SGD momentum 0.9 wd 1e-4; for each precision and pair: one untimed
step of each model, then ``--rounds`` rounds of one profiled step of the plain model, the LM model and the LM model
with b2b71ed's two-state LM step (``lm_step.old_lm_step``), interleaved so that load and drift hit all three alike.

Ops are split into the residual functions' own ops (convolution, batch norm, ReLU and their backward: identical work
in the twins, so their differences are noise) and the rest (state updates, the LM step, gradient accumulation, the
optimizer). The LM's cost is the rest's excess over the plain twin's: a whole-step comparison on a shared 2-core
machine moves by +-5 % between identical steps, this split does not. Writes the medians per group, the 20 most
expensive ops of each model and the command and provenance; prints a summary.

With ``--device cuda`` the CUDA activity is recorded too: per model the GPU kernels' total time, the number of
kernel launches and the host (CPU) time of the step's ops, so that a launch-bound step (host time above kernel
time: the GPU waits for Python and the dispatcher) is told apart from a kernel-bound one.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from odearch.train import TrainConfig, build_model
from odearch.train.provenance import provenance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_step import old_lm_step

BLOCK_OPS = (
    "convolution",
    "batch_norm",
    "clamp_min",
    "threshold_backward",
    "relu",
    "Convolution",
    "NativeBatchNorm",
    "ReluBackward",
    "conv2d",
)


def is_block_op(key: str) -> bool:
    """True for an op of the residual functions themselves (conv, BN, ReLU), the same work in both twins."""
    return any(b in key for b in BLOCK_OPS)


def make_step(name: str, amp: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(0)
    m = build_model(TrainConfig(model=name)).to(x.device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def profiled(step: Callable[[], None], old: bool) -> dict[str, float]:
    """Self CPU ms per op key of one step."""
    with old_lm_step() if old else contextlib.nullcontext(), profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def profiled_cuda(step: Callable[[], None], old: bool) -> tuple[dict[str, float], dict[str, float]]:
    """One step on the GPU: (totals, self GPU ms per kernel / op key). Totals: ``host_ms`` (self CPU time of all
    ops), ``kernel_ms`` (GPU kernel time), ``launches`` (kernel launches), ``wall_ms`` (the synchronised step)."""
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    with old_lm_step() if old else contextlib.nullcontext(), profile(activities=acts) as prof:
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    # GPU-side events only: an op's own self device time repeats its kernels' (the first two records, of
    # 2026-12-04, summed both and report twice the kernel time; their plain / LM ratios are unaffected)
    gpu = {e.key: e.self_device_time_total / 1e3 for e in events if e.device_type == DeviceType.CUDA}
    launches = sum(e.count for e in events if "LaunchKernel" in e.key)
    totals = {
        "host_ms": sum(e.self_cpu_time_total for e in events) / 1e3,
        "kernel_ms": sum(gpu.values()),
        "launches": float(launches),
        "wall_ms": wall * 1e3,
    }
    return totals, {k: ms for k, ms in gpu.items() if ms > 0}


def top_ops(ops: dict[str, list[float]], n: int = 20) -> dict[str, float]:
    """The n most expensive ops by median self ms."""
    return dict(sorted(((k, statistics.median(s)) for k, s in ops.items()), key=lambda kv: -kv[1])[:n])


def cuda_run(
    variants: dict[str, tuple[str, bool]], amp: str, x: torch.Tensor, y: torch.Tensor, rounds: int
) -> dict[str, Any]:
    """:func:`profiled_cuda` of each variant, ``rounds`` times interleaved after 3 untimed steps; medians."""
    steps = {v: make_step(name, amp, x, y) for v, (name, _) in variants.items()}
    for v, step in steps.items():
        with old_lm_step() if variants[v][1] else contextlib.nullcontext():
            for _ in range(3):
                step()
    totals: dict[str, collections.defaultdict[str, list[float]]] = {v: collections.defaultdict(list) for v in steps}
    per_op: dict[str, collections.defaultdict[str, list[float]]] = {v: collections.defaultdict(list) for v in steps}
    for _ in range(rounds):
        for v, step in steps.items():
            tot, ops = profiled_cuda(step, variants[v][1])
            for key, val in tot.items():
                totals[v][key].append(val)
            for key, ms in ops.items():
                per_op[v][key].append(ms)
    med = {v: {key: statistics.median(s) for key, s in t.items()} for v, t in totals.items()}
    print(
        f"{amp:4s} {'/'.join(name for name, _ in variants.values())} batch {x.shape[0]}: "
        + "; ".join(
            f"{v} wall {m['wall_ms']:.2f} host {m['host_ms']:.2f} kernel {m['kernel_ms']:.2f} ms, "
            f"{m['launches']:.0f} launches"
            for v, m in med.items()
        ),
        flush=True,
    )
    return {"median": med, "samples": totals, "top_kernels_ms": {v: top_ops(ops) for v, ops in per_op.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--pairs", nargs="+", default=["preact_resnet20:lm_resnet20", "preact_resnet56:lm_resnet56"])
    p.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=("off", "bf16"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-old", action="store_true", help="skip the b2b71ed LM step")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), generator=torch.Generator().manual_seed(1)).to(device)
    res: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "provenance": provenance(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch_size,
        "rounds": args.rounds,
        "block_ops": list(BLOCK_OPS),
        "runs": {},
    }
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as odearch train on CUDA (configure_numerics)
    for amp in args.amp:
        for pair in args.pairs:
            plain, lm = pair.split(":")
            variants = {"plain": (plain, False), "lm": (lm, False), "lm_old": (lm, True)}
            if args.no_old:
                del variants["lm_old"]
            if device.type == "cuda":
                res["runs"][f"{amp}/{pair}"] = cuda_run(variants, amp, x, y, args.rounds)
                continue
            steps = {v: make_step(name, amp, x, y) for v, (name, _) in variants.items()}
            for v, step in steps.items():
                with old_lm_step() if variants[v][1] else contextlib.nullcontext():
                    step()
            per_op: dict[str, collections.defaultdict[str, list[float]]] = {
                v: collections.defaultdict(list) for v in variants
            }
            groups: dict[str, dict[str, list[float]]] = {v: {"block": [], "rest": [], "total": []} for v in variants}
            for _ in range(args.rounds):
                for v, step in steps.items():
                    ev = profiled(step, variants[v][1])
                    block = sum(ms for key, ms in ev.items() if is_block_op(key))
                    groups[v]["block"].append(block)
                    groups[v]["rest"].append(sum(ev.values()) - block)
                    groups[v]["total"].append(sum(ev.values()))
                    for key, ms in ev.items():
                        per_op[v][key].append(ms)
            med = {v: {g: statistics.median(s) for g, s in gs.items()} for v, gs in groups.items()}
            run = {
                "median_ms": med,
                "samples_ms": groups,
                "lm_extra_rest_ms": {v: med[v]["rest"] - med["plain"]["rest"] for v in variants if v != "plain"},
                "top_ops_ms": {v: top_ops(ops) for v, ops in per_op.items()},
            }
            res["runs"][f"{amp}/{pair}"] = run
            print(
                f"{amp:4s} {pair}: block ops "
                + " / ".join(f"{v} {med[v]['block']:.1f}" for v in variants)
                + " ms; rest "
                + " / ".join(f"{v} {med[v]['rest']:.1f}" for v in variants)
                + " ms; LM extra (rest) "
                + ", ".join(f"{v} {ms:.1f}" for v, ms in run["lm_extra_rest_ms"].items())
                + " ms",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
