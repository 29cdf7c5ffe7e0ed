"""ImageNet ResNets and ResNeXt (torchvision's layout and checkpoint keys) and their LM twins (the paper's ImageNet
rows).

Post-activation bottlenecks as torchvision ("v1.5": the stride sits on the 3x3 convolution), every stage an
integrator over its residual functions with ``post_act=ReLU``:

    ResNet:     u_{n+1} = ReLU(u_n + f_n(u_n))
    LM-ResNet:  u_{n+1} = ReLU((1 - k_n) u_n + k_n u_{n-1} + f_n(u_n))

with f = conv1x1-BN-ReLU-conv3x3(stride, groups)-BN-ReLU-conv1x1-BN. Stem conv7x7/2-BN-ReLU-maxpool3x3/2; four
stages of 64 / 128 / 256 / 512 (x4) channels, strides 1 / 2 / 2 / 2; the first block of each stage is the transition
u_1 = ReLU(P(u_0) + f_0(u_0)) with the projection P = conv1x1-BN (torchvision's ``downsample``), and the LM history
restarts there, u_prev := P(u_0) (the Stage does this). Head global average pool-FC.

Checkpoints: ``state_dict()`` keys and shapes are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, ..., ``fc.weight``); the LM twin adds ``layer<i>.lm_k`` only. So a torchvision
checkpoint loads strictly into the plain model and with ``strict=False`` (only ``lm_k`` missing) into the LM twin,
and ours loads into torchvision. ``named_parameters()`` keeps the module names (``layer1.blocks.0.conv1.weight``,
``layer1.shortcut.0.weight``): see :mod:`odearch.nn.compat`.

| name | params | paper's table (top-1 / top-5 error, params) | torchvision v1.5 reference weights |
|---|---|---|---|
| resnet50 | 25,557,032 | 24.7 / 7.8, 25.6M (v1) | 23.87 / 7.14 |
| resnet101 | 44,549,160 | 23.6 / 7.1, 44.5M (v1) | 22.63 / 6.45 |
| resnet152 | 60,192,808 | 23.0 / 6.7, 60.2M (v1) | 21.69 / 5.95 |
| resnext50_32x4d | 25,028,904 | 25.0M (Xie et al. 2017) |
| lm_resnet50 | 25,557,044 (+12 k_n) | 23.8 / 7.0 (?) |
| lm_resnet101 | 44,549,189 (+29 k_n) | 22.6 / 6.4 (?) |
| lm_resnet152 | 60,192,854 (+46 k_n) | |
| lm_resnext50_32x4d | 25,028,916 (+12 k_n) | |

The baseline errors the paper quotes (24.7 / 23.6 / 23.0 top-1) are those of He et al.'s original Caffe models,
"v1", whose stride sits on the first 1x1 convolution of a down-sampling bottleneck; the models here are v1.5
(stride on the 3x3), for which torchvision's reference weights (``IMAGENET1K_V1``, single 224 crop) reach the errors
of the last column (from ``torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta`` etc.). Compare a v1.5
run against v1.5 numbers.

The LM twins are their plain twins plus one k_n per LM step (blocks - 1 per stage): the paper's printed LM
ImageNet parameter counts are not confirmed, so nothing else is added. ``scheme=`` swaps the integrator as in the
CIFAR families, and ``p_last=`` (or ``drop_path_rate=``, ``stochastic=``) adds stochastic depth as there.
Recipe: ``configs/imagenet/*.yaml`` and :mod:`odearch.data.imagenet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from ..nn import BasicBlock, Projection, ResNeXtBottleneck, Stage, init_weights
from ..nn.compat import use_torchvision_names
from ..nn.network import TimmInterface, out_channels
from ..nn.stage import step_runner
from ..nn.stochastic import StochasticDepth
from ..schemes import Scheme
from ._builders import StageSpec, make_stages
from ._registry import register_table

__all__ = ["LAYER_NAMES", "ImageNetResNet", "imagenet_resnet"]

LAYER_NAMES = ("layer1", "layer2", "layer3", "layer4")  # torchvision's stage attributes (also read by odearch.convert)


class ImageNetResNet(TimmInterface, nn.Module):
    """x -> conv1-bn1-relu-maxpool -> layer1..layer4 (Stages) -> avgpool-fc, under torchvision's attribute names.

    Args:
        layers: the four stages.
        num_classes: classifier size.
        stem_width: channels of the 7x7 stem convolution.

    timm's interface (:class:`~odearch.nn.network.TimmInterface`): ``num_classes=0`` gives pooled features,
    ``reset_classifier``, ``feature_info`` (layer1..layer4), ``pretrained_cfg`` (ImageNet statistics, 224 x 224).
    """

    data_kind = "imagenet"

    def __init__(self, layers: Sequence[Stage], num_classes: int = 1000, stem_width: int = 64) -> None:
        super().__init__()
        if len(layers) != len(LAYER_NAMES):
            raise ValueError(f"an ImageNet ResNet has {len(LAYER_NAMES)} stages, got {len(layers)}")
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for name, layer in zip(LAYER_NAMES, layers):
            self.add_module(name, use_torchvision_names(layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_channels(layers[-1].blocks[-1]), num_classes)  # type: ignore[arg-type]
        self._check_classifier()

    @property
    def stages(self) -> list[Stage]:
        """layer1..layer4, as ``ResidualNetwork.stages`` (those kept by ``prune_intermediate_layers``)."""
        return [getattr(self, name) for name in LAYER_NAMES if isinstance(getattr(self, name), Stage)]

    def _stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _stage_names(self) -> list[str]:
        return list(LAYER_NAMES)

    def _get_classifier_slot(self) -> nn.Module:
        return self.fc

    def _set_classifier_slot(self, fc: nn.Module) -> None:
        self.fc = fc

    def _remove_head(self) -> None:
        self.fc = nn.Identity()

    def _prune_stages(self, n: int) -> None:
        for name in LAYER_NAMES[n:]:
            setattr(self, name, nn.Identity())

    def _group_patterns(self) -> tuple[str, str]:
        return r"^(conv1|bn1)\.", r"^layer(\d+)"

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool and classify layer4's state; with ``pre_logits`` the pooled features (B, num_features)
        (with ``global_pool=""`` the unpooled map)."""
        x = self._head_dropout(self.avgpool(x).flatten(1) if self.global_pool else x)
        return x if pre_logits else self.fc(x)


