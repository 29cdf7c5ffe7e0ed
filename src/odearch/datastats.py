"""Per-channel mean and standard deviation of each data set's training images (pixels in [0, 1]), defined once:
the loaders normalise with them (:mod:`odearch.data`) and the models' ``pretrained_cfg`` reports them
(:mod:`odearch.nn.cfg`). No imports: every layer may read it.
"""

from __future__ import annotations

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's and timm's
IMAGENET_STD = (0.229, 0.224, 0.225)
