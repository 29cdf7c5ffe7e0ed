"""odearch's models in timm's registry: ``timm.create_model("odearch_lm_resnet20")`` (timm is optional).

Every odearch model ``NAME`` is registered with timm as ``odearch_NAME`` (the prefix keeps clear of timm's own
``resnet50`` etc.), with a default pretrained config (input size, mean, std, ...) so ``timm.list_models("odearch_*")``,
``timm.data.resolve_data_config`` and timm's training script see the right data setup. The weights shipped in the
package are timm tags: ``timm.list_models(pretrained=True)`` lists ``odearch_NAME.TAG`` for each ``NAME.TAG`` of
``odearch.list_pretrained()``, and ``timm.create_model("odearch_lm_resnet20.cifar10_s0", pretrained=True)`` loads them
from the package's files (sha256-checked, no network), as ``odearch.create_model`` does. Registration happens on
:func:`register_timm`, which ``import odearch`` calls itself, at once when timm is already imported, else as soon as
timm's own import finishes (an import hook); to run timm's ``train.py`` on an odearch model, register first:

    python -m odearch.timm_models path/to/timm/train.py --model odearch_lm_resnet20 --num-classes 10 ...

The entry points accept timm's factory arguments: ``pretrained``, ``num_classes`` (0: pooled features),
``features_only`` / ``out_indices``, ``in_chans``, ``drop_path_rate``, ``drop_rate`` (classifier dropout),
``global_pool`` (``"avg"`` or ``""``), ``device``, ``dtype``; ``pretrained_cfg`` and ``pretrained_cfg_overlay``
update the model's ``pretrained_cfg``; ``drop_block_rate`` must be 0 and ``scriptable`` False (odearch models are
not TorchScript-scriptable: trace, export or compile them; :data:`EXCLUDE_JIT_FILTERS` leaves them out of a timm-style
TorchScript test).

timm's data pipeline: ``create_transform(**resolve_data_config({}, model=m))`` is the paper's evaluation transform for
a CIFAR model (32 x 32, ``crop_pct`` 1: the resize and centre crop leave a 32 x 32 image as it is, then the CIFAR
mean / std). timm's training transform is not steered by the pretrained config (only its size, interpolation, mean and
std reach it) and has no pad-and-crop; :data:`TIMM_TRAIN_ARGS` are the arguments that come closest (the horizontal
flip alone, no random resized crop or colour jitter).
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import runpy
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from torch import nn

from .models import PretrainedError, create_model, list_models, model_entrypoint, read_registry, registry_file
from .nn.cfg import data_cfg

PREFIX = "odearch_"

EXCLUDE_JIT_FILTERS = [f"{PREFIX}*"]
"""timm model-name filters (fnmatch) of the models that ``torch.jit.script`` refuses: every odearch model. Add them to a
timm-style TorchScript test's exclusions, as timm's ``tests/test_models.py`` does with its own ``EXCLUDE_JIT_FILTERS``:
``timm.list_models(exclude_filters=EXCLUDE_FILTERS + EXCLUDE_JIT_FILTERS)``."""

TIMM_TRAIN_ARGS: dict[str, Any] = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "hflip": 0.5, "color_jitter": 0.0}
"""``timm.data.create_transform(**cfg, is_training=True, **TIMM_TRAIN_ARGS)``: the closest timm's factory comes to the
paper's CIFAR augmentation (4-pixel zero pad, random 32 x 32 crop, horizontal flip); the random resized crop takes
the whole 32 x 32 image unresized and the colour jitter does nothing, so it flips but does not translate. timm's
``train.py`` flags: ``--scale 1 1 --ratio 1 1 --hflip 0.5 --color-jitter 0`` (with ``--aa``, ``--reprob``, mixup and
cutmix left off, their defaults)."""

# timm's factory arguments that odearch models do not take: refused unless left at their "off" value
_UNSUPPORTED_OFF = {"drop_block_rate": 0.0, "scriptable": False}
_IGNORED = ("cache_dir", "exportable", "no_jit", "bn_momentum", "bn_eps")


def _timm_cfg(name: str) -> dict[str, Any]:
    """The default data config of ``name`` without building it (CIFAR or ImageNet by family)."""
    imagenet = model_entrypoint(name).__module__.endswith("imagenet_resnet")
    cfg = data_cfg("imagenet" if imagenet else "cifar", 1000 if imagenet else 10)
    cfg.pop("dataset")
    return cfg


def _weights_cfg(entry: dict[str, Any]) -> dict[str, Any]:
    """timm's pretrained config of the shipped weights of a registry ``entry``: the data config of the data set they
    were trained on and ``file``, the package's safetensors file (so timm counts them as weights)."""
    imagenet = model_entrypoint(entry["model"]).__module__.endswith("imagenet_resnet")
    cfg = data_cfg("imagenet" if imagenet else "cifar", entry["num_classes"])
    cfg.pop("dataset")
    return {**cfg, "file": str(registry_file().parent / entry["file"])}


