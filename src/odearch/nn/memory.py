"""Activation memory of a Stage's backward pass: store (autograd), recompute (checkpoint), reversible (RevNet).

Each :class:`~odearch.nn.Stage` has a ``memory`` mode (set with :func:`set_memory`; ``"store"`` by default):

- ``"store"``: ordinary autograd; every intermediate tensor of every residual function is kept for the backward pass,
  so activation memory grows linearly with depth.
- ``"recompute"`` (any scheme): every evaluation of a residual function f_n runs under ``torch.utils.checkpoint``
  (non-reentrant). Only the states the scheme combines (u_n, and what the scheme itself keeps: u_{n-1} for LM, the
  inner-stage inputs u + sum_j a_ij k_j of a Runge-Kutta step, f_{n-1} for Adams-Bashforth) stay alive; f_n's internals
  (BatchNorm and ReLU outputs, convolution inputs) are recomputed in the backward pass. The updates are unchanged.
- ``"reversible"`` (``rev`` stages): RevNet's backward pass (Gomez et al. 2017, https://arxiv.org/abs/1707.04585).
  The forward pass keeps only the stage's output u_N = (X_N, Y_N); the backward pass walks the steps in reverse and
  rebuilds each step's input by the exact inverse,

      Y_n = Y_{n+1} - (eta'_n / p_n) G(X_{n+1}),   X_n = X_{n+1} - (eta_n / p_n) F(Y_n),

  recomputing G(X_{n+1}) and F(Y_n) under autograd to back-propagate through them:

      dX_{n+1} <- dX_{n+1} + (eta'_n / p_n) J_G(X_{n+1})^T dY_{n+1},  dtheta_G += (eta'_n / p_n) (dG/dtheta)^T dY_{n+1},
      dY_n = dY_{n+1} + (eta_n / p_n) J_F(Y_n)^T dX_{n+1},   dX_n = dX_{n+1},
      dtheta_F += (eta_n / p_n) (dF/dtheta)^T dX_{n+1}.

  With noise injection, u_{n+1} = step(u_n) + sigma sqrt(dt) xi_n is undone by subtracting the same xi_n. Activation
  memory is that of one residual function plus the stage outputs: independent of the number of steps. A transition
  step (u_1 = P(u_0) + f_0(u_0), not invertible) keeps its activations as in ``"store"``; a post-activation stage is
  not invertible and is refused.

Replay rules, shared by both memory-saving modes:

- Stochastic depth: the gates eta_n / p_n are drawn once, by ``Stage._draw_gates`` in the forward pass, and the
  backward pass reuses the drawn values (never draws again).
- Randomness inside a residual function (shake-shake's alpha and beta, dropout): the CPU generator's state, and the
  state's device's generator, are recorded before each evaluation and restored for its recomputation, so it draws the
  same numbers; the generators are put back afterwards, so training draws the same stream as with ``"store"``.
- BatchNorm running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) are updated once, by the
  forward pass: a recomputation saves and restores them.
- Autocast: the recomputation runs under the forward pass's autocast state.

Reconstruction is exact in real arithmetic and accurate to rounding in floating point (1e-13 relative in float64);
gradients then equal ordinary backpropagation to that accuracy (``tests/test_memory.py``). A non-finite input or
output of a reversible stage cannot be reconstructed (inf - inf is nan): the forward pass raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .stage import MEMORY_FORWARDS, Stage, StepFns, StepGate, axpy, is_dropped

__all__ = ["MEMORY_MODES", "default_memory", "get_memory", "set_memory"]

MEMORY_MODES = ("store", "recompute", "reversible")


# ------------------------------------------------------------------------------------------------------ public API
def set_memory(model: nn.Module, mode: str) -> nn.Module:
    """Set the activation-memory mode of every :class:`Stage` in ``model`` (or of ``model`` itself); returns ``model``.

    Args:
        model: a network (e.g. from :func:`odearch.create_model`) or a single Stage.
        mode: ``"store"``, ``"recompute"`` or ``"reversible"`` (module docstring). ``"reversible"`` needs every stage
            to use the ``rev`` scheme, without post-activation, with ``nn.Module`` residual functions.
    """
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {mode!r}")
    stages = [m for m in model.modules() if isinstance(m, Stage)]
    if mode == "reversible":
        if not stages:
            raise ValueError("memory='reversible': the model has no Stage")
        for stage in stages:
            _check_reversible(stage)
    for stage in stages:
        stage.memory = mode
    return model


def get_memory(model: nn.Module) -> str:
    """The memory mode of ``model``'s stages (``"mixed"`` if they differ, ``"store"`` without stages)."""
    modes = {m.memory for m in model.modules() if isinstance(m, Stage)}
    return modes.pop() if len(modes) == 1 else ("mixed" if modes else "store")