def _bottleneck(in_planes: int, planes: int, stride: int, *, out_planes: int, groups: int) -> ResNeXtBottleneck:
    """``make_stages``' (in_planes, planes, stride) signature; ``planes`` is the (grouped) bottleneck width."""
    return ResNeXtBottleneck(in_planes, out_planes, planes, groups, stride)


def _stage_specs(layers: Sequence[int], bottleneck: bool, groups: int, width_per_group: int) -> list[StageSpec]:
    """torchvision's stages: planes 64 / 128 / 256 / 512, x4 out of a bottleneck of width
    ``int(planes * width_per_group / 64) * groups``; strides 1 / 2 / 2 / 2."""
    if not bottleneck:
        return [StageSpec(p, p, n, s, block=BasicBlock) for p, n, s in zip((64, 128, 256, 512), layers, (1, 2, 2, 2))]
    return [
        StageSpec(
            int(p * (width_per_group / 64.0)) * groups,
            4 * p,
            n,
            s,
            block=partial(_bottleneck, out_planes=4 * p, groups=groups),
        )
        for p, n, s in zip((64, 128, 256, 512), layers, (1, 2, 2, 2))
    ]


def imagenet_resnet(
    layers: tuple[int, int, int, int],
    bottleneck: bool = True,
    groups: int = 1,
    width_per_group: int = 64,
    scheme: str | Scheme = "euler",
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    stochastic: StochasticDepth | None = None,
) -> ImageNetResNet:
    """An ImageNet ResNet / ResNeXt (torchvision v1.5 layout) whose stages integrate with ``scheme``.

    Args:
        layers: residual blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        bottleneck: bottleneck blocks (ResNet-50 and deeper) instead of basic blocks (ResNet-18 / 34).
        groups: cardinality of the 3x3 convolutions (ResNeXt).
        width_per_group: channels per group in the first stage; the bottleneck width is
            ``int(planes * width_per_group / 64) * groups`` as in torchvision.
        scheme: the integrator; ``rev`` is not defined with a post-activation.
        num_classes: classifier size.
        zero_init_residual: zero the last BN weight of every residual function, so each step starts as the
            identity (Goyal et al. 2017; torchvision's option of the same name, off by default there too).
        stochastic: stochastic depth and noise injection (default off); a dropped block is u_{n+1} = ReLU(u_n),
            and the noise is added before the ReLU.
    """
    if step_runner(scheme).split > 1:  # RevNet's (F, G) halves
        raise ValueError("the rev scheme is not defined on the post-activation ImageNet ResNet")
    if not bottleneck and (groups != 1 or width_per_group != 64):
        raise ValueError("BasicBlock only supports groups=1 and width_per_group=64")
    specs = _stage_specs(layers, bottleneck, groups, width_per_group)
    stages = make_stages(scheme, specs, 64, shortcut=Projection, post_act=nn.ReLU, stochastic=stochastic)
    model = ImageNetResNet(stages, num_classes=num_classes)
    init_weights(model)
    if zero_init_residual:
        for stage in model.stages:
            for fn in stage.blocks:
                nn.init.zeros_(getattr(fn, "bn3" if bottleneck else "bn2").weight)
    return model


