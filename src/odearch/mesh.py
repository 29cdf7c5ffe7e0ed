"""Depth as a mesh: :func:`refine` and :func:`coarsen` the steps of every Stage of a network.

A stage whose residual functions are f_n = h g(t_n, .) integrates an ODE over a depth interval; its steps after the
first block (the transition, or the starter of a multistep scheme) are the mesh. ``refine(model, r)`` replaces each
mesh step by r steps of size h / r, ``coarsen(model, r)`` merges each r consecutive mesh steps into one of size r h.
The first block, the shortcuts and everything outside the stages are copied as they are, so ``lm_resnet20``
(1 + 2 blocks a stage) refined by 2 has the shape, parameter count and state-dict keys of ``lm_resnet32`` (1 + 4),
by 4 those of ``lm_resnet56`` (1 + 8), and coarsening goes back.

- Refinement copies (Chang et al. 2018): f'_{r n + i} = f_n / r, i = 0 .. r - 1.
- Coarsening averages: f'_n = r * f[mean of the weights of f_{r n} .. f_{r n + r - 1}] (BatchNorm running
  statistics averaged too). Coarsening r identical copies of f / r gives f back bit for bit when r is a power of 2.
- The step size enters as a scale folded into the residual function's last affine layer (a convolution's or a
  linear layer's weight and bias, a BatchNorm's gamma and beta): the output of f is linear in that layer's
  parameters, so scaling them by s computes exactly s f(u), in training and in evaluation, and the module tree and
  state-dict keys stay those of the deeper (shallower) network. A residual function whose output is not such a
  layer's (found with torch.fx) is wrapped in :class:`ScaledResidual` (f -> s f) instead.
- LM stages, u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n): k_n is copied (refine) or averaged (coarsen). Its
  modified equation, (1 + k_n) u' + (1 - k_n) (dt / 2) u'' = g(u), keeps its leading coefficient (1 + k_n), the
  ODE the stage approximates; the dt / 2 term shrinks (grows) with the step.
- Runge-Kutta (euler, rk2, rk4, FractalNet's per-inner-stage functions), linear multistep (ab2), PolyNet
  (u + F(u) + F(F(u)) with F = h G: the truncated Neumann series of backward Euler at the new step) and RevNet
  (F and G of each step scaled alike) all take the same rule: the scheme is data and only the functions change.
- Stochastic depth: the survival probability of a step is copied (refine) or averaged (coarsen).

Copying f_n keeps the time t_n at which it samples the ODE: for an autonomous g the refined stage converges to the
ODE solution at the scheme's order as the factor grows; for g depending on t the refined stage keeps the first-order
error of the piecewise-constant interpolation in t of the original mesh, whatever the scheme's order.

Dense stages (``dense``: a weight k_{nj} for every pair of steps of the stage) are refused: their history weights
have no interpolation rule here.

:func:`remesh` also returns, for every parameter of the new model, the linear map from the old parameters it came
from (:class:`ParamMap`), so that an optimizer's momentum can follow the weights (``odearch train --refine-at``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .nn import Stage
from .nn.compat import use_torchvision_names
from .nn.stage import StepFns, lm_k_draw

__all__ = ["MESH_KINDS", "ParamMap", "ScaledResidual", "coarsen", "mesh_steps", "refine", "remesh"]

MESH_KINDS = ("refine", "coarsen")
_AFFINE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class ScaledResidual(nn.Module):
    """f'(u) = h f(u): a residual function at a new step size, where no last affine layer can absorb h."""

    def __init__(self, fn: nn.Module, h: float) -> None:
        super().__init__()
        self.fn = fn
        self.h = float(h)

    def forward(self, u: Tensor) -> Tensor:
        return self.fn(u) * self.h

    def extra_repr(self) -> str:
        return f"h={self.h:g}"


class _ScaledCallable:
    """f'(u) = h * mean_i f_i(u) for residual functions that are plain callables (no weights to average)."""

    def __init__(self, fns: Sequence[Callable[[Tensor], Tensor]], h: float) -> None:
        self.fns, self.h = tuple(fns), float(h)

    def __call__(self, u: Tensor) -> Tensor:
        out = self.fns[0](u)
        for f in self.fns[1:]:
            out = out + f(u)
        return out * (self.h / len(self.fns))


@dataclass
class ParamMap:
    """How one parameter of a remeshed model derives from parameters of the original: ``new = combine(olds)``,
    ``combine`` linear (copies, means, scales), so it applies to any per-parameter tensor of the same shape, such as
    SGD's momentum buffer."""

    sources: list[nn.Parameter]
    combine: Callable[[list[Tensor]], Tensor]


def mesh_steps(stage: Stage) -> int:
    """The number of mesh steps of ``stage``: its steps after the first block."""
    return len(stage) - 1


def refine(model: nn.Module, factor: int = 2) -> nn.Module:
    """A new model whose every Stage has ``factor`` times as many mesh steps, each of 1 / ``factor`` the size (see
    the module docstring); ``model`` is left as it was."""
    return remesh(model, factor, "refine")[0]


