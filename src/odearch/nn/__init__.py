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
from .dense import DenseRunner, dense_coefficients
from .drop import drop_path, linear_survival
from .memory import get_memory, set_memory
from .network import ResidualNetwork, init_weights
from .shake import ShakeBranch, ShakeShake, ShakeShortcut, shake_block, shake_shake
from .stage import LM_K_DRAWS, Stage, StepRunner, lm_coefficients, lm_k_draw, register_step_runner, step_runner
from .stochastic import StochasticDepth

__all__ = [
    "LM_K_DRAWS",
    "BasicBlock",
    "DenseRunner",
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
    "StepRunner",
    "StochasticDepth",
    "ZeroPadShortcut",
    "conv1x1",
    "conv3x3",
    "dense_coefficients",
    "drop_path",
    "get_memory",
    "init_weights",
    "linear_survival",
    "lm_coefficients",
    "lm_k_draw",
    "register_step_runner",
    "set_memory",
    "shake_block",
    "shake_shake",
    "step_runner",
]
