"""A stage of a residual network is an ODE integrator over its residual functions.

``Stage(scheme, fns)`` advances a state u_0 through one step per residual function f_n (an ``nn.Module`` or any
callable on tensors); the scheme (data from :mod:`odearch.schemes`) decides how states combine, the residual
functions hold the weights. Residual functions return f_n(u) only: the skip connection belongs to the Stage.
With f_n(u) = h * g(u), a stage of N steps integrates u' = g(u) from t = 0 to t = N h.

Update of each scheme family (paper Table 1; f absorbs the step):

- Runge-Kutta tableau (a, b, c), ``euler``, ``rk2``, ``rk4``, ...:
  k_i = f_n(u_n + sum_j a_ij k_j), u_{n+1} = u_n + sum_i b_i k_i. Forward Euler is ResNet:
  u_{n+1} = u_n + f_n(u_n). A tuple of functions for a step gives one function per inner stage (the FractalNet
  reading of rk2); a single function is shared by the inner stages, as an ODE solver does.
- LM (LM-ResNet): u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n), learnable ``lm_k`` (one per block, or one per
  channel), k_n ~ U[-0.1, 0] at initialisation.
- Linear multistep (alpha, beta), e.g. ``ab2``:
  u_{n+s} = -sum_{j<s} alpha_j u_{n+j} + sum_{j<s} beta_j f_{n+j}(u_{n+j}).
- PolyNet (``poly2``): u_{n+1} = u_n + F(u_n) + F(F(u_n)).
- RevNet (``rev``), u = (X, Y) split along channels, a pair (F, G) per step:
  X_{n+1} = X_n + F(Y_n), Y_{n+1} = Y_n + G(X_{n+1}); :meth:`Stage.inverse` undoes it exactly.

First step and transitions (the paper's official code, ``MResNet``): multistep schemes have no history at step 0,
so step 0 is a one-step starter (forward Euler for LM, which sets u_{-1} := u_0; the scheme's ``starter`` tableau
for a general multistep method). A down-sampling stage (``shortcut`` P given: a stride or width change) begins with
a plain residual step for every scheme, u_1 = P(u_0) + f_0(u_0), and the LM history of u_1 is its one-step-back
state u_0, projected to the new shape: u_prev := P(u_0) (or, with a ``history_shortcut`` Q, u_prev := Q(u_0), the
same state through its own projection). Hence ``lm_k`` holds one coefficient for each of the steps 1..N-1 of a stage.

An optional ``post_act`` sigma turns every step into u_{n+1} = sigma(update), the post-activation ResNet of He et
al. (2015), whose ReLU follows the addition.

Stochastic training (options; in evaluation, and with no option set, the updates above run unchanged):

- Stochastic depth, ``survival=(p_0, ..., p_{N-1})`` (see :mod:`odearch.nn.drop`): in training, step n's residual
  term is multiplied by eta_n / p_n, eta_n ~ Bernoulli(p_n), one draw per mini-batch (``drop_mode="batch"``, the
  dropped block is not evaluated; under torch.compile, export and fx / jit tracing the draw is a 0-d tensor gate
  instead, every block evaluated and scaled, so one graph serves every draw) or per sample (``"sample"``).
  Evaluation runs the mean, the update unscaled. For
  every family the whole increment of the step goes with one draw: u_{n+1} = u_n + (eta_n / p_n) sum_i b_i k_i for
  a Runge-Kutta step (also rk2 / rk4 / FractalNet), u_n + (eta_n / p_n)(F(u_n) + F(F(u_n))) for PolyNet. A RevNet
  step drops F and G independently, both with the step's p_n: X_{n+1} = X_n + (eta_n / p_n) F(Y_n),
  Y_{n+1} = Y_n + (eta'_n / p_n) G(X_{n+1}). Each half-step is forward Euler on its own component of the coupled
  system X' = F(Y), Y' = G(X), so each gets its own Bernoulli noise; and a shared draw would enter Y_{n+1} as
  (eta_n / p_n)^2 G(F(Y_n)), whose mean 1 / p_n != 1 makes the training-time mean differ from the evaluation
  network even for linear F, G, while independent draws keep E[train] = eval as for every other family. The step
  stays exactly invertible given the draws. LM keeps its history exact:
  u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + (eta_n / p_n) f_n(u_n), u_{n-1} the real previous state (paper,
  "LM with stochastic depth"). A linear multistep method uses the realised residual (eta_n / p_n) f_n(u_n) in
  every later step that reads it. A dropped transition step gives u_1 = P(u_0) (the official code adds zeros).
- Noise injection, ``noise_sigma=sigma``: every step in training becomes u_{n+1} = sigma_post(update + sigma sqrt(dt)
  xi_n), xi_n ~ N(0, I) elementwise, dt = 1 per step (each block is one unit of time, as f absorbs its step):
  the Euler-Maruyama step of dX = g(X) dt + sigma dB, so u_N - u_0 has variance sigma^2 N when f = 0. The noise
  enters before the post-activation, so a post-activation network keeps feeding its blocks activated states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from ..schemes import ButcherTableau, LinearMultistep, LMScheme, PolyScheme, RevScheme, Scheme, get_scheme
from .drop import Gate, add_noise, batch_gate, batch_gate_tensor, check_drop_mode, check_survival, sample_gate

ResidualFn = Callable[[Tensor], Tensor]
StepFns = ResidualFn | tuple[ResidualFn, ...]
StepGate = Gate | tuple[Gate, Gate]  # a RevNet step has one stochastic-depth gate for F and one for G


def _axpy(u: Tensor, coef: float, v: Tensor, gate: Gate = None) -> Tensor:
    """u + coef * gate * v as one kernel (and no multiply when coef is 1 and there is no gate).

    ``gate``: None (1), a float (a per-batch 1 / p) or a (B, 1, ..., 1) tensor (per-sample eta / p).
    """
    if gate is None:
        return u + v if coef == 1.0 else torch.add(u, v, alpha=coef)
    if isinstance(gate, Tensor):
        return torch.addcmul(u, gate, v, value=coef)
    return torch.add(u, v, alpha=coef * gate)


def _dropped(gate: Gate) -> bool:
    """True for a block dropped by a per-batch draw: its residual function is not evaluated."""
    return type(gate) is float and gate == 0.0


def _tracing() -> bool:
    """True under torch.compile / torch.export, torch.fx.symbolic_trace or torch.jit.trace: no Python-level draw."""
    return torch.compiler.is_compiling() or is_fx_symbolic_tracing() or torch.jit.is_tracing()


def _gate(gates: list[StepGate] | None, n: int) -> Any:
    return None if gates is None else gates[n]


def _scaled(f: Tensor | None, gate: Gate) -> Tensor | None:
    """The realised residual gate * f (None for a dropped block)."""
    return f if gate is None or f is None else f * gate


def _flat(t: Tensor) -> Tensor | None:
    """A 1-D view of a dense tensor in its memory order (row-major or channels_last), or None."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(-1)
    return None


