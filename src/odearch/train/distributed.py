"""Process-group setup for `torchrun` launches; a single process needs none of it.

With ``WORLD_SIZE`` > 1 in the environment (set by ``torchrun``), every rank joins one process group (gloo on CPU,
nccl on CUDA, one GPU per local rank); the loader shards each GLOBAL batch across ranks and the model is wrapped in
DistributedDataParallel by the trainer. Rank 0 alone writes files and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "all_reduce_sum", "barrier", "broadcast_buffers", "init_distributed", "shutdown"]


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


def init_distributed(device: torch.device) -> DistEnv:
    """Joins the process group when launched by torchrun (``WORLD_SIZE`` > 1); else returns a 1-process env.

    Args:
        device: the training device type; CUDA ranks use GPU ``LOCAL_RANK`` and nccl, CPU ranks gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum of `t` over ranks (in place; a no-op in a single process)."""
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


def barrier(env: DistEnv) -> None:
    """Waits for every rank (no-op in a single process)."""
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leaves the process group."""
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