def coarsen(model: nn.Module, factor: int = 2) -> nn.Module:
    """A new model whose every Stage has 1 / ``factor`` as many mesh steps, each ``factor`` times the size (see the
    module docstring); every stage's mesh steps must divide by ``factor``. ``model`` is left as it was."""
    return remesh(model, factor, "coarsen")[0]


def remesh(model: nn.Module, factor: int, kind: str) -> tuple[nn.Module, dict[nn.Parameter, ParamMap]]:
    """(:func:`refine` or :func:`coarsen` of ``model``, the map of every new parameter from the old ones).

    Raises:
        ValueError: a bad factor or kind, a model without Stages, a dense stage, a stage with no mesh step to refine,
            or a mesh that ``factor`` does not divide.
    """
    if kind not in MESH_KINDS:
        raise ValueError(f"remesh: kind must be one of {MESH_KINDS}, got {kind!r}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"{kind}: factor must be an integer >= 1, got {factor!r}")
    stages = [(name, m) for name, m in model.named_modules() if isinstance(m, Stage)]
    if not stages:
        raise ValueError(
            f"{kind}: {type(model).__name__} has no odearch Stage (build it with odearch.create_model, "
            "or convert a ResNet with odearch.to_lm)"
        )
    for name, stage in stages:
        _check_stage(stage, name or "the model", factor, kind)
    maps: dict[nn.Parameter, ParamMap] = {}
    memo: dict[int, object] = {id(stage): _remesh_stage(stage, factor, kind, maps) for _, stage in stages}
    new = copy.deepcopy(model, memo)
    for p in model.parameters():  # the rest of the network: copied as it is
        if id(p) in memo and isinstance(memo[id(p)], nn.Parameter):
            maps.setdefault(memo[id(p)], ParamMap([p], _first))  # type: ignore[index]
    return new, maps


def _check_stage(stage: Stage, name: str, factor: int, kind: str) -> None:
    if stage.scheme.name == "dense" or hasattr(stage, "dense_k"):
        raise ValueError(
            f"{kind}: {name} is a dense stage (a weight k_nj for every pair of its steps), which has no "
            "mesh interpolation rule"
        )
    mesh = mesh_steps(stage)
    if kind == "refine" and mesh == 0:
        raise ValueError(f"refine: {name} has one step only (its first block stays one step): no mesh to refine")
    if kind == "coarsen" and mesh % factor:
        raise ValueError(f"coarsen: {name} has {mesh} mesh steps after its first block, not divisible by {factor}")


def _remesh_stage(stage: Stage, factor: int, kind: str, maps: dict[nn.Parameter, ParamMap]) -> Stage:
    """The stage with its mesh steps refined or coarsened; its first block and shortcuts copied."""
    fns = stage.step_fns
    mesh = list(range(1, len(fns)))
    if kind == "refine":
        groups, scale = [[n] for n in mesh for _ in range(factor)], 1.0 / factor
    else:
        groups, scale = [mesh[i : i + factor] for i in range(0, len(mesh), factor)], float(factor)
    # a function shared by several steps stays shared by all the steps made from it; the copies of one that is
    # not shared are independent residual functions (the deeper network's shape)
    shared = {id(fns[n]) for n in mesh if sum(fns[m] is fns[n] for m in mesh) > 1}
    blended: dict[tuple[int, ...], StepFns] = {}
    new_fns: list[StepFns] = [_copy(fns[0], maps)]
    for i, group in enumerate(groups):
        key = tuple(id(fns[n]) for n in group)
        if not all(k in shared for k in key):
            key = (*key, -1 - i)
        if key not in blended:
            blended[key] = _blend_step([fns[n] for n in group], scale, maps)
        new_fns.append(blended[key])
    survival = None
    if stage.survival is not None:
        survival = (stage.survival[0], *(sum(stage.survival[n] for n in g) / len(g) for g in groups))
    lm_k = getattr(stage, "lm_k", None)
    with lm_k_draw("paired"):  # the placeholder k draw leaves the global RNG alone
        new = Stage(
            stage.scheme,
            new_fns,
            shortcut=_copy(stage.shortcut, maps),
            history_shortcut=_copy(stage.history_shortcut, maps),
            post_act=_copy(stage.post_act, maps),
            channels=lm_k.shape[-1] if stage.runner.needs_channels and lm_k is not None else None,
            survival=survival,
            drop_mode=stage.drop_mode,
            noise_sigma=stage.noise_sigma,
        )
    new.memory = stage.memory
    if lm_k is not None:
        _remesh_k(stage, new, factor, kind, maps)
    if stage.__dict__.get("_odearch_torchvision_names"):
        use_torchvision_names(new)
    return new


def _remesh_k(old: Stage, new: Stage, factor: int, kind: str, maps: dict[nn.Parameter, ParamMap]) -> None:
    """k of the new mesh steps: each old k_n copied ``factor`` times, or the mean of each ``factor`` of them."""

    def combine(ts: list[Tensor]) -> Tensor:
        k = ts[0]
        if kind == "refine":
            return k.repeat_interleave(factor, dim=0)
        return k.reshape(k.shape[0] // factor, factor, *k.shape[1:]).mean(1)

    with torch.no_grad():
        new.lm_k.copy_(combine([old.lm_k.detach()]))
    if isinstance(old.lm_k, nn.Parameter):
        new.lm_k.requires_grad_(old.lm_k.requires_grad)
        maps[new.lm_k] = ParamMap([old.lm_k], combine)


def _first(ts: list[Tensor]) -> Tensor:
    return ts[0].clone()


def _copy(obj: object, maps: dict[nn.Parameter, ParamMap]) -> object:
    """A deep copy of a module, a tuple of modules or a callable (None stays None), each parameter mapped from the
    original's."""
    memo: dict[int, object] = {}
    new = copy.deepcopy(obj, memo)
    for part in obj if isinstance(obj, tuple) else (obj,):
        for p in part.parameters() if isinstance(part, nn.Module) else ():
            maps[memo[id(p)]] = ParamMap([p], _first)  # type: ignore[index]
    return new


def _blend_step(sources: list[StepFns], scale: float, maps: dict[nn.Parameter, ParamMap]) -> StepFns:
    """scale * (the residual function whose weights are the mean of ``sources``'), per function of a tuple step."""
    if isinstance(sources[0], tuple):
        return tuple(_blend([s[i] for s in sources], scale, maps) for i in range(len(sources[0])))  # type: ignore[index]
    return _blend(sources, scale, maps)  # type: ignore[arg-type]


def _blend(sources: list, scale: float, maps: dict[nn.Parameter, ParamMap]) -> object:
    if not isinstance(sources[0], nn.Module):  # a plain callable: the mean of the functions themselves
        return _ScaledCallable(sources if len({id(s) for s in sources}) > 1 else sources[:1], scale)
    inner = [s.fn if isinstance(s, ScaledResidual) else s for s in sources]
    h = scale * sum(s.h if isinstance(s, ScaledResidual) else 1.0 for s in sources) / len(sources)
    new = _average(inner, maps)
    if h == 1.0:
        return new
    last = _last_affine(new)
    if last is None:
        return ScaledResidual(new, h)
    with torch.no_grad():
        for p in (last.weight, last.bias):
            if p is not None:
                p.mul_(h)
                old = maps[p]
                maps[p] = ParamMap(old.sources, lambda ts, c=old.combine: c(ts) * h)
    return new


def _average(sources: list[nn.Module], maps: dict[nn.Parameter, ParamMap]) -> nn.Module:
    """A copy of ``sources[0]`` holding the mean of the sources' floating tensors (parameters and buffers)."""
    memo: dict[int, object] = {}
    new = copy.deepcopy(sources[0], memo)
    if len({id(s) for s in sources}) == 1:
        for p in sources[0].parameters():
            maps[memo[id(p)]] = ParamMap([p], _first)  # type: ignore[index]
        return new
    states = [dict(s.named_parameters()) | dict(s.named_buffers()) for s in sources]
    if any(st.keys() != states[0].keys() or any(st[k].shape != states[0][k].shape for k in st) for st in states):
        raise ValueError("coarsen: the residual functions of merged steps differ in their parameters or shapes")
    params = dict(sources[0].named_parameters())
    with torch.no_grad():
        for name, t in (dict(new.named_parameters()) | dict(new.named_buffers())).items():
            if t.is_floating_point():
                t.copy_(_mean([st[name].detach() for st in states]))
            if name in params:
                maps[t] = ParamMap([st[name] for st in states], _mean)  # type: ignore[index]
    return new


def _mean(ts: list[Tensor]) -> Tensor:
    out = ts[0].clone()
    for t in ts[1:]:
        out.add_(t)
    return out.div_(len(ts))


def _last_affine(fn: nn.Module) -> nn.Module | None:
    """The layer whose output is ``fn``'s output, if it is a convolution, a linear layer or an affine BatchNorm
    called once in ``fn`` (found by tracing with torch.fx); else None."""
    if isinstance(fn, _AFFINE):
        return fn if getattr(fn, "weight", None) is not None else None
    try:
        graph = torch.fx.symbolic_trace(fn).graph
    except Exception:  # not traceable (data-dependent control flow, custom autograd): wrap instead
        return None
    output = next(node for node in graph.nodes if node.op == "output")
    last = output.args[0]
    if not isinstance(last, torch.fx.Node) or last.op != "call_module" or len(last.users) != 1:
        return None
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == last.target]
    layer = fn.get_submodule(str(last.target))
    if len(calls) != 1 or not isinstance(layer, _AFFINE) or getattr(layer, "weight", None) is None:
        return None
    return layer
