"""LM / plain training-step throughput of the twins, per precision, eager and compiled (issue 19).

    python benchmarks/lm_step.py                                   # fp32 and bf16 autocast, eager, with the old LM
    python benchmarks/lm_step.py --compile                         # the same, torch.compile'd (no old variant)
    python benchmarks/lm_step.py --amp off --steps 2 --repeats 2 --warmup 1 --pairs preact_resnet20:lm_resnet20
    python benchmarks/lm_step.py --no-old --fused                  # eager, plus the LM update as one fused kernel

What runs: the training step of ``odearch train`` (`train_one_epoch`: forward under the autocast of ``--amp``,
cross-entropy, backward, SGD momentum 0.9 wd 1e-4; channels_last) on one fixed random batch, so that only the model
is timed (`throughput.py` times the data pipeline too). For every precision, each pair's plain and LM model runs
``--warmup`` untimed steps, then ``--repeats`` timed windows of ``--steps`` steps, interleaved (plain, LM, old LM,
next pair, next precision, then again), so drift and other load hit all of them alike. ``old LM`` (eager only) is
the same LM model with the LM step of commit b2b71ed swapped in (the two-state form (1 - k) u_n + k u_{n-1} + r and
its hand-written backward; ``odearch`` now steps in velocity form), kept below verbatim, so old and new are compared
in one process. ``fused LM`` (``--fused``, eager only) is the LM model with each step's update v_{n+1} = r - k v_n,
u_{n+1} = u_n + v_{n+1} compiled by Inductor (``fullgraph``, static shapes; the rest of the model eager), for it to
fuse into as few kernels per direction as it can: whether a per-step fused update pays in an eager model.

Reports the median images/s, the LM / plain ratio of the medians (target >= 0.97), the spread of the per-window
ratios (window i of LM over window i of its plain twin) and the same ratio by process CPU time (images per CPU
second: less sensitive to other processes on a shared machine, meaningful with ``--threads 1``); writes
``results/bench/lm_step-<device>-<stamp>.json`` with the command, provenance (commit, CPU model, torch version,
threads), settings and every sample.
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
from odearch.nn import stage as stage_mod
from odearch.train import TrainConfig, TrainStep, build_model, resolve_device, train_one_epoch
from odearch.train.numerics import amp_dtype, configure_numerics
from odearch.train.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = ["preact_resnet20:lm_resnet20", "preact_resnet56:lm_resnet56"]
LM_TARGET = 0.97


# The LM step of commit b2b71ed, verbatim: the two-state form (1 - k) u_n + k u_{n-1} + r (lerp, then add) with the
# hand-written backward g (1 - k), g k, <g, u_{n-1} - u_n>.
def _old_lm_dk(g: Tensor, u: Tensor, u_prev: Tensor, k: Tensor, scratch: Tensor | None = None) -> Tensor:
    """dk = sum of g (u_prev - u) over the dimensions k broadcasts along, in k's shape and dtype.

    The difference u_prev - u is taken first, elementwise (exact where the two states are close, by Sterbenz's
    lemma), and the sum is accumulated in float32 or better: float32 / float64 states reduce with one BLAS dot
    <g, u_prev - u>; bfloat16 / float16 states (autocast) form g (u_prev - u) in their dtype and sum it in float32.
    The former dot(g, u_prev) - dot(g, u) rounded each dot to bf16 before the subtraction and lost dk entirely
    when the two dots nearly cancel. ``scratch``: a tensor like g to hold the difference (overwritten), or None.
    Under ``torch.compile`` the same sum is written functionally (no views, no ``out=``): inductor fuses it.
    """
    acc = torch.promote_types(g.dtype, torch.float32)
    lead = g.dim() - k.dim()
    dims = [i for i in range(g.dim()) if i < lead or k.shape[i - lead] == 1]
    if torch.compiler.is_compiling():
        return (g * (u_prev - u)).sum(dims, dtype=acc).view(k.shape).to(k.dtype)
    d = torch.sub(u_prev, u) if scratch is None else torch.sub(u_prev, u, out=scratch)
    if k.dim() == 0:
        fg, fd = lm_combine._flat(g), lm_combine._flat(d)
        if fg is not None and fd is not None and g.stride() == d.stride():
            if fg.dtype == acc:
                return torch.dot(fg, fd).to(k.dtype)
            return fd.mul_(fg).sum(dtype=acc).to(k.dtype)
    return d.mul_(g).sum(dims, dtype=acc).view(k.shape).to(k.dtype)


class _OldLMCombine(torch.autograd.Function):
    """out = (1 - k) u + k u_prev + r, the LM update with its residual r = (eta_n / p_n) f_n(u_n) already evaluated.

    ``k`` keeps its own dtype (the float32 parameter under autocast); the update runs in the states' dtype.
    Backward: du = g (1 - k), du_prev = g k, dr = g, dk = sum g (u_prev - u) accumulated in float32 or better and
    returned in k's dtype (:func:`odearch.nn.lm_combine.lm_dk`). Autograd through ``lerp`` would reduce dk with a
    ``sum`` over a
    channels_last tensor (4.4 ms per call on a 2-core CPU at 128x16x32x32) and in the states' dtype; a bf16
    ``torch.dot`` is both slow on CPU (2.4 ms per call) and inexact (each dot rounded before the subtraction).
    """

    @staticmethod
    def forward(ctx: Any, u: Tensor, u_prev: Tensor, k: Tensor, r: Tensor | None) -> Tensor:
        ctx.save_for_backward(u, u_prev, k)
        ctx.has_r = r is not None
        out = torch.lerp(u, u_prev, k.to(u.dtype))
        return out if r is None else out.add_(r)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        u, u_prev, k = ctx.saved_tensors
        need_u, need_prev, need_k, need_r = ctx.needs_input_grad
        kc = k.to(g.dtype)
        grad_u = g * (1 - kc) if need_u else None
        scratch = None  # eager: holds u_prev - u for dk, then du_prev (one allocation for both)
        if need_prev and not torch.compiler.is_compiling():
            scratch = torch.empty_like(g)
        grad_k = _old_lm_dk(g, u, u_prev, k, scratch) if need_k else None
        grad_prev = (g * kc if scratch is None else torch.mul(g, kc, out=scratch)) if need_prev else None
        return grad_u, grad_prev, grad_k, (g if need_r and ctx.has_r else None)


def _old_lm_run(
    self: Any, stage: Any, fns: list[Any], start: Any, gates: list[Any] | None, noisy: bool
) -> tuple[Tensor, Tensor]:
    u, u_prev, first = start.u, start.history, start.first
    if first == 0:  # starter: one forward Euler step, u_{-1} := u_0
        g = stage_mod.step_gate(gates, 0)
        r0 = None if stage_mod.is_dropped(g) else fns[0](u)
        u_prev, u = u, stage.end_step(u if r0 is None else stage_mod.axpy(u, 1.0, r0, g), noisy)
        first = 1
    assert u_prev is not None
    for m in range(first, len(fns)):
        k = self.coefficients(stage)[m - 1]
        g = stage_mod.step_gate(gates, m)
        r = None if stage_mod.is_dropped(g) else stage_mod._scaled(fns[m](u), g)  # type: ignore[operator]
        u_prev, u = u, stage.end_step(_OldLMCombine.apply(u, u_prev, k, r), noisy)
    return u, u_prev


@contextlib.contextmanager
def lm_run_swapped(run: Callable[..., tuple[Tensor, Any]]) -> Iterator[None]:
    """Swap ``run`` in for ``odearch.nn.stage.LMRunner.run`` (eager models look it up at every call)."""
    saved = stage_mod.LMRunner.run
    stage_mod.LMRunner.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        stage_mod.LMRunner.run = saved  # type: ignore[method-assign]


def old_lm_step() -> contextlib.AbstractContextManager[None]:
    """b2b71ed's two-state LM step swapped in."""
    return lm_run_swapped(_old_lm_run)


