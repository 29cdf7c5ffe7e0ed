"""Shared helpers for the model families: stage assembly and table-driven registration."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..nn import Stage
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
) -> Stage:
    """One stage of ``num_blocks`` residual functions integrated by ``scheme``.

    The first block is a transition (plain step u_1 = P(u_0) + f_0(u_0), P = ``shortcut(in, out, stride)``) when
    the stride or the width changes. RevNet steps use a pair (F, G) of half-width blocks; with ``fractal=True`` a
    Runge-Kutta step gets one block per inner stage (the FractalNet reading) instead of sharing one.
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
    )


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
