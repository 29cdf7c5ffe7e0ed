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
from .drop import DropPath, drop_path, linear_survival
from .network import ResidualNetwork, init_weights
from .shake import ShakeBranch, ShakeShake, ShakeShortcut, shake_block, shake_shake
from .stage import Stage, lm_coefficients

__all__ = [
    "BasicBlock",
    "DropPath",
    "PreActBasicBlock",
    "PreActBottleneck",
    "PreActProjection",
    "Projection",
    "ResNeXtBottleneck",
    "ResidualNetwork",
    "ShakeBranch",
    "ShakeShake",
    "ShakeShortcut",
    "Stage",
    "ZeroPadShortcut",
    "conv1x1",
    "conv3x3",
    "drop_path",
    "init_weights",
    "linear_survival",
    "lm_coefficients",
    "shake_block",
    "shake_shake",
]
