"""The step-time cost of the host-allocator policy, per activation-memory mode, in one process (issue 37).

    PYTHONPATH=src python benchmarks/allocator_policy.py                       # rev_resnet56 reversible, lm_resnet56
    PYTHONPATH=src python benchmarks/allocator_policy.py --runs rev_resnet110:reversible --rounds 3

For each ``model:mode``: one process builds the model as ``odearch train`` does (``build_model``, the mode set,
channels_last, fp32, SGD momentum 0.9 wd 1e-4, the training step of ``train_one_epoch`` on one fixed random batch)
and alternates the two policies of :mod:`odearch.train.allocator` round by round (keep, return, keep, return, ...):
after each switch one untimed step, then ``--steps`` timed steps with their minor page faults. The ratio
return / keep of the median step times is the cost of returning freed memory in that mode; drift of the machine's
load hits both alike. Writes ``results/bench/allocator_policy-<stamp>.json`` (command, provenance, settings, every
step, medians, ratios).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from odearch.train import TrainConfig, TrainStep, build_model, train_one_epoch
from odearch.train.allocator import apply_policy
from odearch.train.numerics import configure_numerics
from odearch.train.provenance import provenance

REPO = Path(__file__).resolve().parents[1]


def measure(name: str, mode: str, args: argparse.Namespace) -> dict:
    """Alternating keep / return in this process; per policy the step seconds and minor faults."""
    cfg = TrainConfig(model=name, batch_size=args.batch_size, memory=mode)
    device = torch.device("cpu")
    configure_numerics(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    step = TrainStep(opt, lambda s: 0.01, lambda: torch.autocast("cpu", enabled=False))
    samples: dict[str, list[dict[str, float]]] = {"keep": [], "return": []}
    for _ in range(args.rounds):
        for policy in ("keep", "return"):
            apply_policy(policy)
            train_one_epoch(model, itertools.repeat((x, y), 1), step, step=0)  # settle after the switch
            for _ in range(args.steps):
                f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
                train_one_epoch(model, itertools.repeat((x, y), 1), step, step=0)
                seconds = time.perf_counter() - t0
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
                samples[policy].append({"seconds": seconds, "faults": faults})
            print(
                f"{name}:{mode} {policy:6s} {statistics.median(s['seconds'] for s in samples[policy]):.3f} s/step",
                flush=True,
            )
    medians = {p: {k: statistics.median(s[k] for s in ss) for k in ("seconds", "faults")} for p, ss in samples.items()}
    ratio = medians["return"]["seconds"] / medians["keep"]["seconds"]
    return {"model": name, "memory": mode, "samples": samples, "medians": medians, "return_over_keep": ratio}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--runs",
        nargs="+",
        default=["rev_resnet56:reversible", "lm_resnet56:recompute", "lm_resnet56:store"],
        metavar="MODEL:MODE",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = [measure(*run.split(":"), args) for run in args.runs]
    for r in results:
        m = r["medians"]
        print(
            f"{r['model']}:{r['memory']}: keep {m['keep']['seconds']:.3f} s ({m['keep']['faults']:.0f} faults), "
            f"return {m['return']['seconds']:.3f} s ({m['return']['faults']:.0f} faults): x{r['return_over_keep']:.3f}"
        )
    now = datetime.now()
    record = {
        "benchmark": "allocator_policy",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": now.astimezone().isoformat(timespec="seconds"),
        "provenance": {**provenance(torch.device("cpu")), "threads": args.threads},
        "settings": {
            "rounds": args.rounds,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": 0,
            "precision": "float32",
            "channels_last": True,
            "input": "one fixed random batch",
        },
        "wall_seconds": time.perf_counter() - t0,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"allocator_policy-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
