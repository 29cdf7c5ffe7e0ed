"""Host allocator on CPU: page faults and kernel (system) CPU time of training steps, glibc as is vs odearch's
setting (``odearch.train.allocator``: freed memory kept in the process).

    python benchmarks/host_allocator.py                              # preact_resnet20, lm_resnet20; 4 rounds
    python benchmarks/host_allocator.py --models lm_resnet56 --steps 10 --rounds 2

Each measurement is its own process (mallopt is process-wide; ``ODEARCH_KEEP_FREED_MEMORY=0`` for glibc as is):
the training step of ``odearch train`` (`train_one_epoch`: forward, cross-entropy, backward, SGD momentum 0.9 wd
1e-4, channels_last, fp32) on one fixed random batch, ``--warmup`` untimed steps, then ``--steps`` steps with minor
page faults (``getrusage``), user and system CPU seconds and wall seconds per step. The data pipeline is not
included. Processes alternate (system, kept, system, kept, ...) per model, so drift hits both alike. Writes
``results/bench/host_allocator-<stamp>.json`` (command, provenance, settings, every sample, medians).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch

from odearch.train.provenance import provenance

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import itertools, json, os, resource, sys, time, torch
from odearch.train import TrainConfig, TrainStep, build_model, train_one_epoch
from odearch.train.numerics import configure_numerics
from odearch.train.provenance import provenance
name, batch, warmup, steps, threads = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
cfg = TrainConfig(model=name, batch_size=batch)
device = torch.device("cpu")
configure_numerics(cfg, device)
torch.manual_seed(0)
model = build_model(cfg).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (batch,))
step = TrainStep(opt, lambda s: 0.01, lambda: torch.autocast("cpu", enabled=False))
train_one_epoch(model, itertools.repeat((x, y), warmup), step, step=0)
r0, t0, w0 = resource.getrusage(resource.RUSAGE_SELF), os.times(), time.perf_counter()
train_one_epoch(model, itertools.repeat((x, y), steps), step, step=0)
r1, t1, w1 = resource.getrusage(resource.RUSAGE_SELF), os.times(), time.perf_counter()
print(json.dumps({"faults": (r1.ru_minflt - r0.ru_minflt) / steps, "user_s": (t1.user - t0.user) / steps,
                  "sys_s": (t1.system - t0.system) / steps, "wall_s": (w1 - w0) / steps,
                  "cpu_allocator": provenance(device)["cpu_allocator"]}))
"""


def measure(name: str, keep: bool, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "ODEARCH_KEEP_FREED_MEMORY": "1" if keep else "0"}
    cmd = [sys.executable, "-c", CHILD, name, *map(str, (args.batch_size, args.warmup, args.steps, args.threads))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=1800).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["preact_resnet20", "lm_resnet20"])
    p.add_argument("--rounds", type=int, default=4, help="processes per model and setting")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = p.parse_args()
    samples: dict[str, dict[str, list[dict[str, float]]]] = {m: {"system": [], "kept": []} for m in args.models}
    for _ in range(args.rounds):
        for name in args.models:
            for setting in ("system", "kept"):
                s = measure(name, setting == "kept", args)
                samples[name][setting].append(s)
                print(
                    f"{name:16s} {setting:6s}: {s['faults']:8.0f} minor faults/step, user {s['user_s']:.3f} s, "
                    f"sys {s['sys_s']:.3f} s, wall {s['wall_s']:.3f} s per step ({s['cpu_allocator']})",
                    flush=True,
                )
    keys = ("faults", "user_s", "sys_s", "wall_s")
    medians = {
        m: {st: {k: statistics.median(s[k] for s in ss) for k in keys} for st, ss in d.items()}
        for m, d in samples.items()
    }
    for m, d in medians.items():
        sy, kp = d["system"], d["kept"]
        share = {st: v["sys_s"] / (v["sys_s"] + v["user_s"]) for st, v in d.items()}
        print(
            f"{m}: median faults/step {sy['faults']:.0f} -> {kp['faults']:.0f}; sys share {share['system']:.1%} -> "
            f"{share['kept']:.1%}; wall/step {sy['wall_s']:.3f} -> {kp['wall_s']:.3f} s "
            f"(kept / system {kp['wall_s'] / sy['wall_s']:.3f})"
        )
    now = datetime.now()
    record = {
        "benchmark": "host_allocator",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": now.astimezone().isoformat(timespec="seconds"),
        "provenance": {**provenance(torch.device("cpu")), "cpu_count": os.cpu_count(), "threads": args.threads},
        "settings": {
            "models": args.models,
            "rounds": args.rounds,
            "steps": args.steps,
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            "precision": "float32",
            "channels_last": True,
            "seed": 0,
            "input": "one fixed random batch; data pipeline not included",
        },
        "samples": samples,
        "medians": medians,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"host_allocator-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
