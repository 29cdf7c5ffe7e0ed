"""What a network expects of its input (timm's ``pretrained_cfg``), and its stage outputs as features.

``pretrained_cfg`` / ``default_cfg`` hold the keys that ``timm.data.resolve_data_config`` reads: ``input_size``
(C, H, W), ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``, plus ``num_classes``, ``first_conv``
and ``classifier``. The CIFAR families get the CIFAR statistics of the data set their classifier fits (CIFAR-100
for 100 classes, CIFAR-10 otherwise) at 32 x 32, the ImageNet families the ImageNet statistics at 224 x 224 with
timm's 0.875 centre crop. The statistics are :mod:`odearch.datastats`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..datastats import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD


def data_cfg(kind: str, num_classes: int, in_chans: int = 3, **extra: Any) -> dict[str, Any]:
    """The data configuration of a ``"cifar"`` or ``"imagenet"`` network with ``num_classes`` outputs.

    Mean and std are repeated or cut to ``in_chans`` entries (their average for one channel).
    """
    if kind == "cifar":
        mean, std = (CIFAR100_MEAN, CIFAR100_STD) if num_classes == 100 else (CIFAR10_MEAN, CIFAR10_STD)
        size, crop_pct, dataset = 32, 1.0, "cifar100" if num_classes == 100 else "cifar10"
    elif kind == "imagenet":
        mean, std, size, crop_pct, dataset = IMAGENET_MEAN, IMAGENET_STD, 224, 0.875, "imagenet"
    else:
        raise ValueError(f"kind must be 'cifar' or 'imagenet', got {kind!r}")
    return {
        "url": "",
        "input_size": (in_chans, size, size),
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "mean": per_channel(mean, in_chans),
        "std": per_channel(std, in_chans),
        "num_classes": num_classes,
        "dataset": dataset,
        **extra,
    }


def per_channel(stats: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel ``stats`` for ``in_chans`` channels: their average for one, else repeated or cut to ``in_chans``."""
    if in_chans == 1:
        return (sum(stats) / len(stats),)
    return tuple(stats[i % len(stats)] for i in range(in_chans))


class FeatureInfo(list):
    """timm's ``feature_info``: one dict per feature map, ``num_chs``, ``reduction`` (input size / map size) and
    ``module`` (its module name, usable as a torchvision ``create_feature_extractor`` return node)."""

    def channels(self, idx: int | None = None) -> int | list[int]:
        """Channels of feature ``idx``, or of all of them."""
        return [f["num_chs"] for f in self] if idx is None else self[idx]["num_chs"]

    def reduction(self, idx: int | None = None) -> int | list[int]:
        """Stride of feature ``idx`` relative to the input, or of all of them."""
        return [f["reduction"] for f in self] if idx is None else self[idx]["reduction"]

    def module_name(self, idx: int | None = None) -> str | list[str]:
        """Module name of feature ``idx``, or of all of them."""
        return [f["module"] for f in self] if idx is None else self[idx]["module"]
