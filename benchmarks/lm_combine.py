"""The LM step's own cost, isolated: a chain of residual steps, forward and backward, plain vs LM (issue 19).

    python benchmarks/lm_combine.py                      # fp32 and bf16, the three CIFAR stage shapes at batch 128
    python benchmarks/lm_combine.py --repeats 10 --steps 4

A whole training step on a shared 2-core machine moves by +-5 % between identical steps, more than the LM step costs;
this times the state updates alone. Each chain has ``--steps`` steps whose residual is r_n = c u_n (one multiply: the
same in every chain, standing in for f_n and its input gradient) and runs forward and backward from one leaf:

- plain (forward Euler, ResNet): u_{n+1} = u_n + r_n
- LM (``odearch.nn.stage``, velocity form): v_{n+1} = r_n - k_n v_n, u_{n+1} = u_n + v_{n+1}
- LM two-state (b2b71ed, ``lm_step.old_lm_step``): u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + r_n

The chains run interleaved ``--repeats`` times; the LM's extra cost per step is (LM - plain) / (steps - 1), from the
minimum over repeats (the least disturbed run of identical work) and, for the spread, from the median. Writes
``results/bench/lm_combine-cpu-<stamp>.json`` with the command and provenance.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from torch import Tensor

from odearch.nn.lm_combine import LMVelocity
from odearch.train.provenance import provenance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_step import _OldLMCombine

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)]


def chain(kind: str, u: Tensor, cs: list[Tensor], ks: list[Tensor]) -> Tensor:
    """The end state of one chain of len(cs) steps (step 0 is forward Euler in every kind, as in a stage)."""
    if kind == "plain":
        for c in cs:
            u = u + u * c
        return u
    if kind == "lm_two_state":
        u_prev, u = u, u + u * cs[0]
        for c, k in zip(cs[1:], ks):
            u_prev, u = u, _OldLMCombine.apply(u, u_prev, k, u * c)
        return u
    v = u * cs[0]
    u = u + v
    for c, k in zip(cs[1:], ks):
        v = LMVelocity.apply(u * c, v, k)
        u = u + v
    return u


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = ("plain", "lm", "lm_two_state")
    rows = []
    t_start = time.perf_counter()
    for dtype in (torch.float32, torch.bfloat16):
        for shape in SHAPES:
            gen = torch.Generator().manual_seed(0)
            u0 = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
            u0.requires_grad_()
            g = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
            cs = [torch.tensor(0.01, dtype=dtype) for _ in range(args.steps)]
            ks = [torch.tensor(-0.05, requires_grad=True) for _ in range(args.steps - 1)]
            ms: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(args.repeats):
                for kind in kinds:
                    t0 = time.perf_counter()
                    chain(kind, u0, cs, ks).backward(g)
                    ms[kind].append((time.perf_counter() - t0) * 1e3)
            best = {kind: min(v) for kind, v in ms.items()}
            med = {kind: statistics.median(v) for kind, v in ms.items()}
            n = args.steps - 1
            row = {
                "dtype": str(dtype).removeprefix("torch."),
                "shape": list(shape),
                "min_ms": best,
                "median_ms": med,
                "extra_ms_per_lm_step_min": {k: (best[k] - best["plain"]) / n for k in kinds[1:]},
                "extra_ms_per_lm_step_median": {k: (med[k] - med["plain"]) / n for k in kinds[1:]},
                "samples_ms": ms,
            }
            rows.append(row)
            e, m = row["extra_ms_per_lm_step_min"], row["extra_ms_per_lm_step_median"]
            print(
                f"{row['dtype']:8s} {shape}: plain step {best['plain'] / args.steps:.3f} ms; LM extra per step "
                f"{e['lm']:.3f} ms (two-state {e['lm_two_state']:.3f}) by min, {m['lm']:.3f} "
                f"({m['lm_two_state']:.3f}) by median",
                flush=True,
            )
    now = datetime.now()
    record = {
        "benchmark": "lm_combine",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": now.astimezone().isoformat(timespec="seconds"),
        "provenance": {**provenance(torch.device("cpu")), "threads": torch.get_num_threads()},
        "settings": {
            "steps": args.steps,
            "repeats": args.repeats,
            "channels_last": True,
            "seed": 0,
            "seconds": time.perf_counter() - t_start,
        },
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lm_combine-cpu-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
