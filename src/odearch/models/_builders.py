"""Shared helpers for the model families: stage assembly and table-driven registration."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

from ..nn import Stage
from ..nn.drop import check_drop_mode, check_survival, linear_survival
from ..schemes import ButcherTableau, LMScheme, RevScheme, Scheme, get_scheme
from ._registry import register_model

BlockFn = Callable[[int, int, int], nn.Module]  # (in_planes, planes, stride) -> residual function


def make_stage(
    scheme: str | Scheme,
    block: BlockFn,
    in_planes: int,
    planes: int,
    out_planes: int,
    num_blocks: int,
    stride: int,
    *,
    shortcut: Callable[[int, int, int], nn.Module] | None,
    history_shortcut: nn.Module | None = None,
    post_act: nn.Module | None = None,
    fractal: bool = False,
    survival: Sequence[float] | None = None,
    drop_mode: str = "batch",
    noise_sigma: float | None = None,
) -> Stage:
    """One stage of ``num_blocks`` residual functions integrated by ``scheme``.

    The first block is a transition (plain step u_1 = P(u_0) + f_0(u_0), P = ``shortcut(in, out, stride)``) when
    the stride or the width changes. RevNet steps use a pair (F, G) of half-width blocks; with ``fractal=True`` a
    Runge-Kutta step gets one block per inner stage (the FractalNet reading) instead of sharing one.
    ``survival``, ``drop_mode``, ``noise_sigma``: the Stage's stochastic-training options (one survival probability
    per block; see :func:`stochastic_options` for a whole network's).
    """
    scheme = get_scheme(scheme)
    transition = stride != 1 or in_planes != out_planes
    if transition and shortcut is None:
        raise ValueError("this family has no shortcut for a stride or width change")
    if fractal and not isinstance(scheme, ButcherTableau):
        raise ValueError(f"fractal=True needs a Runge-Kutta scheme, not {scheme.name!r}")
    if isinstance(scheme, RevScheme) and (out_planes % 2 or planes % 2):
        raise ValueError("the rev scheme splits the state in two: widths must be even")

    def step(first: bool) -> nn.Module | tuple[nn.Module, ...]:
        if first and transition:
            return block(in_planes, planes, stride)
        if isinstance(scheme, RevScheme):
            return (block(out_planes // 2, planes // 2, 1), block(out_planes // 2, planes // 2, 1))
        if fractal:
            assert isinstance(scheme, ButcherTableau)
            return tuple(block(out_planes, planes, 1) for _ in range(scheme.stages))
        return block(out_planes, planes, 1)

    fns = [step(n == 0) for n in range(num_blocks)]
    return Stage(
        scheme,
        fns,
        shortcut=shortcut(in_planes, out_planes, stride) if transition and shortcut is not None else None,
        history_shortcut=history_shortcut,
        post_act=post_act,
        channels=out_planes if isinstance(scheme, LMScheme) and scheme.per_channel else None,
        survival=survival,
        drop_mode=drop_mode,
        noise_sigma=noise_sigma,
    )


def stochastic_options(
    layers: Sequence[int], p_last: float | None = None, drop_mode: str = "batch", noise_sigma: float | None = None
) -> list[dict[str, object]]:
    """The stochastic-training keyword arguments of each stage's :func:`make_stage`, for a whole network.

    Stochastic depth decays linearly over all blocks of the network (:func:`odearch.nn.drop.linear_survival`,
    first block 1, last ``p_last``), cut into one slice per stage. Validates the options: a model constructor
    calls this first, so bad values fail there with a ``ValueError``.

    Args:
        layers: residual blocks (steps) per stage.
        p_last: survival probability of the network's last block, 0 < p_L <= 1; None or 1 turns it off.
        drop_mode: ``"batch"`` (one draw per mini-batch; dropped blocks are skipped) or ``"sample"``.
        noise_sigma: standard deviation of the noise injected after every block in training; None or 0: off.
    """
    check_drop_mode(drop_mode)
    if noise_sigma is not None and not (math.isfinite(noise_sigma) and noise_sigma >= 0.0):
        raise ValueError(f"noise_sigma must be a finite standard deviation >= 0, got {noise_sigma}")
    if p_last is not None:
        check_survival(p_last, "p_last")
    probs = None if p_last is None or p_last == 1.0 else linear_survival(sum(layers), p_last)
    out, start = [], 0
    for n in layers:
        survival = None if probs is None else probs[start : start + n]
        out.append({"survival": survival, "drop_mode": drop_mode, "noise_sigma": noise_sigma})
        start += n
    return out


def register_table(
    rows: list[tuple[str, dict[str, object], str]], build: Callable[..., nn.Module], module: str
) -> None:
    """Register one constructor per (name, model_args, docstring) row; caller kwargs win over model_args."""
    for name, model_args, doc in rows:

        def entry(num_classes: int = 10, _args: dict[str, object] = model_args, **kwargs: object) -> nn.Module:
            return build(num_classes=num_classes, **{**_args, **kwargs})

        entry.__name__ = entry.__qualname__ = name
        entry.__doc__ = doc
        entry.__module__ = module
        register_model(entry)
