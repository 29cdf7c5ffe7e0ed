"""The ImageNet side of the trainer: ``TrainConfig`` -> the loaders of :mod:`odearch.data.imagenet`.

``data_dir`` holds ``train/<wnid>/*`` and ``val/<wnid>/*``; ``val/`` is the "test" evaluation (single crop:
Resize(``resize_size``) + CenterCrop(``crop_size``)), and ``--val-split K`` holds K random training images out as a
"val" evaluation (same transform), with the split seed fixed as on CIFAR. ``--subset N`` / ``--eval-subset N`` take
N images evenly spaced over the class-sorted folder (positions floor(i * M / N), i < N, of its M images), so every
class is represented when N >= the number of classes; CIFAR takes the first N of its already shuffled files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..data import ImageNetLoader, imagenet_folder, make_imagenet_loader
from .config import ConfigError, TrainConfig
from .distributed import DistEnv

__all__ = ["default_workers", "evenly_spaced", "imagenet_loaders"]

VAL_SPLIT_SEED = 0  # as loop.VAL_SPLIT_SEED: the held-out images do not depend on the training seed


def default_workers() -> int:
    """DataLoader workers per rank: min(8, usable CPUs / ranks on this machine), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def evenly_spaced(indices: Sequence[int], n: int) -> list[int]:
    """``n`` of ``indices`` at positions floor(i * len / n), i = 0..n-1 (all of them when n >= len)."""
    m = len(indices)
    return list(indices) if n >= m else [indices[i * m // n] for i in range(n)]


def imagenet_loaders(
    cfg: TrainConfig, device: torch.device, env: DistEnv
) -> tuple[ImageNetLoader, dict[str, ImageNetLoader], int]:
    """The training loader and the evaluation loaders ("val" if split, "test" = ``val/``) of an ImageNet run.

    Returns:
        (train, evals, number of training images).

    Raises:
        FileNotFoundError: ``data_dir/train`` or ``data_dir/val`` is missing (the message shows the layout).
        ConfigError: too few images for one global batch, or more classes in the folder than ``num_classes``.
    """
    train_idx: list[int] | None = None
    val_idx: list[int] | None = None
    if cfg.subset is not None or cfg.val_split:  # only then list train/ twice (1.28M files on ImageNet)
        n = len(imagenet_folder(cfg.data_dir, "train"))
        if cfg.val_split >= n:
            raise ConfigError(f"val_split {cfg.val_split} leaves no training images out of {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED)).tolist()
        val_idx = sorted(order[: cfg.val_split]) if cfg.val_split else None
        train_idx = sorted(order[cfg.val_split :]) if cfg.val_split else list(range(n))
        if cfg.subset is not None:
            train_idx = evenly_spaced(train_idx, cfg.subset)
    test_idx = None
    if cfg.eval_subset is not None:
        test_idx = evenly_spaced(range(len(imagenet_folder(cfg.data_dir, "val"))), cfg.eval_subset)
    common = {"rank": env.rank, "world_size": env.world_size, "seed": cfg.seed, "decode": cfg.decode,
              "device": device, "crop": cfg.crop_size, "resize": cfg.resize_size, "channels_last": cfg.channels_last,
              "workers": default_workers() if cfg.workers is None else cfg.workers}  # fmt: skip
    train = make_imagenet_loader(cfg.data_dir, "train", cfg.batch_size, train=True, augment=cfg.augment,
                                 indices=train_idx, **common)  # fmt: skip
    if train.num_images < cfg.batch_size:
        raise ConfigError(f"{train.num_images} training images make no full batch of {cfg.batch_size}")
    if train.num_classes > cfg.num_classes:
        raise ConfigError(f"{cfg.data_dir}/train has {train.num_classes} classes but num_classes is "
                          f"{cfg.num_classes}: use --num-classes {train.num_classes}")  # fmt: skip
    # Evaluation: the training batch size (no gradients are kept, so it fits wherever training does).
    evals = {"test": make_imagenet_loader(cfg.data_dir, "val", cfg.batch_size, train=False, indices=test_idx, **common)}
    if val_idx is not None:
        evals = {"val": make_imagenet_loader(cfg.data_dir, "train", cfg.batch_size, train=False, indices=val_idx,
                                             **common), **evals}  # fmt: skip
    return train, evals, train.num_images
