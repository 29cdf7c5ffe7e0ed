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
with ``lm_resnet56_sd``. Every model takes ``p_last=``, ``drop_mode=``, ``noise_sigma=``. One difference from
Huang et al.'s code: their option-A shortcut down-samples by average pooling, ours by sub-sampling (u[:, :, ::2, ::2],
as He et al.'s option A); both are parameter-free, so the counts agree, but the two ``resnet110_sd`` functions differ.
"""

from __future__ import annotations

from torch import nn

from ..nn import BasicBlock, ResidualNetwork, ZeroPadShortcut, conv3x3, init_weights
from ..schemes import RevScheme, Scheme, get_scheme
from ._builders import make_stage, register_table, stochastic_options

__all__ = ["cifar_resnet"]


def cifar_resnet(
    layers: tuple[int, int, int],
    scheme: str | Scheme = "euler",
    num_classes: int = 10,
    widths: tuple[int, int, int] = (16, 32, 64),
    p_last: float | None = None,
    drop_mode: str = "batch",
    noise_sigma: float | None = None,
) -> ResidualNetwork:
    """A post-activation CIFAR ResNet (He et al. 2015) with option-A shortcuts, integrated by ``scheme``.

    Args:
        layers: residual blocks per stage.
        scheme: the integrator; ``rev`` is not defined with a post-activation (it would not be invertible).
        num_classes: classifier size.
        widths: stage widths.
        p_last: stochastic depth: survival probability of the last block, linear decay from 1 over all blocks
            (None or 1: off). A dropped block is the identity: u_{n+1} = ReLU(u_n) = u_n.
        drop_mode: stochastic depth per mini-batch (``"batch"``) or per sample (``"sample"``).
        noise_sigma: noise injection after every block in training, before its ReLU (None: off).
    """
    if isinstance(get_scheme(scheme), RevScheme):
        raise ValueError("the rev scheme needs a pre-activation backbone: use rev_resnet20 / preact_resnet*")
    stochastic = stochastic_options(layers, p_last, drop_mode, noise_sigma)
    in_planes, stages = widths[0], []
    for planes, stride, n, opts in zip(widths, (1, 2, 2), layers, stochastic):
        stages.append(
            make_stage(
                scheme,
                BasicBlock,
                in_planes,
                planes,
                planes,
                n,
                stride,
                shortcut=ZeroPadShortcut,
                post_act=nn.ReLU(),
                **opts,  # type: ignore[arg-type]
            )
        )
        in_planes = planes
    stem = nn.Sequential(conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes))
    model = ResidualNetwork(stem, stages, head)
    init_weights(model)
    return model


_ROWS = [
    (
        f"resnet{d}",
        {"layers": ((d - 2) // 6,) * 3},
        f"ResNet-{d} for CIFAR (He et al. 2015, https://arxiv.org/abs/1512.03385): post-activation basic blocks, "
        f"option-A shortcuts, {p} parameters; CIFAR-10 error {e}% in the original paper.",
    )
    for d, p, e in (
        (20, "0.27M", 8.75),
        (32, "0.46M", 7.51),
        (44, "0.66M", 7.17),
        (56, "0.85M", 6.97),
        (110, "1.7M", 6.43),
        (1202, "19.4M", 7.93),
    )
]
_ROWS += [
    (
        "resnet56_sd",
        {"layers": (9, 9, 9), "p_last": 0.8},
        "ResNet-56 (He et al. 2015) with stochastic depth (Huang et al. 2016, https://arxiv.org/abs/1603.09382), "
        "p_L = 0.8 to pair with lm_resnet56_sd (survival 1 - i / 26 * 0.2 for block i of 27, per mini-batch); "
        "0.85M parameters; 500-epoch schedule (lr 0.1, / 10 after epochs 250 and 375).",
    ),
    (
        "resnet110_sd",
        {"layers": (18, 18, 18), "p_last": 0.5},
        "ResNet-110 with stochastic depth, p_L = 0.5 (Huang et al. 2016, https://arxiv.org/abs/1603.09382; "
        "CIFAR-10 error 5.25%, the paper's stochastic-depth baseline row): 1.7M parameters, survival "
        "1 - i / 53 * 0.5 for block i of 54, per mini-batch; 500-epoch schedule (lr 0.1, / 10 after epochs 250 "
        "and 375). Huang et al. count blocks from 1 (their first survival is 1 - 0.5 / 54); here, as in the "
        "LM-ResNet code, block 0 always survives.",
    ),
]
register_table(_ROWS, cifar_resnet, __name__)
