"""CIFAR-10/100 reading (safe unpickling, download, splits) and the on-device augmenting batch loader."""

from odearch.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_CLASSES,
    CIFAR100_MEAN,
    CIFAR100_STD,
    ForbiddenGlobalError,
    RestrictedUnpickler,
    dataset_info,
    load_cifar,
    take_first,
    train_val_split,
)
from odearch.data.loader import CifarLoader

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_CLASSES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CifarLoader",
    "ForbiddenGlobalError",
    "RestrictedUnpickler",
    "dataset_info",
    "load_cifar",
    "take_first",
    "train_val_split",
]
