"""Process-group setup for ``torchrun`` launches; a single process needs none of it.

With ``WORLD_SIZE`` > 1 in the environment (set by ``torchrun``), every rank joins one process group (gloo on CPU,
nccl on CUDA, one GPU per local rank); the loader shards each GLOBAL batch across ranks and the model is wrapped in
DistributedDataParallel by the trainer. Rank 0 alone writes files and logs.

``odearch train --nproc N`` re-launches itself through :func:`torchrun_command` (``python -m torch.distributed.run
--standalone --nproc_per_node N -m odearch train ...``). ``--sync-bn`` uses :class:`torch.nn.SyncBatchNorm` on CUDA
and :class:`AllReduceBatchNorm2d` on the CPU (torch's runs on GPUs only), so CPU (gloo) runs compute the same
function as GPU runs.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "AllReduceBatchNorm2d",
    "DistEnv",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "convert_sync_batchnorm",
    "init_distributed",
    "relaunch",
    "shutdown",
    "torchrun_command",
    "wait_forwarding",
    "without_option",
    "world_size_from_env",
]


@dataclass(frozen=True)
class DistEnv:
    """This process's place among the ranks."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size_from_env() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when launched otherwise); readable before joining the process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> DistEnv:
    """Joins the process group when launched by torchrun (``WORLD_SIZE`` > 1); else returns a 1-process env.

    A rank asks the kernel to SIGTERM it when its parent (the torchrun agent) dies, so no worker trains on as an
    orphan; its SIGTERM handler then stops it (:mod:`odearch.train.signals`), or a collective times out.

    Args:
        device: the training device type; CUDA ranks use GPU ``LOCAL_RANK`` and nccl, CPU ranks gloo.
        timeout_s: how long a collective waits for a stalled rank before failing (torch's default: 30 min).
    """
    world_size = world_size_from_env()
    if world_size <= 1:
        return DistEnv()
    from .signals import die_with_parent

    die_with_parent()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place; a no-op in a single process)."""
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Copies rank 0's buffers (BN running statistics) to every rank, so evaluation and checkpoints agree.

    DDP broadcasts buffers at the start of each forward, so after the last training step each rank still holds the
    statistics of its own last shard.
    """
    if env.enabled:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True if ``flag`` is True on any rank (one all-reduce; ``flag`` itself in a single process).

    Decisions that end a loop (the --max-minutes deadline) must be taken together: each rank reads its own clock.
    """
    if not env.enabled:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank (``obj`` itself in a single process)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    """Waits for every rank (no-op in a single process)."""
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leaves the process group."""
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ SyncBatchNorm
def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _GlobalNormalize(torch.autograd.Function):
    r"""x_hat = (x - mu) / sqrt(sigma^2 + eps) with the per-channel mean and (biased) variance of the global batch.

    Backward, with g = dL_r / dx_hat on rank r and sums over the global batch (all-reduced), as BatchNorm's:

        dx = (g - (1/n) sum g - x_hat (1/n) sum g x_hat) / sqrt(sigma^2 + eps),

    which is d(sum_q L_q) / dx_r: DDP then averages the parameter gradients over the ranks, giving the gradient of
    the mean loss of the global batch. Statistics are summed in float64 (two passes: mean, then squared deviations).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        sums = _all_reduce(
            torch.cat([x.sum(dims, dtype=torch.float64), x.new_full((1,), x.numel() / x.shape[1], dtype=torch.float64)])
        )
        n = sums[-1]
        mean = sums[:-1] / n
        var = _all_reduce(((x.double() - mean.view(shape)) ** 2).sum(dims)) / n
        invstd = torch.rsqrt(var + eps)
        x_hat = ((x.double() - mean.view(shape)) * invstd.view(shape)).to(x.dtype)
        ctx.save_for_backward(x_hat, invstd)
        ctx.n = n.item()
        ctx.mark_non_differentiable(mean, var)
        return x_hat, mean, var * n / max(1.0, n.item() - 1)  # the running variance takes the unbiased one

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, *_: Any) -> tuple[torch.Tensor, None]:
        x_hat, invstd = ctx.saved_tensors
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        sums = _all_reduce(torch.cat([g.sum(dims, dtype=torch.float64), (g * x_hat).sum(dims, dtype=torch.float64)]))
        mean_g, mean_gx = (sums / ctx.n).chunk(2)
        dx = (g.double() - mean_g.view(shape) - x_hat.double() * mean_gx.view(shape)) * invstd.view(shape)
        return dx.to(g.dtype), None


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    r"""BatchNorm2d whose training statistics are those of the global batch, summed over the ranks on any backend.

    For inputs x_r of shape (B_r, C, H, W) on ranks r = 1..R and n = sum_r B_r H W, per channel:

        mu = (1/n) sum_{r,b,h,w} x,   sigma^2 = (1/n) sum_{r,b,h,w} (x - mu)^2,
        y = gamma (x - mu) / sqrt(sigma^2 + eps) + beta,

    i.e. BatchNorm2d on the concatenated global batch, forward and backward (:class:`_GlobalNormalize`); the running
    variance is updated with the unbiased sigma^2 n / (n - 1), as BatchNorm2d does. Outside training, or without a
    process group of several ranks, it is plain BatchNorm2d. :class:`torch.nn.SyncBatchNorm` computes the same with
    fused kernels but refuses CPU tensors; this one serves CPU (gloo) ranks. Parameter and buffer names are
    BatchNorm2d's, so checkpoints do not change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        y, mean, var_unbiased = _GlobalNormalize.apply(x, self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_(var_unbiased.to(self.running_var.dtype), m)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``module`` computes global-batch statistics: ``nn.SyncBatchNorm`` on CUDA, else
    :class:`AllReduceBatchNorm2d` (weights and running statistics carried over). Returns the converted module."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if type(module) is nn.BatchNorm2d:
        like = module.weight if module.affine else module.running_mean
        bn = AllReduceBatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            device=device,
            dtype=None if like is None else like.dtype,
        )
        bn.load_state_dict(module.state_dict())
        return bn.train(module.training)
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, device)
        if new is not child:
            setattr(module, name, new)
    return module


