"""Stage assembly shared by the model families: ``make_stages`` (timm's ``make_blocks``, torchvision's
``_make_layer``) builds every stage of a network from one small :class:`StageSpec` per stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..nn import Stage
from ..nn.stage import step_runner
from ..nn.stochastic import StochasticDepth
from ..schemes import Scheme, get_scheme

__all__ = ["StageSpec", "make_stages"]

BlockFn = Callable[[int, int, int], nn.Module]  # (in_planes, planes, stride) -> residual function
ShortcutFn = Callable[[int, int, int], nn.Module]  # (in_planes, out_planes, stride) -> projection


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``blocks`` residual functions of width ``planes`` mapping to ``out_planes`` channels.

    Args:
        planes: the width a block is built with (its bottleneck or grouped width).
        out_planes: channels of the stage's state (``planes`` times the block's expansion).
        blocks: residual functions (steps) of the stage.
        stride: stride of the first block.
        block: this stage's block, when it differs from the network's (e.g. widths bound with ``partial``).
        history: build the stage's LM history projection Q (``make_stages``' ``history_shortcut``).
    """

    planes: int
    out_planes: int
    blocks: int
    stride: int = 1
    block: BlockFn | None = None
    history: bool = False


@dataclass(frozen=True)
class _Layout:
    """How one step of a scheme is built: ``count`` blocks of 1 / ``split`` of the width, as a tuple if
    ``grouped``; ``per_channel``: LM coefficients per channel."""

    count: int = 1
    split: int = 1
    grouped: bool = False
    per_channel: bool = False


def _step_layout(scheme: Scheme, fractal: bool, planes: int, out_planes: int) -> _Layout:
    """The residual functions a step of ``scheme`` needs: the one place stage assembly reads a scheme's type.

    RevNet steps use a pair (F, G) of half-width blocks; with ``fractal=True`` a Runge-Kutta step gets one block per
    inner stage (the FractalNet reading) instead of sharing one; LM schemes may have one k per channel.
    """
    runner = step_runner(scheme)
    if fractal and (runner.split > 1 or not runner.accepts_tuple):
        raise ValueError(f"fractal=True needs a Runge-Kutta scheme, not {scheme.name!r}")
    if runner.split > 1:  # RevNet: one half-width function per part of the split state
        if out_planes % runner.split or planes % runner.split:
            raise ValueError(f"the {scheme.name} scheme splits the state in {runner.split}: widths must divide by it")
        return _Layout(count=runner.branches, split=runner.split, grouped=True)
    if fractal:
        return _Layout(count=runner.branches, grouped=True)
    return _Layout(per_channel=runner.needs_channels)


def make_stages(
    scheme: str | Scheme,
    specs: Sequence[StageSpec],
    in_planes: int,
    *,
    block: BlockFn | None = None,
    shortcut: ShortcutFn | None,
    history_shortcut: ShortcutFn | None = None,
    post_act: Callable[[], nn.Module] | None = None,
    fractal: bool = False,
    stochastic: StochasticDepth | None = None,
) -> list[Stage]:
    """The stages of a network, built in order (so parameter init and state_dict keys follow the specs).

    A stage's first block is a transition (plain step u_1 = P(u_0) + f_0(u_0), P = ``shortcut(in, out, stride)``)
    when the stride or the width changes; the LM history then restarts from P(u_0), or from Q(u_0) with
    ``history_shortcut`` on a spec with ``history=True``.

    Args:
        scheme: the integrator of every stage (a name or a scheme object).
        specs: one :class:`StageSpec` per stage.
        in_planes: channels entering the first stage (the stem's output).
        block: the residual function builder ``(in_planes, planes, stride)``, unless a spec has its own.
        shortcut: the transition projection builder; None: the family has none (a transition is refused).
        history_shortcut: the LM history projection builder Q, for the specs with ``history=True``.
        post_act: builder of the activation after each step (``nn.ReLU`` for post-activation families).
        fractal: a Runge-Kutta step with one block per inner stage.
        stochastic: stochastic depth and noise injection over the whole network (default off).
    """
    scheme = get_scheme(scheme)
    opts = (stochastic or StochasticDepth()).stage_kwargs([s.blocks for s in specs])
    stages = []
    for spec, kw in zip(specs, opts):
        fn = spec.block or block
        assert fn is not None, "make_stages needs a block, for the network or per spec"
        history = None
        if spec.history and history_shortcut is not None:  # built before the blocks: init order as before
            history = history_shortcut(in_planes, spec.out_planes, spec.stride)
        stages.append(_make_stage(scheme, spec, fn, in_planes, shortcut, history, post_act, fractal, kw))
        in_planes = spec.out_planes
    return stages


def _make_stage(
    scheme: Scheme,
    spec: StageSpec,
    block: BlockFn,
    in_planes: int,
    shortcut: ShortcutFn | None,
    history: nn.Module | None,
    post_act: Callable[[], nn.Module] | None,
    fractal: bool,
    stochastic: dict[str, object],
) -> Stage:
    """One stage of ``spec.blocks`` residual functions integrated by ``scheme`` (see :func:`make_stages`)."""
    planes, out_planes = spec.planes, spec.out_planes
    transition = spec.stride != 1 or in_planes != out_planes
    if transition and shortcut is None:
        raise ValueError("this family has no shortcut for a stride or width change")
    layout = _step_layout(scheme, fractal, planes, out_planes)

    def step(n: int) -> nn.Module | tuple[nn.Module, ...]:
        if n == 0 and transition:
            return block(in_planes, planes, spec.stride)
        fns = tuple(block(out_planes // layout.split, planes // layout.split, 1) for _ in range(layout.count))
        return fns if layout.grouped else fns[0]

    fns = [step(n) for n in range(spec.blocks)]
    return Stage(
        scheme,
        fns,
        shortcut=shortcut(in_planes, out_planes, spec.stride) if transition and shortcut is not None else None,
        history_shortcut=history,
        post_act=post_act() if post_act is not None else None,
        channels=out_planes if layout.per_channel else None,
        **stochastic,  # type: ignore[arg-type]
    )
