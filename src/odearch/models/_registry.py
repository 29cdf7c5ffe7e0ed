"""The model registry: ``register_model``, ``create_model``, ``list_models`` (timm's and torchvision's shape)."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..nn.cfg import per_channel
from ..nn.network import TimmInterface
from ..nn.stage import Stage
from ..nn.stochastic import STOCHASTIC_KEYWORDS, fold_stochastic
from ._pretrained import PretrainedError, load_pretrained, pretrained_entry

ModelFn = Callable[..., nn.Module]

_MODELS: dict[str, ModelFn] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Register a model constructor under its function name; a duplicate name raises ``ValueError``."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def register_table(build: Callable[..., nn.Module], module: str, rows: dict[str, tuple[dict[str, Any], str]]) -> None:
    """Register one entry per row ``name: (model_args, docstring)`` of a family's table: ``name(**kwargs)`` calls
    ``build(**model_args, **kwargs)``, the caller's kwargs winning (timm's rule), with ``p_last`` / ``drop_mode`` /
    ``noise_sigma`` folded into one ``stochastic=`` value. The options an entry takes are ``build``'s keywords
    (:func:`model_options`)."""
    options = frozenset(inspect.signature(build).parameters) | frozenset(STOCHASTIC_KEYWORDS)
    for name, (model_args, doc) in rows.items():

        def entry(_args: dict[str, Any] = model_args, **kwargs: Any) -> nn.Module:
            return build(**fold_stochastic({**_args, **kwargs}))

        entry.__name__ = entry.__qualname__ = name
        entry.__doc__ = doc
        entry.__module__ = module
        entry.options = options  # type: ignore[attr-defined]
        register_model(entry)


def model_options(name: str) -> frozenset[str] | None:
    """The keyword options that model ``name`` takes (None: not known, a constructor registered by hand)."""
    return getattr(model_entrypoint(name.partition(".")[0]), "options", None)


def models_taking(option: str) -> list[str]:
    """The registered models that take the keyword ``option``, sorted."""
    return [n for n in list_models() if option in (model_options(n) or ())]


def check_model_options(name: str, kwargs: dict[str, Any]) -> None:
    """Raise a one-line ``ValueError`` if model ``name`` does not take every key of ``kwargs``, naming for each such
    key the models that do (so ``--shake`` on ``lm_resnet20`` says which models have shake-shake blocks)."""
    options = model_options(name)
    bad = sorted(set(kwargs) - options) if options is not None else []
    if not bad:
        return
    hints = []
    for key in bad:
        takers = models_taking(key)
        if takers:
            hints.append(f"{key!r} is an option of {', '.join(takers)}")
        else:
            close = difflib.get_close_matches(key, sorted(options), n=1)  # type: ignore[arg-type]
            hints.append(f"no model takes {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"model {name!r} does not take {', '.join(map(repr, bad))}: {'; '.join(hints)}")


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


def create_model(
    name: str,
    pretrained: bool = False,
    num_classes: int | None = None,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    in_chans: int | None = None,
    drop_path_rate: float | None = None,
    drop_rate: float | None = None,
    global_pool: str | None = None,
    allow_scheme_change: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model (timm's ``create_model`` options). Keyword arguments that are None are dropped, so
    an unset CLI flag never overrides a model's default (timm's rule); the others win over the entry's own arguments.

    Args:
        name: a name from :func:`list_models`, e.g. ``"lm_resnet56"``, optionally with a weights tag after a dot
            (``"lm_resnet20.cifar10_s0"``, see ``odearch.list_pretrained()``).
        pretrained: load the weights shipped in the package (sha256-checked); a model without any raises
            ``ValueError`` listing those that have them.
        num_classes: size of the classifier (10 for CIFAR-10, 100 for CIFAR-100); None keeps the entry's default
            (10 for the CIFAR families, 1000 for the ImageNet ones), or the weights' with ``pretrained``; 0 removes it:
            the model returns its pooled features (B, num_features).
        features_only: return the stage outputs (a list) instead of logits, with ``model.feature_info``.
        out_indices: with ``features_only``, which stages (default all).
        in_chans: input channels (default 3); the first convolution is rebuilt for them, its weights adapted as
            timm does (summed over the RGB channels for 1, tiled and scaled by 3 / in_chans otherwise).
        drop_path_rate: timm's name for stochastic depth: the drop probability of the last block,
            p_last = 1 - drop_path_rate, decaying linearly from 0 at the first block (timm's rule, and the
            paper's). Giving ``p_last`` too is refused unless the two agree.
        drop_rate: timm's classifier dropout: the probability of dropping a pooled feature in training (default 0).
        global_pool: timm's pooling: ``"avg"`` (default) or ``""`` (none; needs ``num_classes=0``: the model then
            returns the last stage's map through the head's norm and activation, (B, num_features, H, W)).
        allow_scheme_change: with ``pretrained``, load the weights although ``scheme=`` makes a network that
            integrates with another scheme than the one they were trained in (the same tensors, another function:
            e.g. euler-trained preact_resnet20 weights under rk2 lose most of their accuracy); refused without it.
            ``model.pretrained_cfg["scheme_change"]`` then records both schemes.
        **kwargs: constructor options, e.g. ``scheme="rk2"``, ``p_last=0.8``, ``drop_mode="sample"``.
    """
    base_name = name.partition(".")[0]
    fn = model_entrypoint(base_name)
    if drop_path_rate is not None:
        kwargs["p_last"] = _p_last_of(drop_path_rate, kwargs.get("p_last"))
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects the stages of features_only=True: set features_only=True")
    check_model_options(base_name, {k: v for k, v in kwargs.items() if v is not None})
    if allow_scheme_change and not pretrained:
        raise ValueError("allow_scheme_change concerns loading shipped weights: give pretrained=True too")
    pooled = num_classes == 0  # build the entry's classifier (and weights), then remove it, as timm does
    if pretrained:
        model = _create_pretrained(fn, name, None if pooled else num_classes, kwargs, allow_scheme_change)
    else:
        kwargs = {k: v for k, v in {"num_classes": None if pooled else num_classes, **kwargs}.items() if v is not None}
        model = fn(**kwargs)
    _set_head_options(model, pooled, global_pool, drop_rate)
    return _adapt(model, name, in_chans, features_only, out_indices)