def _lm_dk(g: Tensor, u: Tensor, u_prev: Tensor, k: Tensor, scratch: Tensor | None = None) -> Tensor:
    """dk = sum of g (u_prev - u) over the dimensions k broadcasts along, in k's shape and dtype.

    The difference u_prev - u is taken first, elementwise (exact where the two states are close, by Sterbenz's
    lemma), and the sum is accumulated in float32 or better: float32 / float64 states reduce with one BLAS dot
    <g, u_prev - u>; bfloat16 / float16 states (autocast) form g (u_prev - u) in their dtype and sum it in float32.
    The former dot(g, u_prev) - dot(g, u) rounded each dot to bf16 before the subtraction and lost dk entirely
    when the two dots nearly cancel. ``scratch``: a tensor like g to hold the difference (overwritten), or None.
    Under ``torch.compile`` the same sum is written functionally (no views, no ``out=``): inductor fuses it.
    """
    acc = torch.promote_types(g.dtype, torch.float32)
    lead = g.dim() - k.dim()
    dims = [i for i in range(g.dim()) if i < lead or k.shape[i - lead] == 1]
    if torch.compiler.is_compiling():
        return (g * (u_prev - u)).sum(dims, dtype=acc).view(k.shape).to(k.dtype)
    d = torch.sub(u_prev, u) if scratch is None else torch.sub(u_prev, u, out=scratch)
    if k.dim() == 0:
        fg, fd = _flat(g), _flat(d)
        if fg is not None and fd is not None and g.stride() == d.stride():
            if fg.dtype == acc:
                return torch.dot(fg, fd).to(k.dtype)
            return fd.mul_(fg).sum(dtype=acc).to(k.dtype)
    return d.mul_(g).sum(dims, dtype=acc).view(k.shape).to(k.dtype)


