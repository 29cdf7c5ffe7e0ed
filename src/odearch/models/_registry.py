"""The model registry: ``register_model``, ``create_model``, ``list_models`` (timm's and torchvision's shape)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

from torch import nn

ModelFn = Callable[..., nn.Module]

_MODELS: dict[str, ModelFn] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Register a model constructor under its function name; a duplicate name raises ``ValueError``."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style filter such as ``"lm_*"``."""
    names = sorted(_MODELS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def is_model(name: str) -> bool:
    """True if ``name`` is registered."""
    return name in _MODELS


def model_entrypoint(name: str) -> ModelFn:
    """The constructor registered as ``name``; an unknown name raises ``ValueError`` listing close matches."""
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f"did you mean: {', '.join(close)}?" if close else "see odearch.list_models()"
        raise ValueError(f"unknown model {name!r}; {hint}") from None


def create_model(name: str, num_classes: int | None = None, pretrained: bool = False, **kwargs: object) -> nn.Module:
    """Build a registered model. Keyword arguments that are None are dropped, so an unset CLI flag never
    overrides a model's default (timm's rule); the others win over the entry's own arguments.

    Args:
        name: a name from :func:`list_models`, e.g. ``"lm_resnet56"``, optionally with a weights tag after a dot
            (``"lm_resnet20.cifar10_s0"``, see ``odearch.list_pretrained()``).
        num_classes: size of the classifier (10 for CIFAR-10, 100 for CIFAR-100); None keeps the entry's default
            (10 for the CIFAR families, 1000 for the ImageNet ones), or the weights' with `pretrained`.
        pretrained: load the weights shipped in the package (sha256-checked); a model without any raises
            ``ValueError`` listing those that have them.
        **kwargs: constructor options, e.g. ``scheme="rk2"``.
    """
    fn = model_entrypoint(name.partition(".")[0])
    if pretrained:
        from ._pretrained import load_pretrained, pretrained_entry

        entry = pretrained_entry(name)[1]  # before building: a name without weights fails fast
        base = {"scheme": entry.get("scheme"), **entry.get("model_kwargs", {})}
        classes = entry["num_classes"] if num_classes is None else num_classes
        kwargs = {k: v for k, v in {**base, "num_classes": classes, **kwargs}.items() if v is not None}
        return load_pretrained(fn(**kwargs), name, num_classes)
    kwargs = {k: v for k, v in {"num_classes": num_classes, **kwargs}.items() if v is not None}
    return fn(**kwargs)
