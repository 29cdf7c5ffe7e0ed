"""Turn a plain ResNet into its LM form, reusing its weights: :func:`to_lm` (and back: :func:`from_lm`).

Each stage u_{n+1} = ReLU(u_n + f_n(u_n)) becomes the LM stage of the paper,

    u_{n+1} = ReLU((1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)),

an :class:`~odearch.nn.Stage` over the blocks' residual branches f_n (the block without its skip connection and
final activation), whose first block's ``downsample`` is the transition shortcut P (the LM history restarts at
u_prev := P(u_0)); a stage without a ``downsample`` (ResNet-18 / 34 ``layer1``) starts with a forward Euler step.
With k_n = 0 the network computes exactly what it computed before.

Inputs: torchvision ``ResNet`` (resnet18 / 34 / 50 / 101 / 152, resnext*, wide_resnet*), timm ``ResNet`` (plain
blocks with optional SE, anti-aliasing, drop-block and drop-path, when timm is installed), and odearch models whose
stages are forward Euler :class:`~odearch.nn.Stage` s (``resnet50`` of :mod:`odearch.models.imagenet_resnet`, the
CIFAR ``ResidualNetwork`` s).

No weight is copied: the result holds the very modules (and parameter tensors) of the input. By default the input
model is left as it was, so it stays the plain twin sharing every weight with the LM one; ``inplace=True`` replaces
its stages instead. Converted layers keep torchvision's checkpoint keys (``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``) plus ``layer<i>.lm_k``.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from .models.imagenet_resnet import LAYER_NAMES
from .nn import Stage
from .nn.compat import use_torchvision_names
from .nn.network import out_channels as _out_channels
from .nn.stage import step_runner
from .schemes import LMScheme, Scheme

__all__ = ["TimmBranch", "TorchvisionBranch", "akamaster_state_dict", "from_lm", "load_akamaster", "to_lm"]


# ------------------------------------------------------------------------------------------------ residual branches
class TorchvisionBranch(nn.Module):
    """f(u) of a torchvision ``BasicBlock`` / ``Bottleneck``: the block without ``downsample``, skip and final ReLU.

    Basic: f = BN(conv3x3(ReLU(BN(conv3x3(u))))); bottleneck: f = BN(conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(u))))))))
    with the stride and groups on the 3x3 convolution. Holds the block's own modules under their own names.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for name, child in block.named_children():
            if name != "downsample":
                self.add_module(name, child)
        self.bottleneck = hasattr(block, "conv3")

    def forward(self, u: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(u)))
        if not self.bottleneck:
            return self.bn2(self.conv2(out))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class TimmBranch(nn.Module):
    """f(u) of a timm ``BasicBlock`` / ``Bottleneck``: its layers in timm's order (drop-block, anti-aliasing, SE,
    drop-path included) without ``downsample``, the skip and the final activation (``act2`` / ``act3``)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.bottleneck = hasattr(block, "conv3")
        final_act = "act3" if self.bottleneck else "act2"
        for name, child in block.named_children():
            if name not in ("downsample", final_act):
                self.add_module(name, child)

    def _opt(self, name: str, x: Tensor) -> Tensor:
        layer = getattr(self, name, None)  # timm leaves se / drop_path as None when unused
        return x if layer is None else layer(x)

    def forward(self, u: Tensor) -> Tensor:
        if self.bottleneck:
            x = self.act1(self.bn1(self.conv1(u)))
            x = self._opt("aa", self.act2(self._opt("drop_block", self.bn2(self.conv2(x)))))
            x = self.bn3(self.conv3(x))
        else:
            x = self._opt("aa", self.act1(self._opt("drop_block", self.bn1(self.conv1(u)))))
            x = self.bn2(self.conv2(x))
        return self._opt("drop_path", self._opt("se", x))


def _block_kind(block: nn.Module) -> str | None:
    """'torchvision' / 'timm' for the residual blocks this module converts, else None."""
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        if isinstance(block, (BasicBlock, Bottleneck)):
            return "torchvision"
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    cls = type(block)
    if cls.__module__.startswith("timm.") and cls.__name__ in ("BasicBlock", "Bottleneck"):
        return "timm"
    return None


# ------------------------------------------------------------------------------------------------------- stages
def _lm_stage_from_blocks(layer: nn.Module, name: str, scheme: LMScheme) -> Stage:
    """An LM Stage over the residual branches of a ``nn.Sequential`` of torchvision / timm blocks."""
    blocks = list(layer.children()) if isinstance(layer, nn.Sequential) else []
    if not blocks:
        raise TypeError(f"{name}: expected an nn.Sequential of residual blocks, got {type(layer).__name__}")
    kinds = {_block_kind(b) for b in blocks}
    if None in kinds or len(kinds) != 1:
        found = sorted({type(b).__module__ + "." + type(b).__name__ for b in blocks})
        raise TypeError(
            f"{name}: to_lm converts torchvision or timm BasicBlock / Bottleneck layers, found {', '.join(found)}"
        )
    late = [i for i, b in enumerate(blocks) if i > 0 and getattr(b, "downsample", None) is not None]
    if late:
        raise ValueError(f"{name}: only the first block of a stage may down-sample, block(s) {late} have a downsample")
    kind = kinds.pop()
    if kind == "torchvision":
        fns: list[nn.Module] = [TorchvisionBranch(b) for b in blocks]
        post_act: nn.Module = nn.ReLU()
    else:
        fns = [TimmBranch(b) for b in blocks]
        post_act = getattr(blocks[0], "act3" if hasattr(blocks[0], "conv3") else "act2")
        if any(True for _ in post_act.parameters()):
            raise ValueError(f"{name}: a final activation with parameters ({type(post_act).__name__}) is per block")
    stage = Stage(
        scheme,
        fns,
        shortcut=getattr(blocks[0], "downsample", None),
        post_act=post_act,
        channels=_out_channels(fns[-1]) if scheme.per_channel else None,
    )
    return use_torchvision_names(stage)


def _restage(stage: Stage, scheme: str | Scheme, name: str) -> Stage:
    """The same residual functions, shortcut and activation integrated by ``scheme``."""
    fns = stage.step_fns
    new = Stage(
        scheme,
        fns,
        shortcut=stage.shortcut,
        history_shortcut=stage.history_shortcut,
        post_act=stage.post_act,
        channels=_out_channels(fns[-1]) if step_runner(scheme).needs_channels else None,
    )
    return use_torchvision_names(new) if stage.__dict__.get("_odearch_torchvision_names") else new


# ------------------------------------------------------------------------------------------------------ models
def _shallow_clone(model: nn.Module) -> nn.Module:
    """A new module of the same class holding the same children, parameters and buffers (own containers)."""
    new = object.__new__(type(model))
    new.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, list, set)) else v for k, v in model.__dict__.items()})
    return new


def _stage_slots(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, attribute, display name) of every stage to convert: ``layer1..4`` or ``stages.<i>``."""
    if all(isinstance(getattr(model, n, None), nn.Module) for n in LAYER_NAMES):
        return [(model, n, n) for n in LAYER_NAMES]
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.ModuleList) and len(stages) and all(isinstance(s, Stage) for s in stages):
        return [(stages, str(i), f"stages.{i}") for i in range(len(stages))]
    raise TypeError(
        "to_lm / from_lm expect a ResNet with layer1..layer4 (torchvision, timm, odearch ImageNet) or an odearch "
        f"ResidualNetwork with Stages in .stages, got {type(model).__module__}.{type(model).__name__}"
    )


