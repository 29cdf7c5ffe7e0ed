"""The cost side of the paper's compression claim (issue 32): LM-ResNet-56 against ResNet-110 and its plain twin.

    PYTHONPATH=src python benchmarks/compression_cost.py                     # lm_resnet56, preact_resnet56, resnet110
    PYTHONPATH=src python benchmarks/compression_cost.py --rounds 5 --threads 2

Per model: parameters; forward FLOPs of one 32 x 32 image counted by ``torch.utils.flop_counter.FlopCounterMode``
(a real counter: convolutions and matrix products, 2 per multiply-add); the training step's time (forward,
cross-entropy, backward, SGD momentum; batch ``--batch-size``, fp32, channels_last) measured in ONE process with the
models interleaved round by round, so the ratios are fair on a shared machine (the seconds themselves are not); and
the process's peak resident size over a few training steps above the size after building the model, each model in a
fresh process (with the allocator policy ``odearch train`` uses for it). Writes
``results/bench/compression_cost-<stamp>.json`` (command, provenance, settings, every sample, medians, ratios).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
MODELS = ("lm_resnet56", "preact_resnet56", "resnet110")


def forward_flops(name: str) -> int:
    """FLOPs of one forward pass of one CIFAR image (eval mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    import odearch

    model = odearch.create_model(name).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return int(counter.get_total_flops())


def step_times(names: tuple[str, ...], args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds of ``--steps`` training steps per model and round, the models interleaved in this process."""
    import odearch

    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    nets = {n: odearch.create_model(n).to(memory_format=torch.channels_last).train() for n in names}
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4) for n, m in nets.items()}

    def step(n: str) -> None:
        opts[n].zero_grad(set_to_none=True)
        F.cross_entropy(nets[n](x), y).backward()
        opts[n].step()

    for n in names:  # warm-up: gradients and momentum buffers exist from here on
        step(n)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(n)
            samples[n].append((time.perf_counter() - t0) / args.steps)
    return samples


def peak_memory(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Process peak RSS over one warm-up and ``--steps`` training steps above the built model (a fresh process)."""
    code = f"""
import json, sys, torch, torch.nn.functional as F
from pathlib import Path
import odearch
from odearch.nn import get_memory
from odearch.train.allocator import apply_policy, keep_freed_memory, policy_for
from odearch.train.peakmem import peak_rss_mib
keep_freed_memory()
torch.set_num_threads({args.threads})
model = odearch.create_model({name!r}).to(memory_format=torch.channels_last).train()
apply_policy(policy_for("auto", get_memory(model)))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn({args.batch_size}, 3, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, ({args.batch_size},))
Path("/proc/self/clear_refs").write_text("5")
built = peak_rss_mib()
for _ in range({args.steps} + 1):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
print(json.dumps({{"built_mib": built, "peak_mib": peak_rss_mib()}}))
"""
    env_cmd = [sys.executable, "-c", code]
    out = subprocess.run(env_cmd, capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO / "src")})
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    return {**rec, "step_peak_above_built_mib": rec["peak_mib"] - rec["built_mib"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="timed steps per model and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from odearch import create_model
    from odearch.train.provenance import provenance

    t0 = time.perf_counter()
    names = tuple(args.models)
    rows = {
        n: {"params": sum(q.numel() for q in create_model(n).parameters()), "forward_flops": forward_flops(n)}
        for n in names
    }
    samples = step_times(names, args)
    for n in names:
        rows[n]["step_seconds_median"] = statistics.median(samples[n])
        rows[n]["memory"] = peak_memory(n, args)
        print(
            f"{n}: {rows[n]['params']:,} params, {rows[n]['forward_flops'] / 1e6:.1f} MFLOPs/image, "
            f"{rows[n]['step_seconds_median']:.3f} s/step, peak +{rows[n]['memory']['step_peak_above_built_mib']:.0f}"
            " MiB",
            flush=True,
        )
    ref = names[0]
    ratios = {
        n: {k: rows[n][k] / rows[ref][k] for k in ("params", "forward_flops", "step_seconds_median")} for n in names
    }
    now = datetime.now()
    record = {
        "benchmark": "compression_cost",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": now.astimezone().isoformat(timespec="seconds"),
        "provenance": {**provenance(torch.device("cpu")), "threads": args.threads},
        "settings": {
            "batch_size": args.batch_size,
            "steps": args.steps,
            "rounds": args.rounds,
            "seed": 0,
            "precision": "float32",
            "channels_last": True,
        },
        "models": rows,
        "step_samples": samples,
        "ratios_to_first": ratios,
        "wall_seconds": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compression_cost-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
