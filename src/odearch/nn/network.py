"""A residual network as stem -> stages (integrators) -> head, with timm's model interface (:class:`TimmInterface`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cfg import FeatureInfo, data_cfg
from .memory import set_memory
from .stage import Stage


class TimmInterface:
    """timm's model interface, shared by :class:`ResidualNetwork` and the ImageNet ResNet.

    ``get_classifier()`` / ``reset_classifier(n, global_pool)`` (n = 0: pooled features, the classifier is an
    ``nn.Identity``; ``global_pool=""``: no pooling either, the head returns (B, C, H, W)), ``num_features`` /
    ``head_hidden_size``, ``drop_rate`` (dropout before the classifier), ``forward_head(x, pre_logits)``,
    ``feature_info`` (one entry per stage output), ``forward_intermediates`` / ``prune_intermediate_layers``,
    ``set_grad_checkpointing`` (the ``"recompute"`` memory mode), ``group_matcher`` (stem / stages / head, for
    timm's layer decay), ``pretrained_cfg`` / ``default_cfg`` (input size, mean, std, pool size, ... for
    ``timm.data.resolve_data_config``) and features-only mode (:meth:`set_features_only`: the forward returns the
    stage outputs). The forward is x -> stem -> stages -> head, written once here. A class sets ``data_kind``
    (``"cifar"`` or ``"imagenet"``) and implements ``_stem``, ``stages``, ``_stage_names``, ``forward_head``,
    ``_remove_head``, ``_prune_stages``, ``_group_patterns`` and the classifier slot (``_get_classifier_slot`` /
    ``_set_classifier_slot``). TorchScript scripting is refused (trace, export or compile instead).
    """

    data_kind = "cifar"
    num_features: int
    _feature_indices: tuple[int, ...] | None = None
    drop_rate: float = 0.0  # dropout probability on the pooled features, before the classifier (timm's drop_rate)
    global_pool: str = "avg"  # "avg" (global average pooling) or "" (none: the head keeps the spatial map)

    # ---------------------------------------------------------------------------------------------- classifier
    def get_classifier(self) -> nn.Module:
        """The final linear layer (an ``nn.Identity`` after ``reset_classifier(0)``)."""
        return self._get_classifier_slot()  # type: ignore[attr-defined]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised ``nn.Linear(num_features, num_classes)``; ``num_classes=0`` removes it, so
        the model returns its pooled features (B, num_features). ``global_pool``: ``"avg"`` or ``""`` (no
        pooling, only with ``num_classes=0``: the head returns (B, num_features, H, W)); None keeps it."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        pool = self.global_pool if global_pool is None else global_pool
        if pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {pool!r}")
        if pool == "" and num_classes > 0:
            raise ValueError(
                "global_pool='' keeps the spatial map, which a linear classifier cannot take: "
                "use reset_classifier(0, '')"
            )
        self.global_pool = pool
        fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        ref = next(self.parameters())  # type: ignore[attr-defined]
        self._set_classifier_slot(fc.to(device=ref.device, dtype=ref.dtype))  # type: ignore[attr-defined]

    @property
    def head_hidden_size(self) -> int:
        """Width of the features the classifier reads (``forward_head(x, pre_logits=True)``): ``num_features``,
        as no hidden layer sits between pooling and classifier."""
        return self.num_features

    def _head_dropout(self, x: Tensor) -> Tensor:
        """Dropout with ``drop_rate`` on the features before the classifier (training only)."""
        return F.dropout(x, p=float(self.drop_rate), training=self.training) if self.drop_rate else x  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier; 0 when it is removed (pooled features)."""
        fc = self.get_classifier()
        return fc.out_features if isinstance(fc, nn.Linear) else 0

    def _check_classifier(self) -> None:
        """Record ``num_features``; a ``Linear(C, 0)`` classifier (``num_classes=0``) becomes ``nn.Identity``."""
        fc = self._get_classifier_slot()  # type: ignore[attr-defined]
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"the classifier must be an nn.Linear, got {type(fc).__name__}")
        self.num_features = fc.in_features
        if fc.out_features == 0:
            self._set_classifier_slot(nn.Identity())  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------------------------------ features
    def stage_outputs(self, x: Tensor, last_only: bool = False) -> list[Tensor]:
        """The state after each stage, [u^(1), ..., u^(S)], each (B, C_s, H_s, W_s); with ``last_only`` just
        [u^(S)] (the intermediate states are not kept)."""
        u, outs = self._stem(x), []  # type: ignore[attr-defined]
        for stage in self.stages:  # type: ignore[attr-defined]
            u = stage(u)
            if not last_only:
                outs.append(u)
        return outs if not last_only else [u]

    def forward_features(self, x: Tensor) -> Tensor:
        """The state after the last stage, (B, C, H, W)."""
        return self.stage_outputs(x, last_only=True)[0]

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits (B, num_classes) for images x (B, C, H, W); pooled features (B, num_features) with
        ``num_classes=0``; in features-only mode, the list of the selected stage outputs."""
        if self._feature_indices is not None:
            outs = self.stage_outputs(x)
            return [outs[i] for i in self._feature_indices]
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]

    @property
    def in_chans(self) -> int:
        """Input channels: those of the first convolution."""
        return next(m for m in self.modules() if isinstance(m, nn.Conv2d)).in_channels  # type: ignore[attr-defined]

    @property
    def feature_info(self) -> FeatureInfo:
        """One dict per stage output (``num_chs``, ``reduction``, ``module``), found once by a forward pass of one
        blank image in evaluation mode (no running statistic or RNG state changes); in features-only mode, those
        of the returned features."""
        info = self._all_feature_info()
        if self._feature_indices is not None:
            return FeatureInfo(info[i] for i in self._feature_indices)
        return FeatureInfo(info)

    def _all_feature_info(self) -> FeatureInfo:
        """The feature info of every stage of the model as built (cached; pruning and features-only keep it)."""
        info = self.__dict__.get("_feature_info_all")
        if info is None:
            info = self.__dict__["_feature_info_all"] = self._probe_features()
        return info

    def _probe_features(self) -> FeatureInfo:
        ref = next(self.parameters())  # type: ignore[attr-defined]
        size = min(data_cfg(self.data_kind, 0)["input_size"][-1], 64)
        x = torch.zeros(1, self.in_chans, size, size, device=ref.device, dtype=ref.dtype)
        modes = [(m, m.training) for m in self.modules()]  # type: ignore[attr-defined]
        self.eval()  # type: ignore[attr-defined]
        try:
            with torch.no_grad():
                outs = self.stage_outputs(x)
        finally:
            for m, mode in modes:
                m.training = mode
        return FeatureInfo(
            {"num_chs": o.shape[1], "reduction": size // o.shape[-1], "module": name}
            for o, name in zip(outs, self._stage_names())  # type: ignore[attr-defined]
        )

    def set_features_only(self, out_indices: Sequence[int] | None = None) -> None:
        """Turn the model into a feature extractor (timm's ``features_only=True``): the forward returns the list of
        stage outputs at ``out_indices`` (default: all stages; negative indices count from the end); the
        classifier and head are removed (their parameters leave the state dict)."""
        n = len(self.stages)  # type: ignore[attr-defined]
        idx = tuple(range(n)) if out_indices is None else tuple(int(i) % n for i in out_indices)
        if out_indices is not None and any(not -n <= int(i) < n for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} out of range for {n} stages")
        self.feature_info  # noqa: B018  (probe with the head still in place)
        self._remove_head()  # type: ignore[attr-defined]
        self._feature_indices = idx

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's feature API: (the last stage's state, [the states of the stages at ``indices``]).

        Args:
            x: images (B, C, H, W).
            indices: stages to return, one per ``feature_info`` entry: None all, an int n the last n, or a
                sequence of indices (negative ones count from the end).
            norm: accepted for timm's signature; a stage state has no separate final norm (a pre-activation
                network's BN-ReLU belongs to its head), so nothing is applied.
            stop_early: stop after the last stage asked for (the first returned value is then its state).
            output_fmt: ``"NCHW"`` only.
            intermediates_only: return just the list.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = self._take_indices(indices)
        stages = list(self.stages)  # type: ignore[attr-defined]
        u, intermediates = self._stem(x), []  # type: ignore[attr-defined]
        for i, stage in enumerate(stages[: last + 1] if stop_early else stages):
            u = stage(u)
            if i in take:
                intermediates.append(u)
        return intermediates if intermediates_only else (u, intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (as in :meth:`forward_intermediates`) and, with
        ``prune_head``, the head (the forward then returns the last kept stage's state); returns the indices.
        ``prune_norm`` is accepted for timm's signature (no final norm outside the head)."""
        take, last = self._take_indices(indices)
        self._prune_stages(last + 1)  # type: ignore[attr-defined]
        if prune_head:
            self._remove_head()  # type: ignore[attr-defined]
            self.global_pool = ""
        return take

    def _take_indices(self, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
        """(sorted stage indices, the largest) of timm's ``indices`` argument; out-of-range ones raise."""
        n = len(self.stages)  # type: ignore[attr-defined]
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices} asks for the last {indices} of {n} stages")
            take = list(range(n - indices, n))
        else:
            if any(not -n <= int(i) < n for i in indices):
                raise ValueError(f"indices {tuple(indices)} out of range for {n} stages")
            take = sorted({int(i) % n for i in indices})
        return take, max(take)

    # ---------------------------------------------------------------------------------------------- training
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's gradient checkpointing: every stage in the ``"recompute"`` memory mode (:mod:`odearch.nn.memory`:
        same gradients, activations recomputed in the backward pass); ``False`` restores the modes it replaced."""
        stages = [m for m in self.modules() if isinstance(m, Stage)]  # type: ignore[attr-defined]
        before = self.__dict__.pop("_memory_before_checkpointing", None)
        if enable:
            self.__dict__["_memory_before_checkpointing"] = before or [s.memory for s in stages]
            set_memory(self, "recompute")  # type: ignore[arg-type]
        elif before is not None:
            for stage, mode in zip(stages, before):
                stage.memory = mode

    @property
    def grad_checkpointing(self) -> bool:
        """Whether every stage recomputes its activations in the backward pass."""
        stages = [m for m in self.modules() if isinstance(m, Stage)]  # type: ignore[attr-defined]
        return bool(stages) and all(s.memory == "recompute" for s in stages)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups (``timm.optim.create_optimizer_v2(..., layer_decay=...)``): ``stem``, then one
        group per stage (``coarse``) or per block with the stage's own parameters (shortcut, k_n) after its blocks;
        what matches neither (the head) comes last."""
        stem, stage = self._group_patterns()  # type: ignore[attr-defined]
        if coarse:
            return {"stem": stem, "blocks": rf"{stage}\."}
        return {"stem": stem, "blocks": [(rf"{stage}\.blocks\.(\d+)\.", None), (rf"{stage}\.", (99999,))]}

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` calls this first: refuse with one sentence (torch.jit is deprecated)."""
        raise RuntimeError(
            f"{type(self).__name__} cannot be scripted with torch.jit.script (the stages are dynamic Python and "
            "TorchScript is deprecated): use torch.jit.trace, torch.export.export or torch.compile instead"
        )

    # ---------------------------------------------------------------------------------------------- data config
    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's data configuration: input_size, mean, std, interpolation, crop_pct, num_classes, ... (derived
        from the model as it is now, e.g. after ``reset_classifier``, plus the keys set through this property)."""
        return {**self._derived_cfg(), **self.__dict__.get("_cfg_overrides", {})}

    @pretrained_cfg.setter
    def pretrained_cfg(self, cfg: dict[str, Any]) -> None:
        derived = self._derived_cfg()  # keep only what differs, so derived keys follow later model changes
        self.__dict__["_cfg_overrides"] = {k: v for k, v in cfg.items() if k not in derived or derived[k] != v}

    def _derived_cfg(self) -> dict[str, Any]:
        names = [n for n, m in self.named_modules() if isinstance(m, nn.Conv2d)]  # type: ignore[attr-defined]
        cfg = data_cfg(
            self.data_kind, self.num_classes, self.in_chans, first_conv=names[0], classifier=self._classifier_name()
        )
        side = math.ceil(cfg["input_size"][-1] / self._all_feature_info()[-1]["reduction"])
        return {**cfg, "pool_size": (side, side)}  # the last stage's map at input_size

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of :attr:`pretrained_cfg` (timm's older name)."""
        return self.pretrained_cfg

    def _classifier_name(self) -> str:
        fc = self._get_classifier_slot()  # type: ignore[attr-defined]
        return next((n for n, m in self.named_modules() if m is fc), "")  # type: ignore[attr-defined]


class ResidualNetwork(TimmInterface, nn.Module):
    """x -> stem -> Stage_1 -> ... -> Stage_S -> head -> logits.

    Each stage restarts the LM history at its transition from its own input u_0 (P(u_0), or Q(u_0) with a
    ``history_shortcut``), so no state passes between stages but u.

    Args:
        stem: the layers before the first stage.
        stages: the integrators, in order.
        head: the layers after the last stage, an ``nn.Sequential`` ending with the classifier ``nn.Linear``
            (``Linear(C, 0)``: no classifier, the forward returns pooled features).
        data_kind: ``"cifar"`` or ``"imagenet"``: the input the network is made for (its ``pretrained_cfg``).
    """

    def __init__(self, stem: nn.Module, stages: Sequence[Stage], head: nn.Sequential, data_kind: str = "cifar") -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.data_kind = data_kind
        self._check_classifier()

    def _stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def _stage_names(self) -> list[str]:
        return [f"stages.{i}" for i in range(len(self.stages))]

    def _get_classifier_slot(self) -> nn.Module:
        return self.head[-1] if isinstance(self.head, nn.Sequential) and len(self.head) else self.head

    def _set_classifier_slot(self, fc: nn.Module) -> None:
        self.head[len(self.head) - 1] = fc

    def _remove_head(self) -> None:
        self.head = nn.Sequential(nn.Identity())

    def _prune_stages(self, n: int) -> None:
        self.stages = self.stages[:n]

    def _group_patterns(self) -> tuple[str, str]:
        return r"^stem\.", r"^stages\.(\d+)"

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Head on the last stage's state: logits, or with ``pre_logits`` the pooled features (B, num_features)
        (with ``global_pool=""`` the head's layers but pooling, (B, num_features, H, W))."""
        for layer in list(self.head)[:-1]:  # the installed modules themselves, so fx traces their names
            if self.global_pool or not isinstance(layer, (nn.AdaptiveAvgPool2d, nn.Flatten)):
                x = layer(x)
        x = self._head_dropout(x)
        return x if pre_logits else self.head[-1](x)


def init_weights(model: nn.Module) -> None:
    """He (fan-out) normal init for convolutions, BN weight 1 and bias 0, as the paper's code does.

    Leaves linear layers at PyTorch's default and the LM coefficients at their U[-0.1, 0] draw.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def out_channels(fn: nn.Module | Sequence[nn.Module]) -> int | None:
    """Output channels of a residual function (or of a tuple of them, e.g. a RevNet pair): those of its last
    convolution; None if it has none."""
    modules = fn.modules() if isinstance(fn, nn.Module) else nn.ModuleList(list(fn)).modules()
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels if convs else None
