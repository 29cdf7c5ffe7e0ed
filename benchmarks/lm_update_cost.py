"""What the LM update costs per training step, op by op, against the least any implementation must pay (issue 19).

    python benchmarks/lm_update_cost.py                               # lm_resnet20 and lm_resnet56, fp32 and bf16
    python benchmarks/lm_update_cost.py --models lm_resnet20 --amp off --reps 20

The whole-step LM / plain ratio on a shared 2-core machine moves by +-5 % from run to run; the LM's own extra work
is a few percent of the step. This benchmark measures that extra work directly instead: it records the state shapes
and dtypes of every LM step of one forward pass of the model (batch ``--batch-size``, channels_last, the autocast of
``--amp``), then times, on tensors of those shapes, each operation the LM step performs beyond its plain twin's
``u + r`` (the whole model's worth of each op; the minimum over ``--reps`` interleaved rounds):

- forward: ``v' = addcmul(r, v, k, value=-1)`` and ``u' = u + v'`` in place of the plain ``u' = u + r``;
- backward: the gradient accumulation of v' (it feeds u' and the next step: ``gu' + gv'``), ``dv = -k t`` and
  ``dk = -<t, v>`` (:func:`odearch.nn.lm_combine.lm_dk`); the plain twin's backward of ``u + r`` makes no pass.

It then sets them against three floors, in memory passes over the state beyond the plain step (now: 10, forward
``addcmul`` 3, backward gradient sum 3, -k t 2, dk 2), each priced at this machine's cost of one pass (a third of
the out-of-place ``add`` of the same tensors):

- ``eager_best`` (8): stock eager kernels, with a stage-level backward that folds -k_{n+1} t_{n+1} into the next
  gradient sum (one ``addcmul``, 3 passes, for the sum and -k t's 5): the least eager PyTorch's kernels allow;
- ``step_kernels`` (7): the velocity form with one fused kernel per step and direction - forward reads v and writes
  v' (2), backward reads the incoming gradient of v' and v and writes dv, summing dk in the same loop (3), and
  writes the gradient sum gu' + gv' that the residual branch reads (2);
- ``stage_kernels`` (4): the two-state form (1 - k) u_n + k u_{n-1} + r with native kernels that span the steps of
  a stage - forward reads u_{n-1} (1); backward forms gu_n from three gradients instead of two (1) and reads u_n
  and u_{n-1} for dk (2): the least carrying a second state can cost.

The isolated operations run on tensors that are not in cache, as the step's are only partly: their sum is an upper
estimate of what the LM pays inside a real step. The plain twin's training step (minimum of ``--steps`` steps,
alternating with the LM's) turns each cost into an LM / plain ratio. Writes
``results/bench/lm_update_cost-<device>-<stamp>.json`` (command, provenance, shapes, every timing, the implied
ratios now and at each floor).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from odearch.nn import lm_combine
from odearch.train import TrainConfig, TrainStep, build_model, train_one_epoch
from odearch.train.allocator import keep_freed_memory
from odearch.train.numerics import amp_dtype, configure_numerics
from odearch.train.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
TWINS = {"lm_resnet20": "preact_resnet20", "lm_resnet56": "preact_resnet56", "lm_resnet110": "preact_resnet110"}
BOUNDS = {"eager_best": 8, "step_kernels": 7, "stage_kernels": 4}  # extra memory passes per LM step (module docstring)


@contextlib.contextmanager
def recorded_lm_steps(out: list[tuple[torch.Size, torch.dtype]]) -> Iterator[None]:
    """Appends (state shape, state dtype) of every LM velocity step run inside the block."""
    velocity = lm_combine.LMVelocity
    apply = velocity.apply

    def recording(r: Tensor | None, v: Tensor, k: Tensor) -> Tensor:
        out.append((v.shape, v.dtype))
        return apply(r, v, k)

    velocity.apply = recording  # type: ignore[method-assign]
    try:
        yield
    finally:
        velocity.apply = apply  # type: ignore[method-assign]


def interleaved_ms(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, dict[str, float]]:
    """Minimum and median wall milliseconds of each of ``fns`` over ``reps`` rounds (each round calls every one once,
    in turn, after two untimed rounds). On a shared machine other load only adds time: the minimum is the estimate
    of a cost, the median says how noisy the rounds were."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(reps + 2):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: {"min": min(t), "median": statistics.median(t)} for name, t in times.items()}


