"""Eager against ``torch.compile``: the training step of ``odearch train`` and ``odearch train --compile``, one process.

    python benchmarks/compile_step.py                                  # preact_resnet20, lm_resnet20, bf16 autocast
    python benchmarks/compile_step.py --models lm_resnet56 --amp off --threads 1

What runs: for each model, two copies built from the same seed, one eager and one ``torch.compile``'d (Inductor,
or ``--backend``), each taking the training step of ``odearch train`` (``train_one_epoch``: forward under the
autocast of ``--amp``, cross-entropy, backward, SGD momentum 0.9 wd 1e-4; channels_last) on one fixed random batch,
so that only the model is timed. The compiled copy's first steps (the compilation) are timed apart; then
``--repeats`` windows of ``--steps`` steps alternate eager, compiled, next model, so that drift and other load hit
both alike. Reports per model the median images/s of each and their ratio (compiled / eager, with the spread of the
per-window ratios), and writes ``results/bench/compile_step-<device>-<stamp>.json`` with the command, provenance
(commit, CPU model, torch version, threads), settings and every sample. The campaign's choice of ``--compile``
(docs/campaign-plan.md) rests on this record.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from odearch.train import TrainConfig, TrainStep, build_model, resolve_device, train_one_epoch
from odearch.train.numerics import amp_dtype, configure_numerics
from odearch.train.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
MODES = ("eager", "compiled")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["preact_resnet20", "lm_resnet20"])
    p.add_argument("--amp", default="bf16", choices=("off", "bf16", "fp16"), help="autocast precision (off: fp32)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backend", default="inductor", help="torch.compile backend (odearch train uses inductor)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=6, help="timed windows per model and mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model and mode first (the compilation)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench", help="folder of the JSON record")
    args = p.parse_args()
    if min(args.steps, args.repeats, args.warmup, args.batch_size) < 1:
        p.error("--steps, --repeats, --warmup and --batch-size must be positive")
    return args


def make_job(name: str, compiled: bool, args: argparse.Namespace, batch: Any, device: torch.device) -> Any:
    """run(k): k training steps of a fresh ``name`` (seed 0), compiled or eager."""
    cfg = TrainConfig(model=name, batch_size=args.batch_size, amp=args.amp, compile=compiled)
    configure_numerics(cfg, device)
    torch.manual_seed(cfg.seed)
    raw = build_model(cfg).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(raw.parameters(), lr=0.01, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model = torch.compile(raw, backend=args.backend) if compiled else raw
    dtype = amp_dtype(args.amp, device)
    step = TrainStep(opt, lambda s: 0.01, lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None))
    return lambda k: train_one_epoch(model, itertools.repeat(batch, k), step, step=0)


def timed(run: Any, k: int, device: torch.device) -> float:
    """Seconds of ``run(k)``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run(k)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device, memory_format=torch.channels_last)
    batch = (x, torch.randint(0, 10, (args.batch_size,), generator=gen).to(device))
    jobs = {(m, mode): make_job(m, mode == "compiled", args, batch, device) for m in args.models for mode in MODES}
    prov = provenance(device)
    print(f"{prov['device_name']} ({device}), {torch.get_num_threads()} threads, amp {args.amp}", flush=True)
    t_start = time.perf_counter()
    warm_s = {"/".join(key): timed(run, args.warmup, device) for key, run in jobs.items()}
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for _ in range(args.repeats):
        for key, run in jobs.items():
            samples[key].append(args.steps * args.batch_size / timed(run, args.steps, device))
    seconds = time.perf_counter() - t_start
    results = [summary(m, samples) for m in args.models]
    for r in results:
        print(
            f"{r['model']:16s} eager {r['eager_img_s']:7.1f}  compiled {r['compiled_img_s']:7.1f} img/s  "
            f"compiled / eager {r['speedup']:.3f} (windows {r['window_min']:.3f}..{r['window_max']:.3f})",
            flush=True,
        )
    now = datetime.now()
    record = {
        "benchmark": "compile_step",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": now.astimezone().isoformat(timespec="seconds"),
        "provenance": {**prov, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"}
        | {"channels_last": True, "seed": 0, "seconds": seconds, "warmup_seconds": warm_s},
        "samples_img_s": {"/".join(key): v for key, v in samples.items()},
        "models": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compile_step-{device.type}-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{seconds:.0f}s; wrote {path}")


def summary(model: str, samples: dict[tuple[str, str], list[float]]) -> dict[str, Any]:
    """Medians of both modes, their ratio and the per-window ratios of one model."""
    eager, compiled = samples[model, "eager"], samples[model, "compiled"]
    windows = [c / e for c, e in zip(compiled, eager, strict=True)]
    return {
        "model": model,
        "eager_img_s": statistics.median(eager),
        "compiled_img_s": statistics.median(compiled),
        "speedup": statistics.median(compiled) / statistics.median(eager),
        "window_ratios": windows,
        "window_min": min(windows),
        "window_max": max(windows),
    }


if __name__ == "__main__":
    main()