def to_lm(
    model: nn.Module,
    k_init: float | tuple[float, float] = 0.0,
    per_channel: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """The LM form of a plain ResNet, u_{n+1} = ReLU((1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)), sharing its weights.

    Args:
        model: a torchvision or timm ``ResNet``, or an odearch model of forward Euler Stages.
        k_init: the initial k_n: a constant (default 0, so the output is unchanged until k_n is trained) or a range
            (low, high) to draw from, e.g. the paper's (-0.1, 0.0).
        per_channel: one k_n per channel instead of one per step, drawn from ``k_init`` (the official ``MResNetC``
            draws k_n ~ U[1.0, 1.1]: ``k_init=odearch.schemes.lm.MRESNETC_K_INIT``).
        inplace: replace the stages of ``model`` itself instead of returning a new model that shares its modules.

    Returns:
        A model of the same class whose stages are LM :class:`~odearch.nn.Stage` s over the same modules.
    """
    low, high = (float(k_init), float(k_init)) if isinstance(k_init, (int, float)) else map(float, k_init)
    scheme = LMScheme(name="lm_channel" if per_channel else "lm", k_init=(low, high), per_channel=per_channel)
    slots = _stage_slots(model)
    new_stages = []
    for parent, attr, name in slots:
        layer = getattr(parent, attr)
        if isinstance(layer, Stage):
            if not layer.runner.is_euler:
                raise ValueError(f"{name}: to_lm converts forward Euler stages, this one uses {layer.scheme.name!r}")
            new_stages.append(_restage(layer, scheme, name))
        else:
            new_stages.append(_lm_stage_from_blocks(layer, name, scheme))
    return _replace(model, slots, new_stages, inplace)


def from_lm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The plain (forward Euler) twin of an LM model of Stages, dropping k_n: the inverse of :func:`to_lm`.

    The output equals the LM model's only where every k_n is 0. Stages that are not LM are left as they are.
    """
    slots = _stage_slots(model)
    new_stages = []
    for parent, attr, name in slots:
        layer = getattr(parent, attr)
        if not isinstance(layer, Stage):
            raise TypeError(f"{name}: from_lm expects odearch Stages, got {type(layer).__name__}")
        new_stages.append(_restage(layer, "euler", name) if layer.runner.has_k else layer)
    return _replace(model, slots, new_stages, inplace)


def _replace(
    model: nn.Module, slots: list[tuple[nn.Module, str, str]], stages: list[Stage], inplace: bool
) -> nn.Module:
    """Put ``stages`` into the slots, on ``model`` itself or on a shallow clone that shares everything else."""
    if not inplace:
        clones: dict[int, nn.Module] = {id(model): _shallow_clone(model)}
        root = clones[id(model)]
        for parent, _, _ in slots:
            if id(parent) not in clones:  # the .stages ModuleList: clone it and hang the clone on the new root
                clones[id(parent)] = _shallow_clone(parent)
                for name, child in model.named_children():
                    if child is parent:
                        setattr(root, name, clones[id(parent)])
        slots = [(clones[id(p)], attr, name) for p, attr, name in slots]
    for (parent, attr, _), stage in zip(slots, stages):
        setattr(parent, attr, stage)
    return model if inplace else root


# ------------------------------------------------------------------------------------------------------ akamaster
AKAMASTER_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202")


def akamaster_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of an akamaster ``pytorch_resnet_cifar10`` ResNet (https://github.com/akamaster/
    pytorch_resnet_cifar10) to odearch's ``resnet20`` .. ``resnet1202`` (same network: post-activation basic blocks,
    option-A zero-padding shortcuts without parameters, so only names change):

    ``conv1`` -> ``stem.0``, ``bn1`` -> ``stem.1``, ``layer<i>.<j>.*`` -> ``stages.<i-1>.blocks.<j>.*``,
    ``linear`` -> ``head.2``; a ``module.`` prefix (their DataParallel checkpoints) is dropped.

    Raises:
        ValueError: a key that is not part of that layout (e.g. option-B shortcut parameters).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        k = key.removeprefix("module.")
        head, _, rest = k.partition(".")
        if head == "conv1":
            new = f"stem.0.{rest}"
        elif head == "bn1":
            new = f"stem.1.{rest}"
        elif head == "linear":
            new = f"head.2.{rest}"
        elif head in ("layer1", "layer2", "layer3") and rest.split(".", 1)[0].isdigit():
            block, _, param = rest.partition(".")
            if param.split(".", 1)[0] not in ("conv1", "bn1", "conv2", "bn2"):
                raise ValueError(f"{key!r}: not an akamaster option-A ResNet key (only conv1/bn1/conv2/bn2 in blocks)")
            new = f"stages.{int(head[-1]) - 1}.blocks.{block}.{param}"
        else:
            raise ValueError(f"{key!r}: not an akamaster CIFAR ResNet key")
        out[new] = value
    return out


def load_akamaster(path: str, model: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """An odearch ResNet holding the weights of an akamaster ``.th`` checkpoint (a dict with ``state_dict`` and
    ``best_prec1``, or a bare state dict), read with ``torch.load(weights_only=True)``.

    Args:
        path: the ``.th`` file, e.g. ``resnet20-12fca82f.th``.
        model: the odearch name (``resnet20`` ...); default: found from the number of blocks.

    Returns:
        (the model in eval mode, info: ``model``, ``num_classes``, ``best_prec1`` when the file has it).
    """
    import torch

    from .models import create_model

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, or one holding more than tensors and numbers
        raise ValueError(f"{path}: not a readable torch checkpoint ({' '.join(str(error).split())[:120]})") from error
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict, or a dict with a 'state_dict' key")
    tensors = akamaster_state_dict(sd)
    blocks = {k.split(".")[3] for k in tensors if k.startswith("stages.0.blocks.")}
    depth = 6 * len(blocks) + 2
    name = model or f"resnet{depth}"
    if name not in AKAMASTER_MODELS:
        raise ValueError(f"{path}: {depth} layers; akamaster ResNets are {', '.join(AKAMASTER_MODELS)}, got {name!r}")
    num_classes = tensors["head.2.weight"].shape[0]
    net = create_model(name, num_classes=num_classes)
    net.load_state_dict(tensors, strict=True)
    info: dict[str, Any] = {"model": name, "num_classes": num_classes}
    if isinstance(ckpt, dict) and "best_prec1" in ckpt:
        info["best_prec1"] = float(ckpt["best_prec1"])
    return net.eval(), info
