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
``noise_sigma=`` add stochastic depth and noise injection as on every family.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from ..nn import ResidualNetwork, ShakeShortcut, conv3x3, init_weights, shake_block
from ..schemes import RevScheme, Scheme, get_scheme
from ._builders import make_stage, register_table, stochastic_options

__all__ = ["shake_resnet"]


def shake_resnet(
    depth: int = 26,
    base_width: int = 32,
    scheme: str | Scheme = "euler",
    num_classes: int = 10,
    shake: bool = True,
    p_last: float | None = None,
    drop_mode: str = "batch",
    noise_sigma: float | None = None,
) -> ResidualNetwork:
    """A shake-shake CIFAR ResNet-(6n + 2) with two branches of ``base_width`` channels in its first stage.

    Args:
        depth: 6n + 2 (26 for Shake-Shake-26).
        base_width: channels of each branch in the first stage (doubles per stage): the "32d" of 2x32d.
        scheme: the integrator (``lm`` for the LM twin); ``rev`` would need pairs of blocks and is refused.
        num_classes: classifier size.
        shake: random branch weights in training; False: the deterministic twin with weights 1/2.
        p_last: stochastic depth: survival probability of the last block (None or 1: off).
        drop_mode: stochastic depth per mini-batch (``"batch"``) or per sample (``"sample"``).
        noise_sigma: noise injection after every block in training (None: off).
    """
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"shake-shake ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    if isinstance(get_scheme(scheme), RevScheme):
        raise ValueError("the rev scheme splits the state into (F, G) halves: not defined for shake-shake blocks")
    n = (depth - 2) // 6
    stochastic = stochastic_options((n, n, n), p_last, drop_mode, noise_sigma)
    block = partial(shake_block, shake=shake)
    in_planes, stages = 16, []
    for i, (stride, opts) in enumerate(zip((1, 2, 2), stochastic)):
        planes = base_width * 2**i
        stages.append(
            make_stage(scheme, block, in_planes, planes, planes, n, stride, shortcut=ShakeShortcut, **opts)  # type: ignore[arg-type]
        )
        in_planes = planes
    stem = nn.Sequential(conv3x3(3, 16), nn.BatchNorm2d(16))
    head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes))
    model = ResidualNetwork(stem, stages, head)
    init_weights(model)
    return model


_ROWS = [
    (
        "shake_resnet26_2x32d",
        {"depth": 26, "base_width": 32},
        "Shake-Shake-26 2x32d (Gastaldi 2017, https://arxiv.org/abs/1705.07485): 2.9M parameters, forward Euler "
        "u_{n+1} = u_n + eta f1 + (1 - eta) f2, shake-shake-image; CIFAR-10 error 3.55% (?) (1800-epoch cosine "
        "schedule). shake=False: the even-weights twin.",
    ),
    (
        "lm_shake_resnet26_2x32d",
        {"depth": 26, "base_width": 32, "scheme": "lm"},
        "LM twin of shake_resnet26_2x32d: u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + eta f1(u_n) + (1 - eta) f2(u_n), "
        "the same residual functions with one k_n per LM step (9 more parameters).",
    ),
]
register_table(_ROWS, shake_resnet, __name__)