class _LMCombine(torch.autograd.Function):
    """out = (1 - k) u + k u_prev + r, the LM update with its residual r = (eta_n / p_n) f_n(u_n) already evaluated.

    ``k`` keeps its own dtype (the float32 parameter under autocast); the update runs in the states' dtype.
    Backward: du = g (1 - k), du_prev = g k, dr = g, dk = sum g (u_prev - u) accumulated in float32 or better and
    returned in k's dtype (:func:`_lm_dk`). Autograd through ``lerp`` would reduce dk with a ``sum`` over a
    channels_last tensor (4.4 ms per call on a 2-core CPU at 128x16x32x32) and in the states' dtype; a bf16
    ``torch.dot`` is both slow on CPU (2.4 ms per call) and inexact (each dot rounded before the subtraction).
    """

    @staticmethod
    def forward(ctx: Any, u: Tensor, u_prev: Tensor, k: Tensor, r: Tensor | None) -> Tensor:
        ctx.save_for_backward(u, u_prev, k)
        ctx.has_r = r is not None
        out = torch.lerp(u, u_prev, k.to(u.dtype))
        return out if r is None else out.add_(r)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        u, u_prev, k = ctx.saved_tensors
        need_u, need_prev, need_k, need_r = ctx.needs_input_grad
        kc = k.to(g.dtype)
        grad_u = g * (1 - kc) if need_u else None
        scratch = None  # eager: holds u_prev - u for dk, then du_prev (one allocation for both)
        if need_prev and not torch.compiler.is_compiling():
            scratch = torch.empty_like(g)
        grad_k = _lm_dk(g, u, u_prev, k, scratch) if need_k else None
        grad_prev = (g * kc if scratch is None else torch.mul(g, kc, out=scratch)) if need_prev else None
        return grad_u, grad_prev, grad_k, (g if need_r and ctx.has_r else None)


def _as_module(fn: StepFns) -> nn.Module | None:
    """The module that owns a step's weights (a ModuleList for a tuple of modules), or None for plain callables."""
    if isinstance(fn, nn.Module):
        return fn
    if isinstance(fn, tuple) and fn and all(isinstance(f, nn.Module) for f in fn):
        return nn.ModuleList(fn)
    return None


