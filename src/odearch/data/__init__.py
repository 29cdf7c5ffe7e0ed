"""CIFAR-10/100 reading (safe unpickling, download, splits) and the on-device augmenting batch loader; ImageNet in
the ImageFolder layout with the standard ResNet recipe (:mod:`odearch.data.imagenet`)."""

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

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_CLASSES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_RECIPE",
    "IMAGENET_STD",
    "CifarLoader",
    "ForbiddenGlobalError",
    "ImageNetLoader",
    "RestrictedUnpickler",
    "dataset_info",
    "eval_transform",
    "imagenet_folder",
    "load_cifar",
    "make_imagenet_loader",
    "make_synthetic_imagefolder",
    "take_first",
    "train_transform",
    "train_val_split",
]
