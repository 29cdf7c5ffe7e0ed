"""State-dict naming of a Stage as a torchvision ``nn.Sequential`` layer of residual blocks.

A :class:`~odearch.nn.Stage` stores its residual functions as ``blocks.<i>`` and its transition shortcut as
``shortcut``; a torchvision ResNet layer stores block i as ``<i>`` and the projection inside block 0 as
``0.downsample``. :func:`use_torchvision_names` registers state-dict hooks on a Stage so that

    state_dict() writes    <i>.<rest>              for blocks.<i>.<rest>
                           0.downsample.<rest>     for shortcut.<rest>
    load_state_dict() reads both spellings, and reports missing / unexpected keys in the torchvision spelling.

Every other key (``lm_k``, ``history_shortcut.*``) keeps its name. ``named_parameters()`` / ``named_modules()`` /
``get_parameter()`` keep the module names (``layer1.blocks.0.conv1.weight``): the hooks rename checkpoints only.
The hooks are module-level functions, so a model with them still pickles, deep-copies and compiles.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .stage import Stage

_BLOCKS, _SHORTCUT, _DOWNSAMPLE = "blocks.", "shortcut.", "0.downsample."


def _public(rest: str) -> str:
    """Stage key (relative to the stage) -> torchvision key."""
    if rest.startswith(_BLOCKS):
        return rest[len(_BLOCKS) :]
    if rest.startswith(_SHORTCUT):
        return _DOWNSAMPLE + rest[len(_SHORTCUT) :]
    return rest


def _internal(rest: str) -> str:
    """torchvision key (relative to the layer) -> Stage key; Stage keys pass through unchanged."""
    if rest.startswith(_DOWNSAMPLE):
        return _SHORTCUT + rest[len(_DOWNSAMPLE) :]
    head = rest.partition(".")[0]
    return _BLOCKS + rest if head.isdigit() else rest


def _sort_key(rest: str) -> tuple[int, int]:
    """torchvision order: block 0, its downsample, block 1, ...; the Stage's own keys (``lm_k``) last."""
    head = rest.partition(".")[0]
    if rest.startswith(_DOWNSAMPLE):
        return (0, 1)
    return (int(head), 0) if head.isdigit() else (1 << 30, 0)


def _state_dict_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    # The stage's keys are the last ones written so far: pop them, rename, and append them in torchvision order.
    ours = [k for k in state_dict if k.startswith(prefix)]
    items = [(_public(k[len(prefix) :]), state_dict.pop(k)) for k in ours]
    items.sort(key=lambda kv: _sort_key(kv[0]))  # stable: each block keeps its own order
    for rest, value in items:
        state_dict[prefix + rest] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # module versions (BatchNorm's) under the torchvision module names
        for name in [n for n in metadata if n.startswith(prefix)]:
            value = metadata.pop(name)
            rest = _public(name[len(prefix) :] + ".")[:-1]
            if rest and rest != "blocks":
                metadata[prefix + rest] = value


def _load_pre_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    module.__dict__["_odearch_state_prefix"] = prefix  # for the post hook, which is not given the prefix
    for k in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + _internal(k[len(prefix) :])
        if new != k:
            state_dict[new] = state_dict.pop(k)


def _load_post_hook(module: nn.Module, incompatible: Any) -> None:
    prefix = module.__dict__.pop("_odearch_state_prefix", "")
    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        keys[:] = [prefix + _public(k[len(prefix) :]) if k.startswith(prefix) else k for k in keys]


def use_torchvision_names(stage: Stage) -> Stage:
    """Give ``stage`` the state-dict keys of a torchvision ResNet layer (see the module docstring); returns it."""
    if not isinstance(stage, Stage):
        raise TypeError(f"use_torchvision_names expects an odearch Stage, got {type(stage).__name__}")
    if stage.__dict__.get("_odearch_torchvision_names"):
        return stage
    stage.register_state_dict_post_hook(_state_dict_hook)
    stage.register_load_state_dict_pre_hook(_load_pre_hook)
    stage.register_load_state_dict_post_hook(_load_post_hook)
    stage.__dict__["_odearch_torchvision_names"] = True
    return stage