def _set_head_options(model: nn.Module, pooled: bool, global_pool: str | None, drop_rate: float | None) -> None:
    """timm's head options: no classifier (``pooled``), ``global_pool`` ("avg" / ""), ``drop_rate``."""
    if pooled or global_pool not in (None, "avg"):  # "" or a bad value with a classifier raises here
        model.reset_classifier(0 if pooled else model.num_classes, global_pool)  # type: ignore[operator]
    if drop_rate is not None:
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1) (dropout before the classifier), got {drop_rate}")
        model.drop_rate = float(drop_rate)


def _adapt(
    model: nn.Module, name: str, in_chans: int | None, features_only: bool, out_indices: Sequence[int] | None
) -> nn.Module:
    """``create_model``'s last steps: input channels, the data config's architecture, features-only mode."""
    if in_chans is not None and in_chans != 3:
        adapt_input_conv(model, in_chans)
    if isinstance(model, TimmInterface):  # set as keys over the derived config: no probe forward at construction
        keys = model.__dict__.setdefault("_cfg_overrides", {})
        n = model.in_chans
        keys |= {k: per_channel(keys[k], n) for k in ("mean", "std") if k in keys and len(keys[k]) != n}
        keys["architecture"] = name.partition(".")[0]  # the weights' stats (kept in keys) fit the channels too
    elif hasattr(model, "pretrained_cfg"):
        cfg = model.pretrained_cfg
        n = cfg["input_size"][0] if "input_size" in cfg else None
        stats = {k: per_channel(cfg[k], n) for k in ("mean", "std") if n and k in cfg and len(cfg[k]) != n}
        model.pretrained_cfg = {**cfg, **stats, "architecture": name.partition(".")[0]}
    if features_only:
        if not hasattr(model, "set_features_only"):
            raise ValueError(f"{name!r} has no stages to return as features")
        model.set_features_only(out_indices)  # type: ignore[operator]
    return model


