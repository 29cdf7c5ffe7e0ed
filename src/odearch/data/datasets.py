"""The data set table: name -> :class:`DatasetSpec` (recipe defaults, classes, normalisation, loader builders).

The one place that knows which data sets exist: ``TrainConfig`` takes its data-set-dependent defaults (``epochs``,
``milestones``, ``num_classes``) from it, the trainer its loaders, ``odearch eval`` / ``odearch ship`` their test
loader, and the command line its ``--dataset`` choices. A new data set is one builder pair in
:mod:`odearch.data.splits` and one row here.

Recipes: the paper's CIFAR schedules (160 epochs, lr / 10 at epochs 80 and 120 on CIFAR-10; 300 epochs with steps
at 150 and 225 on CIFAR-100) and He et al. (2015)'s ImageNet schedule (``IMAGENET_RECIPE``: 90 epochs, steps at 30,
60 and 80).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD
from .imagenet import IMAGENET_MEAN, IMAGENET_RECIPE, IMAGENET_STD, NUM_CLASSES
from .names import canonical_name
from .splits import (
    SplitOptions,
    Splits,
    cifar_splits,
    cifar_test_loader,
    imagenet_splits,
    imagenet_test_loader,
)

__all__ = ["DATASETS", "DatasetSpec", "canonical_name", "get_dataset", "make_test_loader"]


@dataclass(frozen=True)
class DatasetSpec:
    """One row of the table.

    Args:
        name: the canonical name (``cifar10``), the key of :data:`DATASETS`.
        num_classes: classifier size.
        epochs: epochs of the recipe.
        milestones: epochs where the step schedule multiplies the lr by ``gamma``.
        mean: per-channel mean of the pixels scaled to [0, 1], used to normalise.
        std: per-channel standard deviation, likewise.
        splits: ``(opts, device, rank, world_size) -> Splits``, the loaders of a training run.
        test_loader: ``(dataset, data_dir, batch_size, device, *, subset, ...) -> (loader, class names)``.
        files_on_rank0_first: rank 0 reads (and, if it must, downloads) the files before the other ranks read them.
    """

    name: str
    num_classes: int
    epochs: int
    milestones: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    splits: Callable[[SplitOptions, torch.device, int, int], Splits]
    test_loader: Callable[..., tuple[Any, list[str]]]
    files_on_rank0_first: bool


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10",
        len(CIFAR10_CLASSES),
        160,
        (80, 120),
        CIFAR10_MEAN,
        CIFAR10_STD,
        cifar_splits,
        cifar_test_loader,
        True,
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        len(CIFAR100_CLASSES),
        300,
        (150, 225),
        CIFAR100_MEAN,
        CIFAR100_STD,
        cifar_splits,
        cifar_test_loader,
        True,
    ),
    "imagenet": DatasetSpec(
        "imagenet",
        NUM_CLASSES,
        IMAGENET_RECIPE["epochs"],
        tuple(IMAGENET_RECIPE["milestones"]),
        IMAGENET_MEAN,
        IMAGENET_STD,
        imagenet_splits,
        imagenet_test_loader,
        False,
    ),
}


def get_dataset(name: str) -> DatasetSpec:
    """The table row of ``name`` (case and ``-`` / ``_`` ignored).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    key = canonical_name(name)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[key]


def make_test_loader(
    opts: SplitOptions, device: torch.device | str, batch_size: int, subset: int | None = None
) -> tuple[Any, list[str]]:
    """The test loader of ``opts.dataset`` (CIFAR test batch, or ImageNet ``val/`` single-crop) and its class names,
    with the crop, decoding and workers of ``opts`` (a ``TrainConfig``)."""
    spec = get_dataset(opts.dataset)
    return spec.test_loader(
        spec.name,
        opts.data_dir,
        batch_size,
        device,
        subset=subset,
        download=opts.download,
        channels_last=opts.channels_last,
        crop=opts.crop_size,
        resize=opts.resize_size,
        decode=opts.decode,
        workers=opts.workers,
    )
