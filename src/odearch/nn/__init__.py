"""Stages (integrators over residual functions), residual blocks, and the network wrapper."""

from .blocks import (
    BasicBlock,
    PreActBasicBlock,
    PreActBottleneck,
    PreActProjection,
    Projection,
    ResNeXtBottleneck,
    ZeroPadShortcut,
    conv1x1,
    conv3x3,
)
from .network import ResidualNetwork, init_weights
from .stage import Stage, lm_coefficients

__all__ = [
    "BasicBlock",
    "PreActBasicBlock",
    "PreActBottleneck",
    "PreActProjection",
    "Projection",
    "ResNeXtBottleneck",
    "ResidualNetwork",
    "Stage",
    "ZeroPadShortcut",
    "conv1x1",
    "conv3x3",
    "init_weights",
    "lm_coefficients",
]
