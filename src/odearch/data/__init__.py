"""CIFAR-10/100 reading (safe unpickling, download, splits) and the on-device augmenting batch loader; ImageNet in
the ImageFolder layout with the standard ResNet recipe (:mod:`odearch.data.imagenet`); the data set table
(:mod:`odearch.data.datasets`: recipe, classes, normalisation, loader builders) that config, trainer and CLI read."""

from .cifar import (
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
from .datasets import DATASETS, DatasetSpec, canonical_name, get_dataset, make_test_loader
from .imagenet import (
    IMAGENET_MEAN,
    IMAGENET_RECIPE,
    IMAGENET_STD,
    ImageNetLoader,
    eval_transform,
    imagenet_folder,
    make_imagenet_loader,
    make_synthetic_imagefolder,
    train_transform,
)
from .loader import CifarLoader
from .splits import VAL_SPLIT_SEED, DatasetError, Splits

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_CLASSES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_RECIPE",
    "IMAGENET_STD",
    "VAL_SPLIT_SEED",
    "CifarLoader",
    "DatasetError",
    "DatasetSpec",
    "ForbiddenGlobalError",
    "ImageNetLoader",
    "RestrictedUnpickler",
    "Splits",
    "canonical_name",
    "dataset_info",
    "eval_transform",
    "get_dataset",
    "imagenet_folder",
    "load_cifar",
    "make_imagenet_loader",
    "make_synthetic_imagefolder",
    "make_test_loader",
    "take_first",
    "train_transform",
    "train_val_split",
]
