"""Loader builders of the data set table (:mod:`odearch.data.datasets`): the training split, its evaluations, and
the test loader that ``odearch eval`` and ``odearch ship`` read.

A builder takes the run's options as any object with the attributes of :class:`SplitOptions` (a ``TrainConfig``)
and the rank layout, and returns :class:`Splits`. Options the data cannot serve (a subset or an eval subset larger than
the set, no full batch) raise :class:`DatasetError`, which the trainer reports as a ``ConfigError``.

The validation split is a seeded random choice of ``val_split`` training images with the seed fixed at
:data:`VAL_SPLIT_SEED`, so runs of different training seeds hold out the same images. ``subset`` takes the first N
training images on CIFAR (its files are already shuffled) and N images evenly spaced over the class-sorted folder on
ImageNet (positions floor(i * M / N), i < N, of its M images), so that every class is represented when N >= the
number of classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .cifar import dataset_info, load_cifar, take_first, train_val_split
from .imagenet import ImageNetLoader, imagenet_folder, make_imagenet_loader
from .loader import CifarLoader

__all__ = [
    "EVAL_BATCH",
    "VAL_SPLIT_SEED",
    "DatasetError",
    "SplitOptions",
    "Splits",
    "cifar_splits",
    "cifar_test_loader",
    "default_workers",
    "evenly_spaced",
    "imagenet_splits",
    "imagenet_test_loader",
]

VAL_SPLIT_SEED = 0  # the held-out images do not depend on the training seed, so runs of different seeds compare
EVAL_BATCH = 1024  # CIFAR evaluation batch of a run (no gradients: larger is faster, results do not depend on it)

Loader = CifarLoader | ImageNetLoader


class DatasetError(ValueError):
    """Options the data set cannot serve (too large a subset, no full batch, too many classes)."""


class SplitOptions(Protocol):
    """The run options a builder reads (``TrainConfig`` has them all)."""

    dataset: str
    data_dir: str | None
    download: bool
    val_split: int
    subset: int | None
    eval_subset: int | None
    batch_size: int
    seed: int
    augment: bool
    channels_last: bool
    num_classes: int | None
    crop_size: int
    resize_size: int
    workers: int | None
    decode: str


@dataclass
class Splits:
    """The loaders of one run: ``train`` (augmented, sharded by rank) and ``evals`` ("val" if split, "test")."""

    train: Loader
    evals: dict[str, Loader]
    num_train: int


# ---------------------------------------------------------------------------------------------------------- CIFAR
def cifar_splits(opts: SplitOptions, device: torch.device, rank: int = 0, world_size: int = 1) -> Splits:
    """Loads the CIFAR splits onto ``device`` and wraps them in loaders (train: augmented, sharded by rank)."""
    info = dataset_info(opts.dataset)
    images, labels = load_cifar(opts.data_dir, opts.dataset, train=True, download=opts.download)
    evals_raw: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if opts.val_split >= len(images):
        raise DatasetError(
            f"--val-split {opts.val_split} leaves none of the {len(images)} training images of {opts.dataset} to "
            f"train on; use at most {len(images) - 1} (5000: 45k/5k)"
        )
    if opts.val_split:
        (images, labels), evals_raw["val"] = train_val_split(images, labels, opts.val_split, seed=VAL_SPLIT_SEED)
    if opts.subset is not None:
        if opts.subset > len(images):
            raise DatasetError(
                f"--subset {opts.subset} exceeds the {len(images)} training images of {opts.dataset}"
                f"{' left after --val-split' if opts.val_split else ''}; use at most {len(images)} "
                "(or no --subset)"
            )
        images, labels = take_first(images, labels, opts.subset)
    test = load_cifar(opts.data_dir, opts.dataset, train=False, download=opts.download)
    _check_eval_subset(opts, len(test[0]))
    evals_raw["test"] = take_first(*test, opts.eval_subset) if opts.eval_subset else test
    common = {
        "mean": info["mean"],
        "std": info["std"],
        "device": device,
        "channels_last": opts.channels_last,
        "rank": rank,
        "world_size": world_size,
    }
    if len(images) < opts.batch_size:
        raise DatasetError(f"{len(images)} training images make no full batch of {opts.batch_size}")
    train = CifarLoader(images, labels, opts.batch_size, train=True, seed=opts.seed, augment=opts.augment, **common)
    eval_bs = opts.batch_size * max(1, EVAL_BATCH // opts.batch_size)  # a multiple of the world size, like batch_size
    evals = {k: CifarLoader(*v, eval_bs, train=False, **common) for k, v in evals_raw.items()}
    return Splits(train=train, evals=evals, num_train=len(images))


def _check_eval_subset(opts: SplitOptions, n: int) -> None:
    """Refuses an ``eval_subset`` larger than the ``n`` test images (it would silently evaluate on all of them)."""
    if opts.eval_subset is not None and opts.eval_subset > n:
        raise DatasetError(
            f"--eval-subset {opts.eval_subset} exceeds the {n} test images of {opts.dataset}; use at "
            f"most {n} (or no --eval-subset)"
        )


def cifar_test_loader(
    dataset: str,
    data_dir: str | Path | None,
    batch_size: int,
    device: torch.device | str,
    *,
    subset: int | None = None,
    download: bool = False,
    channels_last: bool = True,
    **_: Any,
) -> tuple[CifarLoader, list[str]]:
    """The CIFAR test batch (its first ``subset`` images) as an unaugmented loader, and the class names."""
    images, labels = load_cifar(data_dir, dataset, train=False, download=download)
    if subset:
        images, labels = take_first(images, labels, min(subset, len(images)))
    info = dataset_info(dataset)
    loader = CifarLoader(
        images,
        labels,
        batch_size,
        train=False,
        mean=info["mean"],
        std=info["std"],
        device=device,
        channels_last=channels_last,
    )
    return loader, list(info["classes"])


# ------------------------------------------------------------------------------------------------------- ImageNet
def default_workers() -> int:
    """DataLoader workers per rank: min(8, usable CPUs / ranks on this machine), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def evenly_spaced(indices: Sequence[int], n: int) -> list[int]:
    """``n`` of ``indices`` at positions floor(i * len / n), i = 0..n-1 (all of them when n >= len)."""
    m = len(indices)
    return list(indices) if n >= m else [indices[i * m // n] for i in range(n)]


def _imagenet_indices(opts: SplitOptions) -> tuple[list[int] | None, list[int] | None]:
    """(training, validation) image positions in ``train/``: None for all / no split. ``train/`` is listed (1.28M
    files on ImageNet) only when a subset or a split needs it."""
    if opts.subset is None and not opts.val_split:
        return None, None
    n = len(imagenet_folder(_root(opts), "train"))
    if opts.val_split >= n:
        raise DatasetError(f"val_split {opts.val_split} leaves no training images out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED)).tolist()
    val_idx = sorted(order[: opts.val_split]) if opts.val_split else None
    train_idx = sorted(order[opts.val_split :]) if opts.val_split else list(range(n))
    if opts.subset is not None:
        train_idx = evenly_spaced(train_idx, opts.subset)
    return train_idx, val_idx


def _root(opts: SplitOptions) -> str | Path:
    return opts.data_dir if opts.data_dir is not None else "data"


def _imagenet_common(opts: SplitOptions, device: torch.device | str) -> dict[str, Any]:
    """The ``make_imagenet_loader`` keywords every loader of a run shares (crop, decode, workers, device)."""
    return {
        "decode": opts.decode,
        "device": device,
        "crop": opts.crop_size,
        "resize": opts.resize_size,
        "channels_last": opts.channels_last,
        "workers": default_workers() if opts.workers is None else opts.workers,
    }


def imagenet_splits(opts: SplitOptions, device: torch.device, rank: int = 0, world_size: int = 1) -> Splits:
    """The training loader and the evaluation loaders ("val" if split, "test" = ``val/``) of an ImageNet run.

    ``val/`` is the single-crop "test" evaluation (Resize(``resize_size``) + CenterCrop(``crop_size``)); a split's
    held-out training images get the same transform. Evaluation uses the training batch size (no gradients are kept,
    so it fits wherever training does).

    Raises:
        FileNotFoundError: ``data_dir/train`` or ``data_dir/val`` is missing (the message shows the layout).
        DatasetError: too few images for one global batch, or more classes in the folder than ``num_classes``.
    """
    root, bs = _root(opts), opts.batch_size
    train_idx, val_idx = _imagenet_indices(opts)
    test_idx = None
    if opts.eval_subset is not None:
        n_val = len(imagenet_folder(root, "val"))
        _check_eval_subset(opts, n_val)
        test_idx = evenly_spaced(range(n_val), opts.eval_subset)
    common = {"rank": rank, "world_size": world_size, "seed": opts.seed, **_imagenet_common(opts, device)}
    train = make_imagenet_loader(root, "train", bs, train=True, augment=opts.augment, indices=train_idx, **common)
    if train.num_images < bs:
        raise DatasetError(f"{train.num_images} training images make no full batch of {bs}")
    if opts.num_classes is not None and train.num_classes > opts.num_classes:
        raise DatasetError(
            f"{root}/train has {train.num_classes} classes but num_classes is "
            f"{opts.num_classes}: use --num-classes {train.num_classes}"
        )
    evals = {"test": make_imagenet_loader(root, "val", bs, train=False, indices=test_idx, **common)}
    if val_idx is not None:
        evals = {"val": make_imagenet_loader(root, "train", bs, train=False, indices=val_idx, **common), **evals}
    return Splits(train=train, evals=evals, num_train=train.num_images)


def imagenet_test_loader(
    dataset: str,
    data_dir: str | Path | None,
    batch_size: int,
    device: torch.device | str,
    *,
    subset: int | None = None,
    channels_last: bool = True,
    crop: int = 224,
    resize: int = 256,
    decode: str = "pil",
    workers: int | None = None,
    **_: Any,
) -> tuple[ImageNetLoader, list[str]]:
    """``val/`` as the single-crop test loader (``subset`` images evenly spaced over it), and the class names."""
    root = data_dir if data_dir is not None else "data"
    indices = evenly_spaced(range(len(imagenet_folder(root, "val"))), subset) if subset else None
    loader = make_imagenet_loader(
        root,
        "val",
        batch_size,
        train=False,
        indices=indices,
        device=device,
        crop=crop,
        resize=resize,
        channels_last=channels_last,
        decode=decode,  # type: ignore[arg-type]
        workers=default_workers() if workers is None else workers,
    )
    return loader, list(loader.classes)
