"""Forward + backward time of one training step per model, on the device at hand (not a test).

    python benchmarks/forward_backward.py --models resnet20 lm_resnet20 --batch-size 32 --repeats 5

Prints a table and writes ``results/bench/forward_backward-<device>-<YYYYMMDD-HHMMSS>.json`` with the command,
commit, device, torch version, every repetition and the medians. Each repetition times
``model(x).sum().backward()`` on random CIFAR-sized inputs after one warm-up step (SGD-free: the model and its
gradients only).
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

import odearch
from odearch.train.provenance import provenance

DEFAULT_MODELS = [
    "resnet20",
    "preact_resnet20",
    "lm_resnet20",
    "rk2_resnet20",
    "rk4_resnet20",
    "ab2_resnet20",
    "poly2_resnet20",
    "rev_resnet20",
    "fractal_resnet20",
    "resnet56",
    "preact_resnet56",
    "lm_resnet56",
    "resnet110",
    "preact_resnet110",
    "lm_resnet110",
    "preact_resnet164",
    "lm_resnet164",
    "resnext29_8x64d",
    "lm_resnext29_8x64d",
]


def time_step(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    """Seconds per forward + backward, one warm-up step first."""
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args()
    device = torch.device(args.device)
    prov = provenance(device)  # taken before the run: the commit that is timed, not the one at the end
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        model = odearch.create_model(name, num_classes=10).to(device).train()
        x = torch.randn(args.batch_size, 3, 32, 32, device=device)
        times = time_step(model, x, args.repeats)
        row = {
            "model": name,
            "params": sum(p.numel() for p in model.parameters()),
            "seconds": times,
            "median_s": statistics.median(times),
        }
        rows.append(row)
        print(f"{name:24s} {row['params'] / 1e6:8.3f}M  {row['median_s'] * 1e3:9.1f} ms  (min {min(times) * 1e3:.1f})")
    record = {
        "command": " ".join([sys.executable, *sys.argv]),
        **prov,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")  # one file per run: never overwrite a record
    path = args.out / f"forward_backward-{device.type}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