def _timm_cfgs(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{"odearch_<name>[.<tag>]": cfg}`` for ``names``: one per shipped weights of a model (registry order, the first
    its default), or its untagged data config when it has none. A registry that is not one counts as no weights."""
    try:
        weights = read_registry()
    except PretrainedError:
        weights = {}
    cfgs: dict[str, dict[str, Any]] = {}
    for name in names:
        tagged = {f"{PREFIX}{full}": _weights_cfg(e) for full, e in weights.items() if e["model"] == name}
        cfgs.update(tagged or {f"{PREFIX}{name}": _timm_cfg(name)})
    return cfgs


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
        file = (pretrained_cfg_overlay or {}).get("file")  # timm's train.py --pretrained-path
        if pretrained and file:
            raise ValueError(
                f"{PREFIX}{name}: pretrained=True loads the weights shipped in odearch, not a file ({file}); "
                "use checkpoint_path= (train.py's --initial-checkpoint)"
            )
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        tag = pretrained_cfg if isinstance(pretrained_cfg, str) else ""  # timm passes "odearch_NAME.TAG"'s TAG
        model = create_model(f"{name}.{tag}" if tag else name, pretrained=pretrained, **kwargs)
        overrides: dict[str, Any] = {}
        if pretrained_cfg is not None and not isinstance(pretrained_cfg, str):
            overrides.update(pretrained_cfg if isinstance(pretrained_cfg, dict) else pretrained_cfg.to_dict())
        overrides.update(pretrained_cfg_overlay or {})
        if hasattr(model, "pretrained_cfg"):
            cfg = model.pretrained_cfg
            loaded = {"tag": cfg["name"].partition(".")[2]} if pretrained and "name" in cfg else {}
            model.pretrained_cfg = {**cfg, **loaded, **overrides, "architecture": f"{PREFIX}{name}"}
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
    todo = [n for n in list_models() if f"{PREFIX}{n}" not in timm_registry._model_entrypoints]
    cfgs = {k: {f: v for f, v in cfg.items() if f in fields} for k, cfg in _timm_cfgs(todo).items()}
    # timm reads the module's default_cfgs (one DefaultCfg per architecture, its tags) when registering
    defaults = {**getattr(module, "default_cfgs", {}), **timm_registry.generate_default_cfgs(cfgs)}
    module.default_cfgs = defaults  # type: ignore[attr-defined]
    for name in todo:
        fn = _entry(name)
        setattr(module, fn.__name__, fn)
        timm_registry.register_model(fn)
    return [f"{PREFIX}{n}" for n in list_models()]


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """An import hook that calls :func:`register_timm` once timm's own import has finished, then removes itself."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        """timm's spec from the other finders, its loader wrapped to register after executing it; None otherwise."""
        if fullname != "timm":
            return None
        others = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
        spec = next((s for s in (f.find_spec(fullname, path, target) for f in others) if s is not None), None)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            del loader.exec_module  # type: ignore[attr-defined]  (the loader's own method again)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                register_timm()
            except Exception as e:  # timm imports anyway; only odearch's models are missing from it
                warnings.warn(f"odearch could not register its models with timm: {e}", stacklevel=2)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def register_timm_on_import() -> None:
    """:func:`register_timm` now if timm is imported, else as soon as it is (``import odearch`` calls this)."""
    if "timm" in sys.modules:
        register_timm()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


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
