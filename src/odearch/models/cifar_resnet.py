"""The original post-activation CIFAR ResNets of He et al. (2015), the paper's baseline rows.

u_{n+1} = ReLU(u_n + f_n(u_n)), f = BN-conv-ReLU-BN-conv; stem conv3x3(3, 16)-BN-ReLU; 3 stages of widths
16 / 32 / 64 with n blocks each (depth 6n + 2); parameter-free option-A shortcuts (stride-2 sub-sampling plus zero
channels) at the transitions, as the CIFAR experiments of He et al. use; head global average pool-FC.

| name | params | CIFAR-10 error (He et al. 2015) |
|---|---|---|
| resnet20 | 0.27M | 8.75 |
| resnet32 | 0.46M | 7.51 |
| resnet44 | 0.66M | 7.17 |
| resnet56 | 0.85M | 6.97 |
| resnet110 | 1.7M | 6.43 |
| resnet1202 | 19.4M | 7.93 |

``scheme=`` swaps the integrator on this backbone too (the ReLU then follows each scheme's update).

Stochastic depth (Huang et al. 2016, whose CIFAR backbone this is): ``resnet110_sd`` is their ResNet-110 with
p_L = 0.5 (CIFAR-10 error 5.25%, the paper's stochastic-depth baseline row); ``resnet56_sd`` uses p_L = 0.8 to pair
with ``lm_resnet56_sd``. Every model takes ``p_last=``, ``drop_mode=``, ``noise_sigma=`` (or one
``stochastic=StochasticDepth(...)``). One difference from
Huang et al.'s code: their option-A shortcut down-samples by average pooling, ours by sub-sampling (u[:, :, ::2, ::2],
as He et al.'s option A); both are parameter-free, so the counts agree, but the two ``resnet110_sd`` functions differ.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..nn import BasicBlock, ResidualNetwork, ZeroPadShortcut, conv3x3, init_weights
from ..nn.stage import step_runner
from ..nn.stochastic import StochasticDepth
from ..schemes import Scheme
from ._builders import StageSpec, make_stages
from ._registry import register_table

__all__ = ["cifar_resnet"]


def cifar_resnet(
    layers: tuple[int, int, int],
    scheme: str | Scheme = "euler",
    num_classes: int = 10,
    widths: tuple[int, int, int] = (16, 32, 64),
    stochastic: StochasticDepth | None = None,
) -> ResidualNetwork:
    """A post-activation CIFAR ResNet (He et al. 2015) with option-A shortcuts, integrated by ``scheme``.

    Args:
        layers: residual blocks per stage.
        scheme: the integrator; ``rev`` is not defined with a post-activation (it would not be invertible).
        num_classes: classifier size.
        widths: stage widths.
        stochastic: stochastic depth and noise injection (default off); a dropped block is the identity,
            u_{n+1} = ReLU(u_n) = u_n, and the noise is added before the ReLU.
    """
    if step_runner(scheme).split > 1:  # RevNet's (F, G) halves
        raise ValueError("the rev scheme needs a pre-activation backbone: use rev_resnet20 / preact_resnet*")
    specs = [StageSpec(w, w, n, stride) for w, n, stride in zip(widths, layers, (1, 2, 2))]
    stages = make_stages(
        scheme, specs, widths[0], block=BasicBlock, shortcut=ZeroPadShortcut, post_act=nn.ReLU, stochastic=stochastic
    )
    stem = nn.Sequential(conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))
    model = ResidualNetwork(stem, stages, head)
    init_weights(model)
    return model


# One row per registered name: name -> (constructor arguments, docstring).
_ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "resnet20": (
        dict(layers=(3, 3, 3)),
        "ResNet-20 for CIFAR (He et al. 2015, https://arxiv.org/abs/1512.03385): post-activation basic blocks, "
        "option-A shortcuts, 0.27M parameters; CIFAR-10 error 8.75% in the original paper.",
    ),
    "resnet32": (
        dict(layers=(5, 5, 5)),
        "ResNet-32 for CIFAR (He et al. 2015, https://arxiv.org/abs/1512.03385): post-activation basic blocks, "
        "option-A shortcuts, 0.46M parameters; CIFAR-10 error 7.51% in the original paper.",
    ),
    "resnet44": (
        dict(layers=(7, 7, 7)),
        "ResNet-44 for CIFAR (He et al. 2015, https://arxiv.org/abs/1512.03385): post-activation basic blocks, "
        "option-A shortcuts, 0.66M parameters; CIFAR-10 error 7.17% in the original paper.",
    ),
    "resnet56": (
        dict(layers=(9, 9, 9)),
        "ResNet-56 for CIFAR (He et al. 2015, https://arxiv.org/abs/1512.03385): post-activation basic blocks, "
        "option-A shortcuts, 0.85M parameters; CIFAR-10 error 6.97% in the original paper.",
    ),
    "resnet110": (
        dict(layers=(18, 18, 18)),
        "ResNet-110 for CIFAR (He et al. 2015, https://arxiv.org/abs/1512.03385): post-activation basic blocks, "
        "option-A shortcuts, 1.7M parameters; CIFAR-10 error 6.43% in the original paper.",
    ),
    "resnet1202": (
        dict(layers=(200, 200, 200)),
        "ResNet-1202 for CIFAR (He et al. 2015, https://arxiv.org/abs/1512.03385): post-activation basic blocks, "
        "option-A shortcuts, 19.4M parameters; CIFAR-10 error 7.93% in the original paper.",
    ),
    "resnet56_sd": (
        dict(layers=(9, 9, 9), stochastic=StochasticDepth(p_last=0.8)),
        "ResNet-56 (He et al. 2015) with stochastic depth (Huang et al. 2016, https://arxiv.org/abs/1603.09382), p_L "
        "= 0.8 to pair with lm_resnet56_sd (survival 1 - i / 26 * 0.2 for block i of 27, per mini-batch); 0.85M "
        "parameters; 500-epoch schedule (lr 0.1, / 10 after epochs 250 and 375).",
    ),
    "resnet110_sd": (
        dict(layers=(18, 18, 18), stochastic=StochasticDepth(p_last=0.5)),
        "ResNet-110 with stochastic depth, p_L = 0.5 (Huang et al. 2016, https://arxiv.org/abs/1603.09382; CIFAR-10 "
        "error 5.25%, the paper's stochastic-depth baseline row): 1.7M parameters, survival 1 - i / 53 * 0.5 for "
        "block i of 54, per mini-batch; 500-epoch schedule (lr 0.1, / 10 after epochs 250 and 375). Huang et al. "
        "count blocks from 1 (their first survival is 1 - 0.5 / 54); here, as in the LM-ResNet code, block 0 always "
        "survives.",
    ),
}
register_table(cifar_resnet, __name__, _ROWS)
