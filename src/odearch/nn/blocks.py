"""Residual functions f_n and shortcuts P, the parts a :class:`~odearch.nn.Stage` integrates over.

A residual function returns f_n(u) only: the skip connection, and with it the numerical scheme, belongs to the
Stage (as in the official LM-ResNet code, whose blocks return the branch alone).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows or precedes it)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class PreActBasicBlock(nn.Module):
    """f(u) = conv3x3(ReLU(BN(conv3x3(ReLU(BN(u)))))): "bn-relu-conv-bn-relu-conv" (He et al. 2016; the paper).

    Output channels = ``planes`` (``expansion = 1``).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)

    def forward(self, u: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(u)))
        return self.conv2(F.relu(self.bn2(out)))


class PreActBottleneck(nn.Module):
    """f(u) = conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(ReLU(BN(u))))))))), width ``planes``, output 4 x planes.

    The pre-activation bottleneck of ResNet-164 / 1001 (He et al. 2016); the 3x3 convolution carries the stride.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)

    def forward(self, u: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(u)))
        out = self.conv2(F.relu(self.bn2(out)))
        return self.conv3(F.relu(self.bn3(out)))


class BasicBlock(nn.Module):
    """f(u) = BN(conv3x3(ReLU(BN(conv3x3(u))))): the post-activation branch of He et al. (2015).

    The ReLU after the addition, u_{n+1} = ReLU(u_n + f(u_n)), is the Stage's ``post_act``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, u: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(u)))))


class ResNeXtBottleneck(nn.Module):
    """f(u) = BN(conv1x1(ReLU(BN(gconv3x3(ReLU(BN(conv1x1(u)))))))), post-activation (Xie et al. 2017).

    ``width`` = cardinality x bottleneck width per group (e.g. 8 x 64 = 512 in the first CIFAR stage).
    """

    def __init__(self, in_planes: int, out_planes: int, width: int, cardinality: int, stride: int = 1) -> None:
        super().__init__()
        if width % cardinality:
            raise ValueError(f"ResNeXt width {width} is not divisible by the cardinality {cardinality}")
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups=cardinality)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, u: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(u)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class PreActProjection(nn.Sequential):
    """P(u) = conv1x1(ReLU(BN(u))), strided: the down-sampling shortcut of the official LM-ResNet code."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__(nn.BatchNorm2d(in_planes), nn.ReLU(), conv1x1(in_planes, out_planes, stride))


class Projection(nn.Sequential):
    """P(u) = BN(conv1x1(u)), strided: the projection shortcut of post-activation ResNeXt (option B)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class ZeroPadShortcut(nn.Module):
    """P(u) = u sub-sampled by ``stride`` with zero channels appended: the parameter-free option A of He et al.
    (2015) for CIFAR, which keeps ResNet-20 at 0.27M parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 2) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError("option-A shortcut cannot reduce the channel count")
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, u: Tensor) -> Tensor:
        u = u[:, :, :: self.stride, :: self.stride]
        before = self.extra // 2
        return F.pad(u, (0, 0, 0, 0, before, self.extra - before))