def _fused_update(u: Tensor, r: Tensor, v: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """(u + v', v') with v' = r - k v: the LM velocity step and its addition, for Inductor to fuse."""
    v_new = torch.addcmul(r, v, k.to(v.dtype), value=-1.0)
    return u + v_new, v_new


_FUSED = torch.compile(_fused_update, dynamic=False, fullgraph=True)


def _fused_lm_run(
    self: Any, stage: Any, fns: list[Any], start: Any, gates: list[Any] | None, noisy: bool
) -> tuple[Tensor, Tensor]:
    """``LMRunner.run`` of the plain path (no stochastic depth, no noise, identity stage end) with the update fused;
    anything else is refused rather than measured wrongly."""
    if gates is not None or start.gate is not None or noisy or stage.post_act is not None:
        raise NotImplementedError("--fused measures the plain LM path only")
    if start.first == 0:  # starter: one forward Euler step, u_{-1} := u_0, so v_1 = f_0(u_0)
        v = fns[0](start.u)
        u_prev, u = start.u, start.u + v
    else:  # after a transition u_1 = P(u_0) + f_0(u_0) with history P(u_0) (or Q(u_0))
        u, u_prev = start.u, start.history
        plain_history = stage.history_shortcut is None and start.residual is not None
        v = start.residual if plain_history else u - u_prev
    ks = self.coefficients(stage)
    for m in range(1, len(fns)):
        u_prev, (u, v) = u, _FUSED(u, fns[m](u), v, ks[m - 1])
    return u, u_prev


def fused_lm_step() -> contextlib.AbstractContextManager[None]:
    """The LM step with its update fused by Inductor swapped in."""
    return lm_run_swapped(_fused_lm_run)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, metavar="PLAIN:LM")
    p.add_argument(
        "--amp",
        nargs="+",
        default=["off", "bf16"],
        choices=("off", "bf16", "fp16"),
        help="autocast precisions to measure (off: fp32)",
    )
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compile", action="store_true", help="torch.compile the models (as `odearch train --compile`)")
    p.add_argument("--no-old", action="store_true", help="skip the b2b71ed LM step (always skipped when compiled)")
    p.add_argument("--fused", action="store_true", help="add the LM with its update fused by Inductor (eager only)")
    p.add_argument("--steps", type=int, default=8, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows per model and precision")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model and precision first")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench", help="folder of the JSON record")
    args = p.parse_args()
    args.pairs = [tuple(s.split(":")) for s in args.pairs]
    if any(len(pair) != 2 for pair in args.pairs) or min(args.steps, args.repeats, args.batch_size) < 1:
        p.error("--pairs takes PLAIN:LM items; --steps, --repeats and --batch-size must be positive")
    return args


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device, memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    with_old = not (args.compile or args.no_old)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # jobs[(amp, model, variant)] = run(k): k training steps
    jobs: dict[tuple[str, str, str], Callable[[int], Any]] = {}
    for amp in args.amp:
        dtype = amp_dtype(amp, device)
        autocast = lambda d=dtype: torch.autocast(device.type, dtype=d, enabled=d is not None)  # noqa: E731
        for name in dict.fromkeys(itertools.chain(*args.pairs)):
            cfg = TrainConfig(model=name, batch_size=args.batch_size, compile=args.compile)
            configure_numerics(cfg, device)
            torch.manual_seed(cfg.seed)
            raw = build_model(cfg).to(device, memory_format=torch.channels_last)
            opt = torch.optim.SGD(raw.parameters(), lr=0.01, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            model = torch.compile(raw) if args.compile else raw

            def run(k: int, model: Any = model, opt: Any = opt, autocast: Any = autocast) -> Any:
                step = TrainStep(opt, lambda s: 0.01, autocast)
                return train_one_epoch(model, itertools.repeat((x, y), k), step, step=0)

            jobs[amp, name, "new"] = run
            if with_old and name.startswith("lm_"):

                def run_old(k: int, run: Callable[[int], Any] = run) -> Any:
                    with old_lm_step():
                        return run(k)

                jobs[amp, name, "old"] = run_old
            if args.fused and not args.compile and name.startswith("lm_"):

                def run_fused(k: int, run: Callable[[int], Any] = run) -> Any:
                    with fused_lm_step():
                        return run(k)

                jobs[amp, name, "fused"] = run_fused

    threads = torch.get_num_threads()
    prov = provenance(device)
    print(
        f"{prov['device_name']} ({device}), {threads} threads, batch {args.batch_size}, warm-up {args.warmup}, "
        f"{args.repeats} x {args.steps} steps{', compiled' if args.compile else ''}",
        flush=True,
    )
    t_start = time.perf_counter()
    warm_s = {}
    for key, run in jobs.items():
        t0 = time.perf_counter()
        run(args.warmup)
        warm_s["/".join(key)] = time.perf_counter() - t0
    samples: dict[tuple[str, str, str], list[float]] = {key: [] for key in jobs}
    cpu_samples: dict[tuple[str, str, str], list[float]] = {key: [] for key in jobs}
    for _ in range(args.repeats):
        for key, run in jobs.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            run(args.steps)
            sync()
            samples[key].append(args.steps * args.batch_size / (time.perf_counter() - t0))
            cpu_samples[key].append(args.steps * args.batch_size / (time.process_time() - c0))
    seconds = time.perf_counter() - t_start
    med = {key: statistics.median(v) for key, v in samples.items()}
    cpu_med = {key: statistics.median(v) for key, v in cpu_samples.items()}

    results = []
    for amp in args.amp:
        for plain, lm in args.pairs:
            for variant in ("new", "old", "fused"):
                if (amp, lm, variant) not in jobs:
                    continue
                per_window = [a / b for a, b in zip(samples[amp, lm, variant], samples[amp, plain, "new"])]
                ratio = med[amp, lm, variant] / med[amp, plain, "new"]
                cpu_ratio = cpu_med[amp, lm, variant] / cpu_med[amp, plain, "new"]
                results.append(
                    {
                        "amp": amp,
                        "plain": plain,
                        "lm": lm,
                        "lm_step": variant,
                        "compile": args.compile,
                        "plain_img_s": med[amp, plain, "new"],
                        "lm_img_s": med[amp, lm, variant],
                        "ratio": ratio,
                        "window_ratios": per_window,
                        "window_ratio_min": min(per_window),
                        "window_ratio_max": max(per_window),
                        "window_ratio_median": statistics.median(per_window),
                        "cpu_time_ratio": cpu_ratio,
                        "pass": ratio >= LM_TARGET,
                    }
                )
                print(
                    f"{amp:5s} {lm:14s} ({variant}) / {plain:16s}: {med[amp, lm, variant]:7.1f} / "
                    f"{med[amp, plain, 'new']:7.1f} img/s = {ratio:.3f} (windows {min(per_window):.3f}.."
                    f"{max(per_window):.3f}, median {statistics.median(per_window):.3f}), "
                    f"by CPU time {cpu_ratio:.3f} {'PASS' if ratio >= LM_TARGET else 'FAIL'}",
                    flush=True,
                )

    now = datetime.now()
    record = {
        "benchmark": "lm_step",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": now.astimezone().isoformat(timespec="seconds"),
        "provenance": {
            **prov,
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "settings": {
            "batch_size": args.batch_size,
            "steps": args.steps,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "compile": args.compile,
            "amp": args.amp,
            "channels_last": True,
            "seed": 0,
            "seconds": seconds,
            "warmup_seconds": warm_s,
            "input": "one fixed random batch (torch.Generator seed 0)",
            "old_lm_step": "b2b71ed two-state _LMCombine and LMRunner.run" if with_old else None,
            "fused_lm_step": "velocity update + addition compiled by Inductor (fullgraph, static shapes), rest eager"
            if args.fused and not args.compile
            else None,
        },
        "target": LM_TARGET,
        "samples_img_s": {"/".join(key): v for key, v in samples.items()},
        "samples_img_per_cpu_s": {"/".join(key): v for key, v in cpu_samples.items()},
        "pairs": results,
        "pass": all(r["pass"] for r in results if r["lm_step"] == "new"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "-compile" if args.compile else ""
    path = args.out / f"lm_step-{device.type}{tag}-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{seconds:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