def default_memory(model: nn.Module) -> str:
    """``"reversible"`` when every Stage of ``model`` can run reversibly (rev scheme, no post-activation, module
    residual functions), else ``"store"``: the default of the models that build themselves with ``memory=None``."""
    stages = [m for m in model.modules() if isinstance(m, Stage)]
    try:
        for stage in stages:
            _check_reversible(stage)
    except ValueError:
        return "store"
    return "reversible" if stages else "store"


def _check_reversible(stage: Stage) -> None:
    if not stage.runner.invertible:
        raise ValueError(
            f"memory='reversible' needs the rev scheme, a stage uses {stage.scheme.name!r}: use memory='recompute'"
        )
    if stage.post_act is not None:
        raise ValueError("memory='reversible': a post-activation stage is not invertible; use memory='recompute'")
    if not stage.holds_modules:
        raise ValueError("memory='reversible' needs nn.Module residual functions (their parameters get gradients)")


# ------------------------------------------------------------------------------------------------- shared helpers
def _modules(fn: StepFns | nn.Module | None) -> list[nn.Module]:
    if isinstance(fn, nn.Module):
        return [fn]
    if isinstance(fn, tuple):
        return [f for f in fn if isinstance(f, nn.Module)]
    return []


@contextmanager
def _frozen_norm_stats(fn: StepFns | nn.Module | None) -> Iterator[None]:
    """Run a recomputation without touching running statistics: it updates throw-away copies of them.

    The buffers are swapped for clones and put back afterwards, so the real ones are neither changed nor bumped in
    version (autograd may hold them).
    """
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = []
    for root in _modules(fn):
        for m in root.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.running_mean is not None:
                saved.append((m, [getattr(m, k) for k in names]))
    for m, bufs in saved:
        for k, b in zip(names, bufs):
            setattr(m, k, b.clone())
    try:
        yield
    finally:
        for m, bufs in saved:
            for k, b in zip(names, bufs):
                setattr(m, k, b)


RngState = tuple[Tensor, Tensor | None]


def _rng_get(device: torch.device) -> RngState:
    """The CPU generator's state and that of ``device``'s generator (None for the CPU)."""
    dev = None if device.type == "cpu" else getattr(torch, device.type).get_rng_state(device)
    return torch.get_rng_state(), dev