class Stage(nn.Module):
    """An ODE integrator over residual functions: one network stage (see the module docstring for the updates).

    Args:
        scheme: a scheme name from :data:`odearch.schemes.SCHEMES` or a scheme object.
        fns: one entry per step: a residual function, or a tuple of them (one per inner stage of a Runge-Kutta
            step; the pair (F, G) of a RevNet step).
        shortcut: P of a down-sampling stage; when given, step 0 is the plain step u_1 = P(u_0) + f_0(u_0).
        history_shortcut: Q, a projection of its own for the LM history across a transition, u_prev := Q(u_0)
            instead of P(u_0) (LM-ResNeXt); needs ``shortcut``.
        post_act: sigma applied after every step (post-activation ResNet); None for pre-activation networks.
        channels: number of channels of the state, needed for a per-channel LM coefficient.
        survival: stochastic depth: the survival probability p_n in (0, 1] of each step (None or all 1: off);
            see :func:`odearch.nn.drop.linear_survival` for the usual network-wide linear decay.
        drop_mode: ``"batch"`` (one draw per block and mini-batch; a dropped block is not evaluated) or
            ``"sample"`` (one draw per sample, a (B, 1, ..., 1) mask).
        noise_sigma: noise injection: sigma of the Gaussian increment sigma sqrt(dt) xi_n added to every step in
            training (dt = 1 per step); None or 0: off.
    """

    NOISE_DT = 1.0  # time per residual step for the injected noise: f absorbs the step, one block = one unit

    def __init__(
        self,
        scheme: str | Scheme,
        fns: Sequence[StepFns],
        *,
        shortcut: nn.Module | None = None,
        history_shortcut: nn.Module | None = None,
        post_act: nn.Module | None = None,
        channels: int | None = None,
        survival: Sequence[float] | None = None,
        drop_mode: str = "batch",
        noise_sigma: float | None = None,
    ) -> None:
        super().__init__()
        self.scheme = get_scheme(scheme)
        fns = list(fns)
        if not fns:
            raise ValueError("a Stage needs at least one residual function")
        if history_shortcut is not None and shortcut is None:
            raise ValueError("history_shortcut projects the LM history across a transition: it needs a shortcut")
        if shortcut is not None and isinstance(fns[0], tuple):
            raise ValueError("the transition step (with a shortcut) takes a single residual function, not a tuple")
        self._check_step_fns(fns, transition=shortcut is not None)
        modules = [_as_module(fn) for fn in fns]
        if all(m is not None for m in modules):
            self.blocks = nn.ModuleList(modules)
            self._plain_fns: list[StepFns] | None = None
        elif any(isinstance(fn, nn.Module) for fn in fns):
            raise TypeError("mix of nn.Module and plain callables in one Stage: use one kind")
        else:
            self._plain_fns = fns
        self.shortcut = shortcut
        self.history_shortcut = history_shortcut
        self.post_act = post_act
        if isinstance(self.scheme, LMScheme) and len(fns) > 1:
            self._init_lm_k(len(fns) - 1, channels)
        self._init_stochastic(len(fns), survival, drop_mode, noise_sigma)
        self.memory = "store"  # activation memory of the backward pass: odearch.nn.memory.set_memory

    # ----------------------------------------------------------------------------------------------- construction
    def _check_step_fns(self, fns: list[StepFns], transition: bool) -> None:
        """Fail in the constructor on a step whose functions do not fit the scheme."""
        for n, fn in enumerate(fns[int(transition) :], start=int(transition)):
            if isinstance(self.scheme, RevScheme):
                if not (isinstance(fn, tuple) and len(fn) == 2):
                    raise ValueError(f"rev scheme: step {n} needs a pair (F, G) of residual functions")
            elif isinstance(self.scheme, ButcherTableau):
                if isinstance(fn, tuple) and len(fn) != self.scheme.stages:
                    raise ValueError(
                        f"{self.scheme.name}: step {n} has {len(fn)} functions for {self.scheme.stages} inner stages"
                    )
            elif isinstance(fn, tuple):
                raise ValueError(f"{self.scheme.name}: one residual function per step, got a tuple at step {n}")

    def _init_stochastic(
        self, n_steps: int, survival: Sequence[float] | None, drop_mode: str, noise_sigma: float | None
    ) -> None:
        check_drop_mode(drop_mode)
        if survival is not None:
            survival = tuple(float(p) for p in survival)
            if len(survival) != n_steps:
                raise ValueError(f"survival has {len(survival)} probabilities for {n_steps} steps: give one per step")
            for n, p in enumerate(survival):
                check_survival(p, f"survival[{n}]")
            if all(p == 1.0 for p in survival):
                survival = None  # nothing is ever dropped: keep the deterministic code path
        if noise_sigma is not None:
            if not (math.isfinite(noise_sigma) and noise_sigma >= 0.0):
                raise ValueError(f"noise_sigma must be a finite standard deviation >= 0, got {noise_sigma}")
            noise_sigma = float(noise_sigma) or None
        self.survival: tuple[float, ...] | None = survival
        self.drop_mode = drop_mode
        self.noise_sigma: float | None = noise_sigma

    def _init_lm_k(self, n_steps: int, channels: int | None) -> None:
        scheme = self.scheme
        assert isinstance(scheme, LMScheme)
        if scheme.per_channel and channels is None:
            raise ValueError("a per-channel LM coefficient needs channels= (the state's channel count)")
        shape = (n_steps, channels) if scheme.per_channel else (n_steps,)
        self._lm_per_channel = scheme.per_channel  # decided here, not from lm_k's rank: fx traces no tensor branch
        if scheme.fixed_k is not None:
            self.register_buffer("lm_k", torch.full(shape, float(scheme.fixed_k)))
        else:
            self.lm_k = nn.Parameter(torch.empty(shape).uniform_(*scheme.k_init))

    @property
    def step_fns(self) -> list[StepFns]:
        """The residual function(s) of each step, in order."""
        if self._plain_fns is not None:
            return self._plain_fns
        return [tuple(m) if isinstance(m, nn.ModuleList) else m for m in self.blocks]

    def __len__(self) -> int:
        return len(self.step_fns)

    # ----------------------------------------------------------------------------------------------------- forward
    def forward(
        self, u: Tensor, u_prev: Tensor | None = None, return_history: bool = False
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """Integrate u_0 -> u_N. u: the state, (B, C, H, W) in a network, any shape for plain callables.

        ``return_history=True`` returns :meth:`forward_with_history`'s pair; networks call the stage this way (the
        module's ``__call__``, so hooks and fx / torchvision feature extraction see each stage as a module).
        """
        out = self.forward_with_history(u, u_prev)
        return out if return_history else out[0]

    def forward_with_history(self, u: Tensor, u_prev: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Integrate u_0 -> u_N and also return the LM history u_{N-1} (None for other schemes).

        ``u_prev``, the previous stage's u_{N-1}, is not read: the history of a transition's u_1 is u_0 (through P or
        ``history_shortcut``), so a stage never needs an older state. It is accepted so that callers can chain
        ``forward_with_history`` over stages.
        """
        fns = self.step_fns
        # odearch.nn.memory: recompute or reversible, in eager mode (a traced or compiled graph stores activations)
        if self.memory != "store" and torch.is_grad_enabled() and not _tracing():
            from . import memory

            if self.memory == "reversible":
                return memory.reversible_forward(self, u), None
            fns = memory.recompute_fns(fns)
        gates: list[StepGate] | None = None  # per step: None, or the stochastic-depth factor eta_n / p_n
        noisy = False
        if self.training and (self.survival is not None or self.noise_sigma is not None):
            gates = self._draw_gates(u)
            noisy = self.noise_sigma is not None
        first = 0
        history: Tensor | None = None
        f_hist: list[Tensor | None] = []
        scheme = self.scheme
        if self.shortcut is not None:
            g = _gate(gates, 0)
            p = self.shortcut(u)
            r = None if _dropped(g) else fns[0](u)  # dropped: u_1 = P(u_0)
            history = p if self.history_shortcut is None else self.history_shortcut(u)  # u_0, one step back
            u_new = self._end(p if r is None else _axpy(p, 1.0, r, g), noisy)  # last: a traced stage ends on u
            u, first = u_new, 1
            if isinstance(scheme, LinearMultistep):
                f_hist = [_scaled(r, g)]
        if isinstance(scheme, ButcherTableau):
            for n in range(first, len(fns)):
                u = self._end(self._rk_step(u, fns[n], scheme, gate=_gate(gates, n)), noisy)
            return u, None
        if isinstance(scheme, LMScheme):
            return self._run_lm(u, history, fns, first, gates, noisy)
        if isinstance(scheme, LinearMultistep):
            return self._run_multistep(u, history, f_hist, fns, first, scheme, gates, noisy), None
        if isinstance(scheme, PolyScheme):
            for n in range(first, len(fns)):
                u = self._end(self._poly_step(u, fns[n], scheme.degree, _gate(gates, n)), noisy)
            return u, None
        if isinstance(scheme, RevScheme):
            for n in range(first, len(fns)):
                u = self._end(self._rev_step(u, fns[n], scheme.split_dim, _gate(gates, n) or (None, None)), noisy)
            return u, None
        raise TypeError(f"no step for scheme {scheme!r}")  # unreachable: get_scheme validated it

    def _act(self, u: Tensor) -> Tensor:
        return u if self.post_act is None else self.post_act(u)

    def _end(self, u: Tensor, noisy: bool = False) -> Tensor:
        """Finish a step: + sigma sqrt(dt) xi_n when ``noisy`` (training with noise_sigma), then the post-act."""
        if noisy:
            assert self.noise_sigma is not None
            u = add_noise(u, self.noise_sigma, self.NOISE_DT)
        return u if self.post_act is None else self.post_act(u)

    def _draw_gates(self, u: Tensor) -> list[StepGate] | None:
        """This forward pass's stochastic-depth factors, one per step (None for a step with p_n = 1)."""
        if self.survival is None:
            return None
        if self.drop_mode == "batch" and not _tracing():  # CPU draws from the global RNG: no device sync, ranks
            draw: Callable[[float], Gate] = batch_gate  # stay in step; a dropped block is skipped
        elif self.drop_mode == "batch":  # compile / trace / export: a 0-d tensor gate, one graph for every draw
            draw = partial(batch_gate_tensor, u)
        else:
            draw = partial(sample_gate, u)
        gates: list[StepGate] = [None if p == 1.0 else draw(p) for p in self.survival]
        if isinstance(self.scheme, RevScheme):  # a RevNet step draws for F, then for G (the transition: one draw)
            first = int(self.shortcut is not None)
            gates[first:] = [(g, None if p == 1.0 else draw(p)) for g, p in zip(gates[first:], self.survival[first:])]
        return gates

    # ----------------------------------------------------------------------------------------- one step per family
    @staticmethod
    def _rk_step(u: Tensor, fn: StepFns, tab: ButcherTableau, k1: Tensor | None = None, gate: Gate = None) -> Tensor:
        """k_i = f_i(u + sum_j a_ij k_j); u_{n+1} = u + (eta_n / p_n) sum_i b_i k_i (the gate: 1 without stochastic
        depth; one draw for the whole step). ``k1``: f(u) when already evaluated."""
        if _dropped(gate):
            return u
        fs = fn if isinstance(fn, tuple) else (fn,) * tab.stages
        ks: list[Tensor] = []
        for i in range(tab.stages):
            if i == 0 and k1 is not None:  # c_1 = 0 for explicit schemes: k_1 = f(u_n)
                ks.append(k1)
                continue
            ui = u
            for j in range(i):
                if tab.a[i][j] != 0.0:
                    ui = _axpy(ui, tab.a[i][j], ks[j])
            ks.append(fs[i](ui))
        out = u
        for b_i, k_i in zip(tab.b, ks):
            if b_i != 0.0:
                out = _axpy(out, b_i, k_i, gate)
        return out

    def _lm_coefficient(self, m: int, u: Tensor) -> Tensor:
        """k of LM step m (1-based within the stage), shaped to broadcast against u: a scalar, or (C, 1, 1) for a
        per-channel coefficient of a (B, C, H, W) state (decided when the stage is built, so the graph is
        traceable)."""
        k = self.lm_k[m - 1]  # its own dtype: _LMCombine casts it for the update and returns dk in it
        return k.view(-1, 1, 1) if self._lm_per_channel else k

    def _run_lm(
        self,
        u: Tensor,
        u_prev: Tensor | None,
        fns: list[StepFns],
        first: int,
        gates: list[StepGate] | None = None,
        noisy: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n); step 0 without a transition is forward Euler.

        With stochastic depth, the paper's u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + (eta_n / p_n) f_n(u_n),
        eta_n ~ Bernoulli(p_n) (Lu et al. 2018, "stochastic training as stochastic dynamics": a weak approximation
        of dX = p(t) f dt + sqrt(p (1 - p) dt) f dB on the LM dynamics); the history u_{n-1} is always the real
        previous state, dropped step or not.
        """
        if first == 0:  # starter: one forward Euler step, u_{-1} := u_0
            u_prev, u = u, self._end(self._plus_residual(u, fns[0], u, _gate(gates, 0)), noisy)
            first = 1
        assert u_prev is not None
        for m in range(first, len(fns)):
            k = self._lm_coefficient(m, u)
            g = _gate(gates, m)
            r = None if _dropped(g) else _scaled(fns[m](u), g)  # type: ignore[operator]
            u_prev, u = u, self._end(_LMCombine.apply(u, u_prev, k, r), noisy)
        return u, u_prev

    @staticmethod
    def _plus_residual(base: Tensor, fn: StepFns, u: Tensor, gate: Gate) -> Tensor:
        """base + (eta_n / p_n) f_n(u) (base + f_n(u) without a gate); f_n is not evaluated when dropped."""
        if _dropped(gate):
            return base
        return _axpy(base, 1.0, fn(u), gate)  # type: ignore[operator]

    def _run_multistep(
        self,
        u: Tensor,
        u_prev: Tensor | None,
        f_hist: list[Tensor | None],
        fns: list[StepFns],
        first: int,
        lmm: LinearMultistep,
        gates: list[StepGate] | None = None,
        noisy: bool = False,
    ) -> Tensor:
        """u_{n+s} = sum_{j<s} (-alpha_j u_{n+j} + beta_j f_{n+j}(u_{n+j})); the starter fills missing history.

        With stochastic depth each f_n(u_n) is the realised (eta_n / p_n) f_n(u_n) wherever it enters (None, i.e.
        zero and not evaluated, when dropped).
        """
        s = lmm.steps
        us = [u] if u_prev is None else [u_prev, u]  # states, oldest first
        fs = list(f_hist)  # fs[i] = f(us[i]), known for all but the newest state
        for n in range(first, len(fns)):
            g = _gate(gates, n)
            f_n = None if _dropped(g) else fns[n](u)  # type: ignore[operator]
            fs.append(_scaled(f_n, g))
            if len(us) < s:  # not enough history: a starter step, its first evaluation being f_n
                u_new = self._rk_step(u, fns[n], lmm.starter, k1=f_n, gate=g)
            else:
                u_new = u if lmm.alpha[s - 1] == -1.0 else torch.mul(u, -lmm.alpha[s - 1])
                for coef, v in zip((*(-a for a in lmm.alpha[: s - 1]), *lmm.beta[:s]), (*us[-s:-1], *fs[-s:])):
                    if coef != 0.0 and v is not None:
                        u_new = _axpy(u_new, coef, v)
            u = self._end(u_new, noisy)
            us, fs = [*us, u][-s:], fs[-s:]
        return u

    @staticmethod
    def _poly_step(u: Tensor, fn: StepFns, degree: int, gate: Gate = None) -> Tensor:
        """u_{n+1} = u_n + (eta_n / p_n)(F(u_n) + F(F(u_n)) + ...) (degree terms; the gate is 1 without SD)."""
        if _dropped(gate):
            return u
        out, term = u, u
        for _ in range(degree):
            term = fn(term)  # type: ignore[operator]
            out = _axpy(out, 1.0, term, gate)
        return out

    @staticmethod
    def _rev_step(u: Tensor, fn: StepFns, dim: int, gates: tuple[Gate, Gate] = (None, None)) -> Tensor:
        """X_{n+1} = X_n + (eta_n / p_n) F(Y_n); Y_{n+1} = Y_n + (eta'_n / p_n) G(X_{n+1}) (gates 1 without SD)."""
        f, g = fn  # type: ignore[misc]
        gate_f, gate_g = gates
        x, y = u.chunk(2, dim=dim)
        if not _dropped(gate_f):
            x = _axpy(x, 1.0, f(y), gate_f)
        if not _dropped(gate_g):
            y = _axpy(y, 1.0, g(x), gate_g)
        return torch.cat((x, y), dim=dim)

    # ----------------------------------------------------------------------------------------------------- inverse
    def inverse(self, u: Tensor) -> Tensor:
        """u_N -> u_0 for a RevNet stage: Y_n = Y_{n+1} - G(X_{n+1}), X_n = X_{n+1} - F(Y_n), steps reversed."""
        if not isinstance(self.scheme, RevScheme):
            raise ValueError(f"only the rev scheme is invertible, this stage uses {self.scheme.name!r}")
        if self.shortcut is not None or self.post_act is not None:
            raise ValueError("a stage with a transition step or a post-activation is not invertible")
        dim = self.scheme.split_dim
        for f, g in reversed(self.step_fns):  # type: ignore[misc]
            x, y = u.chunk(2, dim=dim)
            y = y - g(x)
            x = x - f(y)
            u = torch.cat((x, y), dim=dim)
        return u

    def extra_repr(self) -> str:
        out = f"scheme={self.scheme.name}, steps={len(self)}, transition={self.shortcut is not None}"
        if self.survival is not None:
            out += f", survival=({self.survival[0]:.3g}..{self.survival[-1]:.3g}), drop_mode={self.drop_mode}"
        if self.noise_sigma is not None:
            out += f", noise_sigma={self.noise_sigma:g}"
        return out


def lm_coefficients(model: nn.Module) -> dict[str, list[float] | list[list[float]]]:
    """The LM coefficients k_n of every LM stage of ``model``, keyed by the stage's module name.

    Entry m of a stage's list is k of the stage's step m + 1 (step 0 is the starter or transition step).
    """
    out: dict[str, list[float] | list[list[float]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Stage) and hasattr(module, "lm_k"):
            out[name] = module.lm_k.detach().float().cpu().tolist()
    return out