def op_costs(steps: list[tuple[torch.Size, torch.dtype]], reps: int) -> dict[str, dict[str, float]]:
    """Milliseconds per forward + backward of the whole model's LM steps, per operation (see the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    k = torch.tensor(-0.05)
    states = []
    for shape, dtype in steps:
        u, r, v, g = (
            torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last) for _ in range(4)
        )
        states.append((u, r, v, g, k.to(dtype)))

    def each(op: Callable[..., Any]) -> Callable[[], None]:
        return lambda: [op(*s) for s in states] and None

    costs = {
        "plain_add": each(lambda u, r, v, g, kc: u + r),
        "fwd_addcmul": each(lambda u, r, v, g, kc: torch.addcmul(r, v, kc, value=-1.0)),
        "fwd_add": each(lambda u, r, v, g, kc: u + v),
        "bwd_grad_sum": each(lambda u, r, v, g, kc: g + r),
        "bwd_dv": each(lambda u, r, v, g, kc: torch.mul(g, kc.neg())),
        "bwd_dk": each(lambda u, r, v, g, kc: lm_combine.lm_dk(g, v, k, torch.float32)),
        "copy": each(lambda u, r, v, g, kc: u.clone()),
    }
    return interleaved_ms(costs, reps)


def training_step(name: str, amp: str, batch: int) -> Callable[[], Any]:
    """One training step of ``name`` as ``odearch train`` runs it (fixed random batch, channels_last, SGD)."""
    device = torch.device("cpu")
    dtype = amp_dtype(amp, device)
    cfg = TrainConfig(model=name, batch_size=batch)
    configure_numerics(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    step = TrainStep(opt, lambda s: 0.01, lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype is not None))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return lambda: train_one_epoch(model, itertools.repeat((x, y), 1), step, step=0)


def lm_steps_of(name: str, amp: str, batch: int) -> list[tuple[torch.Size, torch.dtype]]:
    """(shape, dtype) of each LM step of one forward pass of ``name`` under ``amp``."""
    dtype = amp_dtype(amp, torch.device("cpu"))
    model = build_model(TrainConfig(model=name, batch_size=batch)).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    steps: list[tuple[torch.Size, torch.dtype]] = []
    with recorded_lm_steps(steps), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None), torch.no_grad():
        model(x)
    return steps


def analyse(lm: str, amp: str, args: argparse.Namespace) -> dict[str, Any]:
    steps = lm_steps_of(lm, amp, args.batch_size)
    op_times = op_costs(steps, args.reps)
    step_times = interleaved_ms(
        {"plain": training_step(TWINS[lm], amp, args.batch_size), "lm": training_step(lm, amp, args.batch_size)},
        args.steps,
    )
    ops = {name: t["min"] for name, t in op_times.items()}
    plain_ms, lm_ms = step_times["plain"]["min"], step_times["lm"]["min"]
    extra_now = (
        ops["fwd_addcmul"] + ops["fwd_add"] - ops["plain_add"] + ops["bwd_grad_sum"] + ops["bwd_dv"] + ops["bwd_dk"]
    )
    per_pass = ops["plain_add"] / 3
    row = {
        "lm": lm,
        "plain": TWINS[lm],
        "amp": amp,
        "lm_steps": len(steps),
        "shapes": sorted({str(tuple(s)) for s, _ in steps}),
        "state_dtype": str(steps[0][1]).removeprefix("torch."),
        "ops_ms": op_times,
        "step_ms": step_times,
        "per_pass_ms": per_pass,
        "plain_step_ms": plain_ms,
        "lm_step_ms": lm_ms,
        "measured_ratio": plain_ms / lm_ms,
        "extra_now_ms": extra_now,
        "implied_ratio_now": plain_ms / (plain_ms + extra_now),
        "bounds": {
            name: {"passes": n, "extra_ms": n * per_pass, "ratio": plain_ms / (plain_ms + n * per_pass)}
            for name, n in BOUNDS.items()
        },
    }
    at = "; ".join(f"{name} {b['extra_ms']:5.2f} ms -> {b['ratio']:.3f}" for name, b in row["bounds"].items())
    print(
        f"{amp:5s} {lm:13s} {len(steps):3d} LM steps; plain step {plain_ms:6.1f} ms, LM {lm_ms:6.1f} ms "
        f"(measured {row['measured_ratio']:.3f}); LM extra now {extra_now:5.2f} ms -> "
        f"{row['implied_ratio_now']:.3f}; bounds: {at}",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lm_resnet20", "lm_resnet56"], choices=sorted(TWINS))
    p.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=("off", "bf16"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=30, help="interleaved rounds of the operations (minimum)")
    p.add_argument("--steps", type=int, default=15, help="timed training steps per model, alternating (minimum)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = keep_freed_memory()  # as odearch train does on CPU, before any timing: else fresh pages fault
    t0 = time.perf_counter()
    rows = [analyse(lm, amp, args) for amp in args.amp for lm in args.models]
    now = datetime.now()
    record = {
        "benchmark": "lm_update_cost",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": now.astimezone().isoformat(timespec="seconds"),
        "provenance": {
            **provenance(torch.device("cpu")),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_allocator": allocator,
        },
        "settings": {
            "batch_size": args.batch_size,
            "reps": args.reps,
            "steps": args.steps,
            "channels_last": True,
            "seed": 0,
            "seconds": time.perf_counter() - t0,
            "bounds_passes": BOUNDS,
        },
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lm_update_cost-cpu-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['settings']['seconds']:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