def _rng_set(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        getattr(torch, device.type).set_rng_state(state[1], device)


# ------------------------------------------------------------------------------------------------------ recompute
class _Recompute:
    """f(u) under non-reentrant ``torch.utils.checkpoint``; the recomputation leaves running statistics alone.

    checkpoint records the RNG states (``preserve_rng_state``) and the autocast state at the first call and restores
    them for the recomputation, so shake-shake and dropout draw the same numbers again.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, u: Tensor) -> Tensor:
        calls = 0

        def run(x: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            if calls == 1:  # the forward pass: updates the running statistics once
                return self.fn(x)
            with _frozen_norm_stats(self.fn):  # type: ignore[arg-type]
                return self.fn(x)

        return checkpoint(run, u, use_reentrant=False, preserve_rng_state=True)


def recompute_fns(fns: Sequence[StepFns]) -> list[StepFns]:
    """Each residual function (each member of a tuple) wrapped in :class:`_Recompute`."""
    return [tuple(_Recompute(f) for f in fn) if isinstance(fn, tuple) else _Recompute(fn) for fn in fns]


# ----------------------------------------------------------------------------------------------------- reversible
class _RevRun:
    """The invertible steps of one forward pass of a rev stage: their functions, gates and recorded RNG states."""

    def __init__(self, stage: Stage, fns: list[StepFns], gates: list[StepGate] | None, noisy: bool) -> None:
        self.stage = stage
        self.fns = fns
        self.gates: list[tuple[Any, Any]] = [(None, None) if g is None else g for g in (gates or [None] * len(fns))]
        self.noisy = noisy
        self.dim = stage.scheme.split_dim  # type: ignore[union-attr]
        self.rng: list[tuple[RngState, RngState, RngState | None]] = []
        self.params: list[list[nn.Parameter]] = []  # per step: F's, then G's trainable parameters
        self.split: list[int] = []
        for f, g in fns:  # type: ignore[misc]
            pf = [p for p in f.parameters() if p.requires_grad]
            self.params.append(pf + [p for p in g.parameters() if p.requires_grad])
            self.split.append(len(pf))
        self.autocast: tuple[str, bool, torch.dtype] | None = None

    def unique_params(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for ps in self.params:
            for p in ps:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def forward(self, u: Tensor) -> Tensor:
        """X_{n+1} = X_n + (eta_n / p_n) F(Y_n), Y_{n+1} = Y_n + (eta'_n / p_n) G(X_{n+1}) (+ noise), as
        ``RevRunner.step`` and ``Stage.end_step`` compute them; records the RNG state before each random part."""
        device = u.device
        self.autocast = (device.type, torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        u_in = u
        for (f, g), (gate_f, gate_g) in zip(self.fns, self.gates):  # type: ignore[misc]
            x, y = u.chunk(2, dim=self.dim)
            st_f = _rng_get(device)
            if not is_dropped(gate_f):
                x = axpy(x, 1.0, f(y), gate_f)
            st_g = _rng_get(device)
            if not is_dropped(gate_g):
                y = axpy(y, 1.0, g(x), gate_g)
            u = torch.cat((x, y), dim=self.dim)
            st_n = _rng_get(device) if self.noisy else None
            u = self.stage.end_step(u, self.noisy)
            self.rng.append((st_f, st_g, st_n))
        if not bool(torch.isfinite(u_in).all()):
            raise ValueError(
                "memory='reversible': the input of a rev stage is not finite (inf or nan), so the backward pass "
                "cannot reconstruct it from the output; train with memory='store' or 'recompute'"
            )
        if not bool(torch.isfinite(u).all()):
            raise ValueError(
                "memory='reversible': a rev stage's output is not finite (inf or nan), so the backward pass cannot "
                "reconstruct its input; train with memory='store' or 'recompute'"
            )
        return u

    def backward(self, u: Tensor, grad: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """Walk the steps in reverse: rebuild (X_n, Y_n), recompute G and F under autograd, accumulate gradients.

        Returns the gradient with respect to the stage input and a map id(parameter) -> gradient.
        """
        device = u.device
        assert self.autocast is not None
        dev_type, amp_on, amp_dtype = self.autocast
        pgrads: dict[int, Tensor] = {}
        resume = _rng_get(device)
        noise_scale = (self.stage.noise_sigma or 0.0) * self.stage.NOISE_DT**0.5
        try:
            for n in reversed(range(len(self.fns))):
                f, g = self.fns[n]  # type: ignore[misc]
                gate_f, gate_g = self.gates[n]
                st_f, st_g, st_n = self.rng[n]
                pf, pg = self.params[n][: self.split[n]], self.params[n][self.split[n] :]
                if st_n is not None:  # undo u + sigma sqrt(dt) xi_n with the same xi_n; d/du is the identity
                    _rng_set(st_n, device)
                    u = torch.add(u, torch.randn_like(u), alpha=-noise_scale)
                x, y = u.chunk(2, dim=self.dim)
                gx, gy = grad.chunk(2, dim=self.dim)
                if not is_dropped(gate_g):  # Y_n = Y_{n+1} - gate G(X_{n+1})
                    y, gx = self._undo(g, pg, st_g, x, y, gy, gx, gate_g, pgrads, dev_type, amp_on, amp_dtype)
                if not is_dropped(gate_f):  # X_n = X_{n+1} - gate F(Y_n)
                    x, gy = self._undo(f, pf, st_f, y, x, gx, gy, gate_f, pgrads, dev_type, amp_on, amp_dtype)
                u = torch.cat((x, y), dim=self.dim)
                grad = torch.cat((gx, gy), dim=self.dim)
        finally:
            _rng_set(resume, device)
        return grad, pgrads

    @staticmethod
    def _undo(
        fn: nn.Module,
        params: list[nn.Parameter],
        rng: RngState,
        arg: Tensor,
        target: Tensor,
        g_target: Tensor,
        g_arg: Tensor,
        gate: Any,
        pgrads: dict[int, Tensor],
        dev_type: str,
        amp_on: bool,
        amp_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        """For target_{n+1} = target_n + gate fn(arg): returns (target_n, d arg) and adds fn's parameter gradients.

        d arg <- d arg + gate J_fn(arg)^T d target; d theta += gate (d fn / d theta)^T d target.
        """
        _rng_set(rng, arg.device)
        leaf = arg.detach().requires_grad_()
        with torch.enable_grad(), _frozen_norm_stats(fn), torch.autocast(dev_type, dtype=amp_dtype, enabled=amp_on):
            out = fn(leaf)
        target = axpy(target, -1.0, out.detach(), gate)
        g_out = g_target if gate is None else g_target * gate
        grads = torch.autograd.grad(out, [leaf, *params], g_out.to(out.dtype), allow_unused=True)
        for p, gp in zip(params, grads[1:]):
            if gp is not None:
                pgrads[id(p)] = gp if id(p) not in pgrads else pgrads[id(p)] + gp
        return target, g_arg if grads[0] is None else g_arg + grads[0]


class _RevFunction(torch.autograd.Function):
    """The invertible steps of a rev stage as one autograd node that keeps only its output (module docstring)."""

    @staticmethod
    def forward(ctx: Any, run: _RevRun, u: Tensor, *params: Tensor) -> Tensor:
        out = run.forward(u)
        ctx.run = run
        ctx.params = params
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (out,) = ctx.saved_tensors
        grad_u, pgrads = ctx.run.backward(out.detach(), grad)
        ctx.run = None  # free the recorded states
        # a block skipped by stochastic depth gets zeros, not None: every parameter has a gradient (DDP, timm)
        zeros = torch.zeros_like
        return (None, grad_u if ctx.needs_input_grad[1] else None, *(pgrads.get(id(p), zeros(p)) for p in ctx.params))


def reversible_forward(stage: Stage, u: Tensor) -> Tensor:
    """A rev stage's forward pass that keeps only its output for the backward pass (plus a transition step's
    activations). Draws the stochastic-depth gates once, exactly where ``Stage.forward_with_history`` draws them."""
    fns = stage.step_fns
    gates, noisy = stage.draw_stochastic(u)
    first = 0
    if stage.shortcut is not None:  # the transition step u_1 = P(u_0) + f_0(u_0): not invertible, stored
        u, first = stage.transition_step(u, fns[0], None if gates is None else gates[0], noisy)[:2]
        u = stage.zero_grads_of_dropped(u, None if gates is None else gates[:1])
    if first == len(fns):
        return u
    run = _RevRun(stage, fns[first:], None if gates is None else gates[first:], noisy)
    return _RevFunction.apply(run, u, *run.unique_params())


MEMORY_FORWARDS["recompute"] = lambda stage, u: stage.integrate(u, recompute_fns(stage.step_fns))
MEMORY_FORWARDS["reversible"] = lambda stage, u: (reversible_forward(stage, u), None)
