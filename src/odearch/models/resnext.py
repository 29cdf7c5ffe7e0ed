"""CIFAR ResNeXt-29 (Xie et al. 2017) and its LM twin (the paper's CIFAR-100 rows).

Post-activation: u_{n+1} = ReLU(u_n + f_n(u_n)) with f = conv1x1-BN-ReLU-gconv3x3-BN-ReLU-conv1x1-BN; stem
conv3x3(3, 64)-BN-ReLU; 3 stages of 3 blocks, outputs 256 / 512 / 1024, strides 1 / 2 / 2, grouped width
cardinality x base width (x2 per stage); projection shortcuts P = conv1x1-BN at each stage's first block; head
global average pool-FC.

LM twin: u_{n+1} = ReLU((1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)). At the stage-2 and stage-3 transitions,
u_1 = ReLU(P(u_0) + f_0(u_0)) and the history of u_1 is its one-step-back state u_0, projected to the new shape:
u_2 = ReLU((1 - k) u_1 + k H(u_0) + f_1(u_1)). With ``history_projection=False`` H = P, the shortcut's projection,
which is the official code's forward pass. With ``history_projection=True`` (the default of ``lm_resnext29_*``)
H = Q, a conv1x1-BN of its own. The official code declares such projections, ``downsample22`` / ``downsample32``,
in commented-out lines (``last_residual = self.downsample22(last_residual)``); even uncommented they would not
change its forward pass, since ``last_residual = residual`` (P(u_0)) follows unconditionally. Their 0.66M parameters
are what the paper's printed LM-ResNeXt counts (35.1M / 68.8M against 34.4M / 68.1M) leave over after the k_n, so
Q reproduces the printed counts while the history stays one step back (Q(u_0), not the two-steps-back Q(u_{-1}) of
odearch before issue 14).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from ..nn import Projection, ResidualNetwork, ResNeXtBottleneck, conv3x3, init_weights
from ..nn.stage import step_runner
from ..nn.stochastic import StochasticDepth
from ..schemes import Scheme, get_scheme
from ._builders import StageSpec, make_stages
from ._registry import register_table

__all__ = ["cifar_resnext"]


def cifar_resnext(
    cardinality: int,
    base_width: int,
    scheme: str | Scheme = "euler",
    num_classes: int = 10,
    depth: int = 29,
    history_projection: bool = False,
    stochastic: StochasticDepth | None = None,
) -> ResidualNetwork:
    """A CIFAR ResNeXt-(9n + 2) with ``cardinality`` groups of ``base_width`` channels in its first stage.

    Args:
        cardinality: number of groups of the 3x3 convolutions.
        base_width: channels per group in the first stage (doubles per stage).
        scheme: the integrator.
        num_classes: classifier size.
        depth: 9n + 2 (29 for the paper's rows).
        history_projection: LM only: the history across the stage-2/3 transitions is Q(u_0), Q a conv1x1-BN of its
            own, instead of P(u_0).
        stochastic: stochastic depth and noise injection (default off); the noise is added before the ReLU.
    """
    if (depth - 2) % 9:
        raise ValueError(f"ResNeXt depth must be 9n + 2, got {depth}")
    scheme = get_scheme(scheme)
    if step_runner(scheme).split > 1:  # RevNet's (F, G) halves
        raise ValueError("the rev scheme is not defined on the post-activation ResNeXt backbone")
    if history_projection and not step_runner(scheme).has_k:
        raise ValueError("history_projection carries the LM history u_{n-1}: it needs the lm scheme")
    n = (depth - 2) // 9
    specs = [
        StageSpec(
            cardinality * base_width * 2**i,
            out,
            n,
            stride,
            history=history_projection and i > 0,
            block=partial(_resnext_block, out_planes=out, cardinality=cardinality),
        )
        for i, (out, stride) in enumerate(zip((256, 512, 1024), (1, 2, 2)))
    ]
    stages = make_stages(
        scheme, specs, 64, shortcut=Projection, history_shortcut=Projection, post_act=nn.ReLU, stochastic=stochastic
    )
    stem = nn.Sequential(conv3x3(3, 64), nn.BatchNorm2d(64), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(specs[-1].out_planes, num_classes))
    model = ResidualNetwork(stem, stages, head)
    init_weights(model)
    return model


def _resnext_block(in_planes: int, planes: int, stride: int, *, out_planes: int, cardinality: int) -> ResNeXtBottleneck:
    """The (in_planes, planes, stride) block signature of ``make_stages``; ``planes`` is the grouped width."""
    return ResNeXtBottleneck(in_planes, out_planes, planes, cardinality, stride)


# One row per registered name: name -> (constructor arguments, docstring).
_ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "resnext29_16x64d": (
        dict(cardinality=16, base_width=64),
        "ResNeXt-29 16x64d for CIFAR (Xie et al. 2017): 68.1M parameters; CIFAR-100 error 17.31%.",
    ),
    "resnext29_8x64d": (
        dict(cardinality=8, base_width=64),
        "ResNeXt-29 8x64d for CIFAR (Xie et al. 2017, https://arxiv.org/abs/1611.05431): 34.4M parameters; CIFAR-100 "
        "error 17.77%.",
    ),
    "lm_resnext29_16x64d": (
        dict(cardinality=16, base_width=64, scheme="lm", history_projection=True),
        "LM-ResNeXt-29 16x64d (Lu et al. 2018): 68.8M parameters with the history projections; CIFAR-100 error 16.79%"
        " (?).",
    ),
    "lm_resnext29_8x64d": (
        dict(cardinality=8, base_width=64, scheme="lm", history_projection=True),
        "LM-ResNeXt-29 8x64d (Lu et al. 2018): 35.1M parameters with the history projections; CIFAR-100 error 17.49% "
        "(?).",
    ),
}
register_table(cifar_resnext, __name__, _ROWS)
