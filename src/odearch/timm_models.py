"""odearch's models in timm's registry: ``timm.create_model("odearch_lm_resnet20")`` (timm is optional).

Every odearch model ``NAME`` is registered with timm as ``odearch_NAME`` (the prefix keeps clear of timm's own
``resnet50`` etc.), with a default pretrained config (input size, mean, std, ...) so ``timm.list_models("odearch_*")``,
``timm.data.resolve_data_config`` and timm's training script see the right data setup. Registration happens on
:func:`register_timm`, which ``import odearch`` calls itself when timm is already imported; to run timm's
``train.py`` on an odearch model, register first:

    python -m odearch.timm_models path/to/timm/train.py --model odearch_lm_resnet20 --num-classes 10 ...

The entry points accept timm's factory arguments: ``pretrained``, ``num_classes`` (0: pooled features),
``features_only`` / ``out_indices``, ``in_chans``, ``drop_path_rate``, ``drop_rate`` (classifier dropout),
``global_pool`` (``"avg"`` or ``""``), ``device``, ``dtype``; ``pretrained_cfg`` and ``pretrained_cfg_overlay``
update the model's ``pretrained_cfg``; ``drop_block_rate`` must be 0 and ``scriptable`` False (odearch models are
not TorchScript-scriptable: trace, export or compile them).
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from .models import create_model, list_models, model_entrypoint
from .nn.cfg import data_cfg

PREFIX = "odearch_"

# timm's factory arguments that odearch models do not take: refused unless left at their "off" value
_UNSUPPORTED_OFF = {"drop_block_rate": 0.0, "scriptable": False}
_IGNORED = ("cache_dir", "exportable", "no_jit", "bn_momentum", "bn_eps")


def _timm_cfg(name: str) -> dict[str, Any]:
    """The default data config of ``name`` without building it (CIFAR or ImageNet by family)."""
    imagenet = model_entrypoint(name).__module__.endswith("imagenet_resnet")
    cfg = data_cfg("imagenet" if imagenet else "cifar", 1000 if imagenet else 10)
    cfg.pop("dataset")
    return cfg


def _entry(name: str) -> Callable[..., nn.Module]:
    def entry(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        for key, off in _UNSUPPORTED_OFF.items():
            value = kwargs.pop(key, None)
            if value is not None and value != off:
                raise ValueError(f"{PREFIX}{name}: odearch models do not support {key}={value!r} (only {off!r})")
        for key in _IGNORED:
            kwargs.pop(key, None)
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        model = create_model(name, pretrained=pretrained, **kwargs)
        overrides: dict[str, Any] = {}
        if pretrained_cfg is not None and not isinstance(pretrained_cfg, str):
            overrides.update(pretrained_cfg if isinstance(pretrained_cfg, dict) else pretrained_cfg.to_dict())
        overrides.update(pretrained_cfg_overlay or {})
        if overrides and hasattr(model, "pretrained_cfg"):
            model.pretrained_cfg = {**model.pretrained_cfg, **overrides, "architecture": f"{PREFIX}{name}"}
        elif hasattr(model, "pretrained_cfg"):
            model.pretrained_cfg = {**model.pretrained_cfg, "architecture": f"{PREFIX}{name}"}
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model

    entry.__name__ = entry.__qualname__ = f"{PREFIX}{name}"
    entry.__module__ = __name__
    entry.__doc__ = model_entrypoint(name).__doc__
    return entry


def register_timm() -> list[str]:
    """Register every odearch model with timm as ``odearch_<name>``; returns the timm names. Idempotent.

    Raises ``ImportError`` when timm is not installed.
    """
    from timm.models import _registry as timm_registry
    from timm.models._pretrained import PretrainedCfg

    module = sys.modules[__name__]
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    defaults: dict[str, dict[str, Any]] = getattr(module, "default_cfgs", {})
    names = []
    for name in list_models():
        timm_name = f"{PREFIX}{name}"
        names.append(timm_name)
        if timm_name in timm_registry._model_entrypoints:
            continue
        defaults[timm_name] = {k: v for k, v in _timm_cfg(name).items() if k in fields}
        module.default_cfgs = defaults  # type: ignore[attr-defined]  (timm reads the module's default_cfgs)
        fn = _entry(name)
        setattr(module, timm_name, fn)
        timm_registry.register_model(fn)
    return names


def main(argv: list[str] | None = None) -> None:
    """``python -m odearch.timm_models SCRIPT [ARGS...]``: register with timm, then run SCRIPT (timm's train.py,
    validate.py, ...) as ``__main__`` with ARGS."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    register_timm()
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
