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
"""

from __future__ import annotations

from torch import nn

from ..nn import BasicBlock, ResidualNetwork, ZeroPadShortcut, conv3x3, init_weights
from ..schemes import RevScheme, Scheme, get_scheme
from ._builders import make_stage, register_table

__all__ = ["cifar_resnet"]


def cifar_resnet(
    layers: tuple[int, int, int],
    scheme: str | Scheme = "euler",
    num_classes: int = 10,
    widths: tuple[int, int, int] = (16, 32, 64),
) -> ResidualNetwork:
    """A post-activation CIFAR ResNet (He et al. 2015) with option-A shortcuts, integrated by ``scheme``.

    Args:
        layers: residual blocks per stage.
        scheme: the integrator; ``rev`` is not defined with a post-activation (it would not be invertible).
        num_classes: classifier size.
        widths: stage widths.
    """
    if isinstance(get_scheme(scheme), RevScheme):
        raise ValueError("the rev scheme needs a pre-activation backbone: use rev_resnet20 / preact_resnet*")
    in_planes, stages = widths[0], []
    for planes, stride, n in zip(widths, (1, 2, 2), layers):
        stages.append(
            make_stage(
                scheme, BasicBlock, in_planes, planes, planes, n, stride, shortcut=ZeroPadShortcut, post_act=nn.ReLU()
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
register_table(_ROWS, cifar_resnet, __name__)
