"""Eager vs ``torch.compile(fullgraph=True)`` training-step time of a stochastic-depth model (not a test).

    python benchmarks/compile_sd.py --model lm_resnet56_sd --batch-size 32 --steps 10

One SGD step = forward, cross-entropy, backward, ``optimizer.step()`` on random CIFAR-sized inputs. Eager mode
draws each block's per-batch gate on the CPU and skips a dropped block; compiled mode (inductor, one graph, no
graph break) multiplies every block by a 0-d tensor gate eta / p (:func:`odearch.nn.drop.batch_gate_tensor`), so
it evaluates every block. Records the first compiled step (compilation included), then the median of ``--steps``
timed steps of each mode after ``--warmup`` untimed ones, and the number of graphs dynamo compiled (1 means no
recompilation across different draws). Writes ``results/bench/compile_sd-<device>-<YYYYMMDD-HHMMSS>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

import odearch
from odearch.train.provenance import provenance


def step_times(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> list[float]:
    """Seconds of each of ``steps`` training steps."""
    times = []
    for _ in range(steps):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lm_resnet56_sd")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args()
    device = torch.device(args.device)
    prov = provenance(device)
    wall = time.perf_counter()
    torch.manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    rows = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(args.seed)
        model = odearch.create_model(args.model).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        run = torch.compile(model, fullgraph=True) if mode == "compiled" else model
        torch._dynamo.reset()
        first = step_times(run, opt, x, y, 1)[0]
        step_times(run, opt, x, y, args.warmup)
        times = step_times(run, opt, x, y, args.steps)
        rows[mode] = {"first_step_s": first, "seconds": times, "median_s": statistics.median(times)}
        if mode == "compiled":
            rows[mode]["graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        print(f"{mode:9s} first step {first:8.2f} s   median {rows[mode]['median_s'] * 1e3:8.1f} ms")
    record = {
        "command": " ".join([sys.executable, *sys.argv]),
        **prov,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "seed": args.seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - wall,
        "note": "shared machine: other processes (a training run, other sessions) used the same CPU cores",
        "rows": rows,
        "compiled_over_eager": rows["compiled"]["median_s"] / rows["eager"]["median_s"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = args.out / f"compile_sd-{device.type}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