# One row per registered name: name -> (constructor arguments, docstring).
_ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "resnet50": (
        dict(layers=(3, 4, 6, 3)),
        "ResNet-50 for ImageNet (He et al. 2015, https://arxiv.org/abs/1512.03385; torchvision v1.5 layout and "
        "checkpoint keys): 25.6M parameters; top-1 / top-5 error 24.7 / 7.8% in the paper's table, which is the "
        "original Caffe v1 model's (stride on the 1x1); torchvision's v1.5 weights: 23.87 / 7.14%.",
    ),
    "lm_resnet50": (
        dict(layers=(3, 4, 6, 3), scheme="lm"),
        "LM-ResNet-50 for ImageNet (Lu et al. 2018, https://arxiv.org/abs/1710.10121): resnet50 (25.6M) plus 12 k_n "
        "(the printed LM parameter count is not confirmed); top-1 / top-5 error 23.8 / 7.0 (?)%.",
    ),
    "resnet101": (
        dict(layers=(3, 4, 23, 3)),
        "ResNet-101 for ImageNet (He et al. 2015, https://arxiv.org/abs/1512.03385; torchvision v1.5 layout and "
        "checkpoint keys): 44.5M parameters; top-1 / top-5 error 23.6 / 7.1% in the paper's table, which is the "
        "original Caffe v1 model's (stride on the 1x1); torchvision's v1.5 weights: 22.63 / 6.45%.",
    ),
    "lm_resnet101": (
        dict(layers=(3, 4, 23, 3), scheme="lm"),
        "LM-ResNet-101 for ImageNet (Lu et al. 2018, https://arxiv.org/abs/1710.10121): resnet101 (44.5M) plus 29 k_n"
        " (the printed LM parameter count is not confirmed); top-1 / top-5 error 22.6 / 6.4 (?)%.",
    ),
    "resnet152": (
        dict(layers=(3, 8, 36, 3)),
        "ResNet-152 for ImageNet (He et al. 2015, https://arxiv.org/abs/1512.03385; torchvision v1.5 layout and "
        "checkpoint keys): 60.2M parameters; top-1 / top-5 error 23.0 / 6.7% in the paper's table, which is the "
        "original Caffe v1 model's (stride on the 1x1); torchvision's v1.5 weights: 21.69 / 5.95%.",
    ),
    "lm_resnet152": (
        dict(layers=(3, 8, 36, 3), scheme="lm"),
        "LM-ResNet-152 for ImageNet (Lu et al. 2018, https://arxiv.org/abs/1710.10121): resnet152 (60.2M) plus 46 k_n"
        " (the printed LM parameter count is not confirmed).",
    ),
    "resnext50_32x4d": (
        dict(layers=(3, 4, 6, 3), groups=32, width_per_group=4),
        "ResNeXt-50 32x4d for ImageNet (Xie et al. 2017, https://arxiv.org/abs/1611.05431; torchvision layout and "
        "checkpoint keys): 25.0M parameters.",
    ),
    "lm_resnext50_32x4d": (
        dict(layers=(3, 4, 6, 3), groups=32, width_per_group=4, scheme="lm"),
        "LM-ResNeXt-50 32x4d for ImageNet (Lu et al. 2018, https://arxiv.org/abs/1710.10121): resnext50_32x4d (25.0M)"
        " plus 12 k_n.",
    ),
}
register_table(imagenet_resnet, __name__, _ROWS)
