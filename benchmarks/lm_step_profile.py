"""Where the LM step's time goes: per-op profile (torch.profiler, self CPU time per training step) of the twins.

    python benchmarks/lm_step_profile.py results/bench/lm_step-profile-cpu-<date>.json
    python benchmarks/lm_step_profile.py OUT.json --pairs preact_resnet56:lm_resnet56 --amp bf16 --rounds 6

Batch 128, channels_last, one fixed random batch, SGD momentum 0.9 wd 1e-4; for each precision and pair: one untimed
step of each model, then ``--rounds`` rounds of one profiled step of the plain model, the LM model and the LM model
with b2b71ed's two-state LM step (``lm_step.old_lm_step``), interleaved so that load and drift hit all three alike.

Ops are split into the residual functions' own ops (convolution, batch norm, ReLU and their backward: identical work
in the twins, so their differences are noise) and the rest (state updates, the LM step, gradient accumulation, the
optimizer). The LM's cost is the rest's excess over the plain twin's: a whole-step comparison on a shared 2-core
machine moves by +-5 % between identical steps, this split does not. Writes the medians per group, the 20 most
expensive ops of each model and the command and provenance; prints a summary.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from odearch.train import TrainConfig, build_model
from odearch.train.provenance import provenance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_step import old_lm_step

BLOCK_OPS = ("convolution", "batch_norm", "clamp_min", "threshold_backward", "relu", "Convolution", "NativeBatchNorm",
             "ReluBackward", "conv2d")  # fmt: skip


def is_block_op(key: str) -> bool:
    """True for an op of the residual functions themselves (conv, BN, ReLU), the same work in both twins."""
    return any(b in key for b in BLOCK_OPS)


def make_step(name: str, amp: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(0)
    m = build_model(TrainConfig(model=name)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
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


def top_ops(ops: dict[str, list[float]], n: int = 20) -> dict[str, float]:
    """The n most expensive ops by median self ms."""
    return dict(sorted(((k, statistics.median(s)) for k, s in ops.items()), key=lambda kv: -kv[1])[:n])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--pairs", nargs="+", default=["preact_resnet20:lm_resnet20", "preact_resnet56:lm_resnet56"])
    p.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=("off", "bf16"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), generator=torch.Generator().manual_seed(1))
    res: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv]),
                           "provenance": provenance(torch.device("cpu")), "threads": torch.get_num_threads(),
                           "batch": 128, "rounds": args.rounds, "block_ops": list(BLOCK_OPS), "runs": {}}  # fmt: skip
    for amp in args.amp:
        for pair in args.pairs:
            plain, lm = pair.split(":")
            variants = {"plain": (plain, False), "lm": (lm, False), "lm_old": (lm, True)}
            steps = {v: make_step(name, amp, x, y) for v, (name, _) in variants.items()}
            for v, step in steps.items():
                with old_lm_step() if variants[v][1] else contextlib.nullcontext():
                    step()
            per_op: dict[str, collections.defaultdict[str, list[float]]] = {
                v: collections.defaultdict(list) for v in variants}  # fmt: skip
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
            run = {"median_ms": med, "samples_ms": groups,
                   "lm_extra_rest_ms": {v: med[v]["rest"] - med["plain"]["rest"] for v in ("lm", "lm_old")},
                   "top_ops_ms": {v: top_ops(ops) for v, ops in per_op.items()}}  # fmt: skip
            res["runs"][f"{amp}/{pair}"] = run
            print(f"{amp:4s} {pair}: block ops " + " / ".join(f"{v} {med[v]['block']:.1f}" for v in variants)
                  + " ms; rest " + " / ".join(f"{v} {med[v]['rest']:.1f}" for v in variants)
                  + f" ms; LM extra (rest) {run['lm_extra_rest_ms']['lm']:.1f} ms, "
                  f"old {run['lm_extra_rest_ms']['lm_old']:.1f} ms", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
