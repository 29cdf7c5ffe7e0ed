"""Shake-shake CIFAR ResNets (Gastaldi 2017) and their LM twins: a two-branch residual function shaken per sample.

u_{n+1} = u_n + eta f1(u_n) + (1 - eta) f2(u_n), eta ~ U(0, 1) per image forward and an independent beta ~ U(0, 1)
backward ("shake-shake-image"), eta = 1/2 in evaluation (:class:`~odearch.nn.ShakeShake`); the paper reads it as a
weak approximation of dX = (f1 + f2) / 2 dt + sqrt(dt / 12)(f1 - f2) dB. The LM twin integrates the same residual
functions with u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n).

Layout (Gastaldi's ``shakeshake.lua``): stem conv3x3(3, 16)-BN; 3 stages of (depth - 2) / 6 blocks, branch widths
w / 2w / 4w, strides 1 / 2 / 2; each branch ReLU-conv3x3-BN-ReLU-conv3x3-BN; every stage starts with a transition
whose shortcut is the two-path ReLU-(1x1 average pool of stride s + conv1x1, and the same on the one-pixel-shifted
input)-concat-BN (:class:`~odearch.nn.ShakeShortcut`), the first one only widening 16 -> w; head ReLU-global
average pool-FC.

| name | params | CIFAR-10 error (Gastaldi 2017, shake-shake-image, 1800 epochs) |
|---|---|---|
| shake_resnet26_2x32d | 2.9M | 3.55 (?) |
| lm_shake_resnet26_2x32d | 2.9M + 9 k_n | |

``shake=False`` gives the deterministic even-weights twin (eta = 1/2 always); ``p_last=``, ``drop_mode=``,
``noise_sigma=`` (one ``stochastic=`` value) add stochastic depth and noise injection as on every family.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from ..nn import ResidualNetwork, ShakeShortcut, conv3x3, init_weights, shake_block
from ..nn.stage import step_runner
from ..nn.stochastic import StochasticDepth
from ..schemes import Scheme
from ._builders import StageSpec, make_stages
from ._registry import register_table

__all__ = ["shake_resnet"]


def shake_resnet(
    depth: int = 26,
    base_width: int = 32,
    scheme: str | Scheme = "euler",
    num_classes: int = 10,
    shake: bool = True,
    stochastic: StochasticDepth | None = None,
) -> ResidualNetwork:
    """A shake-shake CIFAR ResNet-(6n + 2) with two branches of ``base_width`` channels in its first stage.

    Args:
        depth: 6n + 2 (26 for Shake-Shake-26).
        base_width: channels of each branch in the first stage (doubles per stage): the "32d" of 2x32d.
        scheme: the integrator (``lm`` for the LM twin); ``rev`` would need pairs of blocks and is refused.
        num_classes: classifier size.
        shake: random branch weights in training; False: the deterministic twin with weights 1/2.
        stochastic: stochastic depth and noise injection (default off).
    """
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"shake-shake ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    if step_runner(scheme).split > 1:  # RevNet's (F, G) halves
        raise ValueError("the rev scheme splits the state into (F, G) halves: not defined for shake-shake blocks")
    n = (depth - 2) // 6
    specs = [StageSpec(base_width * 2**i, base_width * 2**i, n, stride) for i, stride in enumerate((1, 2, 2))]
    block = partial(shake_block, shake=shake)
    stages = make_stages(scheme, specs, 16, block=block, shortcut=ShakeShortcut, stochastic=stochastic)
    stem = nn.Sequential(conv3x3(3, 16), nn.BatchNorm2d(16))
    width = specs[-1].out_planes
    head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    model = ResidualNetwork(stem, stages, head)
    init_weights(model)
    return model


# One row per registered name: name -> (constructor arguments, docstring).
_ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "shake_resnet26_2x32d": (
        dict(depth=26, base_width=32),
        "Shake-Shake-26 2x32d (Gastaldi 2017, https://arxiv.org/abs/1705.07485): 2.9M parameters, forward Euler "
        "u_{n+1} = u_n + eta f1 + (1 - eta) f2, shake-shake-image; CIFAR-10 error 3.55% (?) (1800-epoch cosine "
        "schedule). shake=False: the even-weights twin.",
    ),
    "lm_shake_resnet26_2x32d": (
        dict(depth=26, base_width=32, scheme="lm"),
        "LM twin of shake_resnet26_2x32d: u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + eta f1(u_n) + (1 - eta) f2(u_n), "
        "the same residual functions with one k_n per LM step (9 more parameters).",
    ),
}
register_table(shake_resnet, __name__, _ROWS)