def _p_last_of(drop_path_rate: float, p_last: float | None) -> float:
    """timm's ``drop_path_rate`` as p_last = 1 - drop_path_rate; a ``p_last`` given too must agree."""
    if not 0.0 <= float(drop_path_rate) < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1) (p_last = 1 - drop_path_rate), got {drop_path_rate}")
    implied = 1.0 - float(drop_path_rate)
    if p_last is not None and not math.isclose(float(p_last), implied):
        raise ValueError(
            f"drop_path_rate={drop_path_rate} means p_last={implied:g}, but p_last={p_last} was given: give one of them"
        )
    return implied


def _trained_classifier(entry: dict[str, Any]) -> str | None:
    """Name of the classifier (the last ``nn.Linear``) of the network a registry entry's weights were trained in,
    found on a meta-device copy of it; None if it has none."""
    kwargs = {**entry.get("model_kwargs", {}), **({"scheme": entry["scheme"]} if entry.get("scheme") else {})}
    with torch.device("meta"):
        trained = model_entrypoint(entry["model"])(num_classes=entry["num_classes"], **kwargs)
    names = [n for n, m in trained.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _create_pretrained(
    fn: ModelFn, name: str, num_classes: int | None, kwargs: dict[str, Any], allow_scheme_change: bool = False
) -> nn.Module:
    """The model of the shipped weights ``name`` (their scheme and options unless ``kwargs`` say otherwise), loaded;
    a ``num_classes`` other than the weights' keeps a fresh classifier. A ``scheme`` other than the one the weights
    were trained in is refused unless ``allow_scheme_change``."""
    full, entry = pretrained_entry(name)  # before building: a name without weights fails fast
    base = {"scheme": entry.get("scheme"), **entry.get("model_kwargs", {})}
    classes = entry["num_classes"] if num_classes is None else num_classes
    model = fn(**{k: v for k, v in {**base, "num_classes": classes, **kwargs}.items() if v is not None})
    change = None
    if kwargs.get("scheme") is not None:
        trained, now = _trained_schemes(entry), _schemes(model)
        if trained != now:
            if not allow_scheme_change:
                raise PretrainedError(
                    f"the weights {full!r} were trained with scheme {', '.join(trained)}; scheme="
                    f"{kwargs['scheme']!r} makes another network of them ({', '.join(now)}), which "
                    "they were not trained for: pass allow_scheme_change=True to load them anyway"
                )
            change = {"trained": ",".join(trained), "loaded_as": ",".join(now)}
    model = load_pretrained(model, name, num_classes, _trained_classifier(entry))
    if change is not None:
        model.pretrained_cfg = {**model.pretrained_cfg, "scheme_change": change}  # type: ignore[operator]
    return model


def _schemes(model: nn.Module) -> list[str]:
    """The names of the schemes the stages of ``model`` integrate with, sorted."""
    return sorted({m.scheme.name for m in model.modules() if isinstance(m, Stage)})


def _trained_schemes(entry: dict[str, Any]) -> list[str]:
    """The schemes of the network shipped weights were trained in (built from their entry on the meta device)."""
    kwargs = {**entry.get("model_kwargs", {}), **({"scheme": entry["scheme"]} if entry.get("scheme") else {})}
    with torch.device("meta"):
        return _schemes(model_entrypoint(entry["model"])(num_classes=entry["num_classes"], **kwargs))


def adapt_input_conv(model: nn.Module, in_chans: int) -> None:
    """Rebuild the first convolution of ``model`` for ``in_chans`` input channels (timm's ``adapt_input_conv``):
    w' = sum_c w_c for one channel; for more, the RGB filters tiled over the channels and scaled by 3 / in_chans,
    so that an input with every channel equal to a grey image gives the same response as before."""
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.groups != 1:
        raise ValueError("the first convolution is grouped: in_chans cannot be adapted")
    w = conv.weight.detach()
    if in_chans == 1:
        new_w = w.sum(dim=1, keepdim=True)
    else:
        reps = -(-in_chans // w.shape[1])
        new_w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (w.shape[1] / in_chans)
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        1,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(new_w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)  # type: ignore[union-attr]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