# ------------------------------------------------------------------------------------------------------ launcher
def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command that runs ``odearch train ARGS`` in ``nproc`` processes on this machine via torchrun's module."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "odearch",
        "train",
        *args,
    ]


def without_option(args: Sequence[str], option: str) -> list[str]:
    """``args`` without ``OPTION VALUE`` and ``OPTION=VALUE`` (e.g. ``--nproc 2``)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def relaunch(nproc: int, args: Sequence[str], batch_size: int) -> int:
    """Runs ``odearch train ARGS`` (ARGS less ``--nproc``) in ``nproc`` local processes; returns torchrun's exit code.

    Raises:
        ConfigError: ``nproc`` < 1, already under torchrun, or ``batch_size`` (global) not a multiple of ``nproc``.
    """
    import subprocess

    from .config import ConfigError

    if nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {nproc}")
    if world_size_from_env() > 1:
        raise ConfigError("--nproc re-launches under torchrun; it cannot be used inside a torchrun launch")
    if batch_size % nproc:
        raise ConfigError(
            f"batch_size {batch_size} is the global batch and must split evenly over the {nproc} "
            f"processes: use a multiple of {nproc}"
        )
    cmd = torchrun_command(nproc, without_option(args, "--nproc"))
    print("odearch: " + " ".join(cmd), file=sys.stderr, flush=True)
    from .signals import die_with_parent

    proc = subprocess.Popen(cmd, preexec_fn=die_with_parent)  # torchrun dies with this process, even by SIGKILL
    return wait_forwarding(proc)


def wait_forwarding(
    proc: Any, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT), on_signal: Callable[[int], None] | None = None
) -> int:
    """Waits for ``proc``, forwarding SIGTERM/SIGINT received meanwhile to it (torchrun passes them to its workers,
    which stop with a resumable checkpoint); returns its exit code (128 + signal for a killed child). ``on_signal``
    is called with each signal's number first (a caller that must know whether a stop was asked)."""

    def forward(signum: int, frame: Any) -> None:
        if on_signal is not None:
            on_signal(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in signals}
    try:
        code = proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code
