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
  channel), k_n ~ U[-0.1, 0] at initialisation, drawn from a copy of the global RNG (:func:`lm_k_draw`), so an LM
  network shares every other initial weight with its plain twin built after the same seed. Computed in velocity
  form, v_n = u_n - u_{n-1}: v_{n+1} = f_n(u_n) - k_n v_n, u_{n+1} = u_n + v_{n+1} (the same update, fewer passes
  over the state).
- Linear multistep (alpha, beta), e.g. ``ab2``:
  u_{n+s} = -sum_{j<s} alpha_j u_{n+j} + sum_{j<s} beta_j f_{n+j}(u_{n+j}).
- PolyNet (``poly2``): u_{n+1} = u_n + F(u_n) + F(F(u_n)).
- RevNet (``rev``), u = (X, Y) split along channels, a pair (F, G) per step:
  X_{n+1} = X_n + F(Y_n), Y_{n+1} = Y_n + G(X_{n+1}); :meth:`Stage.inverse` undoes it exactly.
- DenseResNet (``dense``, the official code's ``DenseBlock``; :mod:`odearch.nn.dense`):
  u_{n+1} = (sum_{j<=n} k_{nj} u_j) / (sum_{j<=n} k_{nj}) + f_n(u_n), learnable ``dense_k`` (the k_{nj} of steps
  1..N-1), k_{nj} ~ U[-0.1, 0] drawn like ``lm_k``; the history u_0 of a transition is P(u_0).

Dispatch: :data:`STEP_RUNNERS` maps each scheme type to its :class:`StepRunner`, whose ``step`` (one-step
families) or ``run`` (LM, linear multistep, dense) is the update above; a new family is a scheme dataclass, a
runner and one :func:`register_step_runner` entry. The Stage owns what all families share: the transition step,
stochastic depth, noise, the post-activation and the memory mode.

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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from ..schemes import ButcherTableau, LinearMultistep, LMScheme, PolyScheme, RevScheme, Scheme, get_scheme
from ..schemes.lm import lm_k_by_stage
from .drop import Gate, add_noise, batch_gate, batch_gate_tensor, check_drop_mode, check_survival, sample_gate
from .lm_combine import LMVelocity
from .stochastic import check_noise_sigma

ResidualFn = Callable[[Tensor], Tensor]
StepFns = ResidualFn | tuple[ResidualFn, ...]
StepGate = Gate | tuple[Gate, Gate]  # a RevNet step has one stochastic-depth gate for F and one for G

LM_K_DRAWS = ("paired", "global")
_lm_k_draw = "paired"


@contextmanager
def lm_k_draw(kind: str) -> Iterator[None]:
    """How LM stages built inside the block draw their initial k_n.

    ``paired`` (the default): from a copy of the global CPU RNG, which is left where it was, so the LM net's every
    other parameter (and every later draw) equals its plain twin's after the same ``torch.manual_seed``.
    ``global``: from the global RNG itself, as before paired init existed (the k draws shift every later weight).
    """
    global _lm_k_draw
    if kind not in LM_K_DRAWS:
        raise ValueError(f"lm_k_draw: kind must be one of {LM_K_DRAWS}, got {kind!r}")
    old, _lm_k_draw = _lm_k_draw, kind
    try:
        yield
    finally:
        _lm_k_draw = old


def draw_lm_k(shape: tuple[int, ...], low: float, high: float) -> Tensor:
    """k ~ U[low, high] of ``shape``, from the global RNG or a copy of it (:func:`lm_k_draw`)."""
    if _lm_k_draw == "global":
        return torch.empty(shape).uniform_(low, high)
    gen = torch.Generator()
    gen.set_state(torch.get_rng_state())
    return torch.empty(shape, device="cpu").uniform_(low, high, generator=gen).to(torch.get_default_device())


def axpy(u: Tensor, coef: float, v: Tensor, gate: Gate = None) -> Tensor:
    """u + coef * gate * v as one kernel (and no multiply when coef is 1 and there is no gate).

    ``gate``: None (1), a float (a per-batch 1 / p) or a (B, 1, ..., 1) tensor (per-sample eta / p).
    """
    if gate is None:
        return u + v if coef == 1.0 else torch.add(u, v, alpha=coef)
    if isinstance(gate, Tensor):
        return torch.addcmul(u, gate, v, value=coef)
    return torch.add(u, v, alpha=coef * gate)


def is_dropped(gate: Gate) -> bool:
    """True for a block dropped by a per-batch draw: its residual function is not evaluated."""
    return type(gate) is float and gate == 0.0


def _tracing() -> bool:
    """True under torch.compile / torch.export, torch.fx.symbolic_trace or torch.jit.trace: no Python-level draw."""
    return torch.compiler.is_compiling() or is_fx_symbolic_tracing() or torch.jit.is_tracing()


def step_gate(gates: list[StepGate] | None, n: int) -> Any:
    return None if gates is None else gates[n]


def _scaled(f: Tensor | None, gate: Gate) -> Tensor | None:
    """The realised residual gate * f (None for a dropped block)."""
    return f if gate is None or f is None else f * gate


def _as_module(fn: StepFns) -> nn.Module | None:
    """The module that owns a step's weights (a ModuleList for a tuple of modules), or None for plain callables."""
    if isinstance(fn, nn.Module):
        return fn
    if isinstance(fn, tuple) and fn and all(isinstance(f, nn.Module) for f in fn):
        return nn.ModuleList(fn)
    return None


# ------------------------------------------------------------------------------------------------- step runners
class Start(NamedTuple):
    """Where a scheme's steps begin: after the transition step u_1 = P(u_0) + (eta_0 / p_0) f_0(u_0), if any.

    ``u``: the state the scheme's first step reads; ``first``: that step's index (1 after a transition);
    ``history``: the LM history u_prev of ``u`` (P(u_0) or Q(u_0) after a transition; None without one);
    ``residual``, ``gate``: the transition's f_0(u_0) (None when dropped) and its stochastic-depth factor.
    """

    u: Tensor
    first: int = 0
    history: Tensor | None = None
    residual: Tensor | None = None
    gate: Gate = None


class StepRunner:
    """How a :class:`Stage` integrates one scheme family: the value of :data:`STEP_RUNNERS` for its scheme type.

    As in torchdiffeq's fixed-grid solvers, the base class owns the loop over the steps and a one-step family
    supplies :meth:`step`, its update formula; a family with history (LM, linear multistep) overrides :meth:`run`.
    The attributes answer what a Stage and the model builders ask of a family. A new family is a scheme dataclass
    (:mod:`odearch.schemes`), a subclass of this and :func:`register_step_runner`.

    Args:
        scheme: the scheme object (torch-free data).
    """

    branches: int = 1
    """Residual functions a step holds when each evaluation has its own (tableau stages, RevNet's (F, G))."""
    accepts_tuple: bool = False
    """A step may be a tuple of ``branches`` functions (FractalNet's per-stage functions, RevNet's pair)."""
    split: int = 1
    """The state is split into this many channel parts, each with a function of its own and a stochastic-depth draw
    of its own after the transition (RevNet: 2 halves, F and G). With ``split`` 1 a step may also be one function,
    shared by its ``branches`` evaluations."""
    invertible: bool = False
    """:meth:`inverse` undoes the steps exactly (RevNet; also what ``memory="reversible"`` needs)."""
    has_k: bool = False
    """The stage holds LM coefficients ``lm_k`` (an LM stage)."""

    def __init__(self, scheme: Any) -> None:
        self.scheme = scheme

    @property
    def needs_channels(self) -> bool:
        """True when the Stage needs ``channels=`` (one LM coefficient per channel)."""
        return False

    @property
    def is_euler(self) -> bool:
        """True for forward Euler, u_{n+1} = u_n + f_n(u_n) (ResNet; what :func:`odearch.convert.to_lm` converts)."""
        return False

    def check_step(self, fn: StepFns, n: int) -> None:
        """Raise ``ValueError`` when step ``n``'s functions do not fit the scheme (here: one function per step)."""
        if isinstance(fn, tuple):
            raise ValueError(f"{self.scheme.name}: one residual function per step, got a tuple at step {n}")

    def init_params(self, stage: Stage, n_steps: int, channels: int | None) -> None:
        """Register the scheme's own parameters on ``stage`` (none here)."""

    def run(
        self, stage: Stage, fns: list[StepFns], start: Start, gates: list[StepGate] | None, noisy: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Steps ``start.first`` .. N-1 from ``start.u``: u_{n+1} = end(step(u_n)); returns (u_N, LM history)."""
        u = start.u
        for n in range(start.first, len(fns)):
            u = stage.end_step(self.step(u, fns[n], step_gate(gates, n)), noisy)
        return u, None

    def step(self, u: Tensor, fn: StepFns, gate: Any) -> Tensor:
        """One update u_n -> u_{n+1} (before noise and post-activation); ``gate``: eta_n / p_n, None without SD."""
        raise NotImplementedError(f"{type(self).__name__} implements neither step nor run")

    def inverse(self, fns: list[StepFns], u: Tensor) -> Tensor:
        """u_N -> u_0 (only for an ``invertible`` family)."""
        raise ValueError(f"only the rev scheme is invertible, this stage uses {self.scheme.name!r}")


STEP_RUNNERS: dict[type, type[StepRunner]] = {}
"""Scheme type -> its :class:`StepRunner`: the one place a Stage learns how to integrate a family."""


def register_step_runner(scheme_type: type, runner: type[StepRunner]) -> None:
    """Make ``runner`` integrate the schemes of ``scheme_type`` (a duplicate registration raises ``ValueError``)."""
    if scheme_type in STEP_RUNNERS:
        raise ValueError(f"{scheme_type.__name__} already has the step runner {STEP_RUNNERS[scheme_type].__name__}")
    STEP_RUNNERS[scheme_type] = runner


def step_runner(scheme: str | Scheme) -> StepRunner:
    """The :class:`StepRunner` of a scheme (a name from :data:`odearch.schemes.SCHEMES` or a scheme object)."""
    scheme = get_scheme(scheme)
    for cls in type(scheme).__mro__:
        if cls in STEP_RUNNERS:
            return STEP_RUNNERS[cls](scheme)
    known = ", ".join(t.__name__ for t in STEP_RUNNERS)
    raise TypeError(f"no step runner for {type(scheme).__name__} (known: {known}); add one: register_step_runner")


def _rk_step(tab: ButcherTableau, u: Tensor, fn: StepFns, gate: Gate = None, k1: Tensor | None = None) -> Tensor:
    """k_i = f_i(u + sum_j a_ij k_j); u_{n+1} = u + (eta_n / p_n) sum_i b_i k_i (the gate: 1 without stochastic
    depth; one draw for the whole step). ``k1``: f(u) when already evaluated."""
    if is_dropped(gate):
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
                ui = axpy(ui, tab.a[i][j], ks[j])
        ks.append(fs[i](ui))
    out = u
    for b_i, k_i in zip(tab.b, ks):
        if b_i != 0.0:
            out = axpy(out, b_i, k_i, gate)
    return out


class RungeKuttaRunner(StepRunner):
    """k_i = f_i(u_n + sum_j a_ij k_j), u_{n+1} = u_n + (eta_n / p_n) sum_i b_i k_i: one draw for the whole step."""

    scheme: ButcherTableau
    accepts_tuple = True

    @property
    def branches(self) -> int:  # type: ignore[override]
        return self.scheme.stages

    @property
    def is_euler(self) -> bool:
        return self.scheme.stages == 1 and tuple(self.scheme.b) == (1.0,)

    def check_step(self, fn: StepFns, n: int) -> None:
        if isinstance(fn, tuple) and len(fn) != self.scheme.stages:
            raise ValueError(
                f"{self.scheme.name}: step {n} has {len(fn)} functions for {self.scheme.stages} inner stages"
            )

    def step(self, u: Tensor, fn: StepFns, gate: Gate = None) -> Tensor:
        return _rk_step(self.scheme, u, fn, gate)


class LMRunner(StepRunner):
    """u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + (eta_n / p_n) f_n(u_n); step 0 without a transition is forward Euler.

    The stochastic-depth form is the paper's (Lu et al. 2018, "stochastic training as stochastic dynamics": a weak
    approximation of dX = p(t) f dt + sqrt(p (1 - p) dt) f dB on the LM dynamics); the history u_{n-1} is always
    the real previous state, dropped step or not.

    :meth:`run_reference` is that update as written; :meth:`run` computes the same update in velocity form through
    :class:`odearch.nn.lm_combine.LMVelocity` (fewer passes over the state) unless ``fused`` is False.
    """

    scheme: LMScheme
    has_k = True
    fused = True
    """Run the velocity form (:mod:`odearch.nn.lm_combine`); False: :meth:`run_reference` (the same numbers)."""

    @property
    def needs_channels(self) -> bool:
        return self.scheme.per_channel

    def init_params(self, stage: Stage, n_steps: int, channels: int | None) -> None:
        """``lm_k``: one k per step 1..N-1 (step 0 is the starter or the transition), or one per channel."""
        if n_steps < 2:
            return
        scheme = self.scheme
        if scheme.per_channel and channels is None:
            raise ValueError("a per-channel LM coefficient needs channels= (the state's channel count)")
        shape = (n_steps - 1, channels) if scheme.per_channel else (n_steps - 1,)
        stage._lm_per_channel = scheme.per_channel  # decided here, not from lm_k's rank: fx traces no tensor branch
        if scheme.fixed_k is not None:
            stage.register_buffer("lm_k", torch.full(shape, float(scheme.fixed_k)))
        else:
            stage.lm_k = nn.Parameter(draw_lm_k(shape, *scheme.k_init))

    @staticmethod
    def coefficients(stage: Stage) -> Any:
        """k of LM steps 1..N-1 of ``stage`` (item m - 1: step m), each a scalar or, per channel of a (B, C, H, W)
        state, (C, 1, 1); in lm_k's own dtype. One ``unbind`` per forward pass: its backward stacks the steps' dk into
        lm_k's gradient at once, where indexing each step would add a ``select_backward`` (a zero tensor of lm_k's
        shape) and a gradient accumulation per step. A tuple, or an fx Proxy of one when traced (indexable, not
        iterable)."""
        return (stage.lm_k[:, :, None, None] if stage._lm_per_channel else stage.lm_k).unbind(0)

    def run(
        self, stage: Stage, fns: list[StepFns], start: Start, gates: list[StepGate] | None, noisy: bool
    ) -> tuple[Tensor, Tensor]:
        """Steps from ``start``; returns (u_N, u_{N-1})."""
        if not self.fused:
            return self.run_reference(stage, fns, start, gates, noisy)
        return self._run_velocity(stage, fns, start, gates, noisy)

    def run_reference(
        self, stage: Stage, fns: list[StepFns], start: Start, gates: list[StepGate] | None, noisy: bool
    ) -> tuple[Tensor, Tensor]:
        """u_{n+1} = end((1 - k_n) u_n + k_n u_{n-1} + r_n), r_n = (eta_n / p_n) f_n(u_n), as the paper writes it."""
        u, u_prev, first = start.u, start.history, start.first
        if first == 0:  # starter: one forward Euler step, u_{-1} := u_0
            r = _residual(fns, 0, u, gates)
            u_prev, u = u, stage.end_step(u if r is None else u + r, noisy)
            first = 1
        ks = self.coefficients(stage) if len(fns) > first else ()
        for n in range(first, len(fns)):
            k = ks[n - 1].to(u.dtype)  # the float32 parameter, cast to the state's dtype under autocast
            r = _residual(fns, n, u, gates)
            update = (1 - k) * u + k * u_prev
            u_prev, u = u, stage.end_step(update if r is None else update + r, noisy)
        return u, u_prev

    def _run_velocity(
        self, stage: Stage, fns: list[StepFns], start: Start, gates: list[StepGate] | None, noisy: bool
    ) -> tuple[Tensor, Tensor]:
        """:meth:`run_reference` in velocity form, v_{n+1} = r_n - k_n v_n, u_{n+1} = end(u_n + v_{n+1}), with v_n
        re-formed as u_n - u_{n-1} where the stage's end is not the identity (noise, post-activation)."""
        u, u_prev, first = start.u, start.history, start.first
        plain_end = not noisy and stage.post_act is None  # end_step is the identity: v_{n+1} = u_{n+1} - u_n as formed
        if first == 0:  # starter: one forward Euler step, u_{-1} := u_0
            v = _residual(fns, 0, u, gates)
            u_prev, u = u, stage.end_step(u if v is None else u + v, noisy)
            first = 1
        elif plain_end and stage.history_shortcut is None and len(fns) > 1:  # u_1 = P(u_0) + r_0, history P(u_0)
            v = _scaled(start.residual, start.gate)
        else:
            v = None
        assert u_prev is not None
        if len(fns) > first and (v is None or not plain_end):
            v = u - u_prev  # a dropped first step (zero velocity, k still gets its gradient), or a non-linear end
        ks = self.coefficients(stage) if len(fns) > first else ()
        for m in range(first, len(fns)):
            v = LMVelocity.apply(_residual(fns, m, u, gates), v, ks[m - 1])
            u_prev, u = u, stage.end_step(u + v, noisy)
            if not plain_end and m + 1 < len(fns):  # not after the last step: a traced stage ends on u (fx features)
                v = u - u_prev
        return u, u_prev


def _residual(fns: list[StepFns], n: int, u: Tensor, gates: list[StepGate] | None) -> Tensor | None:
    """r_n = (eta_n / p_n) f_n(u_n), None for a step stochastic depth dropped (f_n not evaluated)."""
    g = step_gate(gates, n)
    return None if is_dropped(g) else _scaled(fns[n](u), g)  # type: ignore[operator]


class MultistepRunner(StepRunner):
    """u_{n+s} = sum_{j<s} (-alpha_j u_{n+j} + beta_j f_{n+j}(u_{n+j})); the ``starter`` tableau fills missing
    history. With stochastic depth each f_n(u_n) is the realised (eta_n / p_n) f_n(u_n) wherever it enters (None,
    i.e. zero and not evaluated, when dropped)."""

    scheme: LinearMultistep

    def run(
        self, stage: Stage, fns: list[StepFns], start: Start, gates: list[StepGate] | None, noisy: bool
    ) -> tuple[Tensor, None]:
        lmm, u = self.scheme, start.u
        s = lmm.steps
        us = [u] if start.history is None else [start.history, u]  # states, oldest first
        fs = [_scaled(start.residual, start.gate)] if start.first else []  # fs[i] = f(us[i]), but the newest's
        for n in range(start.first, len(fns)):
            g = step_gate(gates, n)
            f_n = None if is_dropped(g) else fns[n](u)  # type: ignore[operator]
            fs.append(_scaled(f_n, g))
            if len(us) < s:  # not enough history: a starter step, its first evaluation being f_n
                u_new = _rk_step(lmm.starter, u, fns[n], gate=g, k1=f_n)
            else:
                u_new = u if lmm.alpha[s - 1] == -1.0 else torch.mul(u, -lmm.alpha[s - 1])
                for coef, v in zip((*(-a for a in lmm.alpha[: s - 1]), *lmm.beta[:s]), (*us[-s:-1], *fs[-s:])):
                    if coef != 0.0 and v is not None:
                        u_new = axpy(u_new, coef, v)
            u = stage.end_step(u_new, noisy)
            us, fs = [*us, u][-s:], fs[-s:]
        return u, None


class PolyRunner(StepRunner):
    """u_{n+1} = u_n + (eta_n / p_n)(F(u_n) + F(F(u_n)) + ...), ``degree`` terms (the gate is 1 without SD)."""

    scheme: PolyScheme

    def step(self, u: Tensor, fn: StepFns, gate: Gate = None) -> Tensor:
        if is_dropped(gate):
            return u
        out, term = u, u
        for _ in range(self.scheme.degree):
            term = fn(term)  # type: ignore[operator]
            out = axpy(out, 1.0, term, gate)
        return out


class RevRunner(StepRunner):
    """X_{n+1} = X_n + (eta_n / p_n) F(Y_n); Y_{n+1} = Y_n + (eta'_n / p_n) G(X_{n+1}), u = (X, Y) split along
    ``split_dim`` (gates 1 without SD); exactly invertible."""

    scheme: RevScheme
    branches = 2
    accepts_tuple = True
    split = 2
    invertible = True

    def check_step(self, fn: StepFns, n: int) -> None:
        if not (isinstance(fn, tuple) and len(fn) == 2):
            raise ValueError(f"rev scheme: step {n} needs a pair (F, G) of residual functions")

    def step(self, u: Tensor, fn: StepFns, gate: Any = None) -> Tensor:
        f, g = fn  # type: ignore[misc]
        gate_f, gate_g = gate or (None, None)
        x, y = u.chunk(2, dim=self.scheme.split_dim)
        if not is_dropped(gate_f):
            x = axpy(x, 1.0, f(y), gate_f)
        if not is_dropped(gate_g):
            y = axpy(y, 1.0, g(x), gate_g)
        return torch.cat((x, y), dim=self.scheme.split_dim)

    def inverse(self, fns: list[StepFns], u: Tensor) -> Tensor:
        """Y_n = Y_{n+1} - G(X_{n+1}), X_n = X_{n+1} - F(Y_n), steps reversed."""
        dim = self.scheme.split_dim
        for f, g in reversed(fns):  # type: ignore[misc]
            x, y = u.chunk(2, dim=dim)
            y = y - g(x)
            x = x - f(y)
            u = torch.cat((x, y), dim=dim)
        return u


register_step_runner(ButcherTableau, RungeKuttaRunner)
register_step_runner(LMScheme, LMRunner)
register_step_runner(LinearMultistep, MultistepRunner)
register_step_runner(PolyScheme, PolyRunner)
register_step_runner(RevScheme, RevRunner)


MEMORY_FORWARDS: dict[str, Callable[[Stage, Tensor], tuple[Tensor, Tensor | None]]] = {}
"""Activation-memory mode (``"recompute"``, ``"reversible"``) -> a Stage's forward pass in it, registered by
:mod:`odearch.nn.memory` (which imports this module, never the other way round)."""


# ------------------------------------------------------------------------------------------------------- Stage
class Stage(nn.Module):
    """An ODE integrator over residual functions: one network stage (see the module docstring for the updates).

    How each step combines states is its scheme family's :class:`StepRunner` (``self.runner``, from
    :data:`STEP_RUNNERS`); the Stage owns what every family shares: the transition step, stochastic depth, noise,
    the post-activation and the activation-memory mode.

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
        self.runner = step_runner(scheme)
        fns = list(fns)
        self._check_fns(fns, shortcut, history_shortcut)
        self._set_fns(fns)
        self.shortcut = shortcut
        self.history_shortcut = history_shortcut
        self.post_act = post_act
        self.runner.init_params(self, len(fns), channels)
        self._init_stochastic(len(fns), survival, drop_mode, noise_sigma)
        self.memory = "store"  # activation memory of the backward pass: odearch.nn.memory.set_memory

    @property
    def scheme(self) -> Scheme:
        """The scheme object (data from :mod:`odearch.schemes`) this stage integrates with."""
        return self.runner.scheme

    # ----------------------------------------------------------------------------------------------- construction
    def _check_fns(self, fns: list[StepFns], shortcut: Any, history_shortcut: Any) -> None:
        """Fail in the constructor on steps that do not fit the transition or the scheme (``runner.check_step``)."""
        if not fns:
            raise ValueError("a Stage needs at least one residual function")
        if history_shortcut is not None and shortcut is None:
            raise ValueError("history_shortcut projects the LM history across a transition: it needs a shortcut")
        if shortcut is not None and isinstance(fns[0], tuple):
            raise ValueError("the transition step (with a shortcut) takes a single residual function, not a tuple")
        for n in range(int(shortcut is not None), len(fns)):
            self.runner.check_step(fns[n], n)

    def _set_fns(self, fns: list[StepFns]) -> None:
        """Hold the residual functions: ``blocks`` (a ModuleList, a ModuleList per tuple) or plain callables."""
        modules = [_as_module(fn) for fn in fns]
        if all(m is not None for m in modules):
            self.blocks = nn.ModuleList(modules)
            self._plain_fns: list[StepFns] | None = None
        elif any(isinstance(fn, nn.Module) for fn in fns):
            raise TypeError("mix of nn.Module and plain callables in one Stage: use one kind")
        else:
            self._plain_fns = fns

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
        check_noise_sigma(noise_sigma)
        if noise_sigma is not None:
            noise_sigma = float(noise_sigma) or None
        self.survival: tuple[float, ...] | None = survival
        self.drop_mode = drop_mode
        self.noise_sigma: float | None = noise_sigma

    @property
    def holds_modules(self) -> bool:
        """True when the residual functions are ``nn.Module`` s (held in ``blocks``), False for plain callables."""
        return self._plain_fns is None

    @property
    def step_fns(self) -> list[StepFns]:
        """The residual function(s) of each step, in order."""
        if self._plain_fns is not None:
            return self._plain_fns
        return [tuple(m) if isinstance(m, nn.ModuleList) else m for m in self.blocks]

    def __len__(self) -> int:
        return len(self.step_fns)

    # ----------------------------------------------------------------------------------------------------- forward
    def forward(self, u: Tensor, return_history: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        """Integrate u_0 -> u_N. u: the state, (B, C, H, W) in a network, any shape for plain callables.

        ``return_history=True`` returns :meth:`forward_with_history`'s pair.
        """
        out = self.forward_with_history(u)
        return out if return_history else out[0]

    def forward_with_history(self, u: Tensor) -> tuple[Tensor, Tensor | None]:
        """Integrate u_0 -> u_N and also return the LM history u_{N-1} (None for other schemes).

        A stage needs no state of the previous one: the history of a transition's u_1 is u_0 (through P or
        ``history_shortcut``), and a stage without a transition starts with a one-step starter.
        """
        # recompute or reversible (odearch.nn.memory), in eager mode (a traced or compiled graph stores activations)
        if self.memory != "store" and torch.is_grad_enabled() and not _tracing():
            return MEMORY_FORWARDS[self.memory](self, u)
        return self.integrate(u, self.step_fns)

    def integrate(self, u: Tensor, fns: list[StepFns]) -> tuple[Tensor, Tensor | None]:
        """(u_N, LM history) over ``fns``: the stage's own functions, or wrappers of them (recomputation)."""
        gates, noisy = self.draw_stochastic(u)
        start = Start(u) if self.shortcut is None else self.transition_step(u, fns[0], step_gate(gates, 0), noisy)
        u_n, history = self.runner.run(self, fns, start, gates, noisy)
        return self.zero_grads_of_dropped(u_n, gates), history

    def zero_grads_of_dropped(self, u: Tensor, gates: list[StepGate] | None) -> Tensor:
        """u, tied to the parameters of the blocks this pass skipped, so their gradient is zeros, not None.

        Every parameter then gets a gradient on every step (timm's test of a model's backward; DDP without
        ``find_unused_parameters``); the skipped blocks are still not evaluated.
        """
        if gates is None or not torch.is_grad_enabled() or self._plain_fns is not None:
            return u
        params = [p for g, m in zip(gates, self.blocks) for p in _dropped_params(g, m) if p.requires_grad]
        return _ZeroGradTie.apply(u, *params) if params else u

    def transition_step(self, u: Tensor, fn: StepFns, gate: Gate, noisy: bool) -> Start:
        """The plain step u_1 = P(u_0) + (eta_0 / p_0) f_0(u_0) (P(u_0) when dropped), history u_0 projected."""
        p = self.shortcut(u)  # type: ignore[misc]
        r = None if is_dropped(gate) else fn(u)  # type: ignore[operator]
        history = p if self.history_shortcut is None else self.history_shortcut(u)  # u_0, one step back
        u_1 = self.end_step(p if r is None else axpy(p, 1.0, r, gate), noisy)  # last: a traced stage ends on u
        return Start(u_1, 1, history, r, gate)

    def end_step(self, u: Tensor, noisy: bool = False) -> Tensor:
        """Finish a step: + sigma sqrt(dt) xi_n when ``noisy`` (training with noise_sigma), then the post-act."""
        if noisy:
            assert self.noise_sigma is not None
            u = add_noise(u, self.noise_sigma, self.NOISE_DT)
        return u if self.post_act is None else self.post_act(u)

    def draw_stochastic(self, u: Tensor) -> tuple[list[StepGate] | None, bool]:
        """(the stochastic-depth gates, whether noise is injected) of this forward pass: (None, False) in eval."""
        if self.training and (self.survival is not None or self.noise_sigma is not None):
            return self._draw_gates(u), self.noise_sigma is not None
        return None, False

    def _draw_gates(self, u: Tensor) -> list[StepGate] | None:
        """This forward pass's stochastic-depth factors, one per step (None for a step with p_n = 1); a family with
        ``split`` > 1 (RevNet's F, G) gets a tuple per step after the transition, drawn pass by pass."""
        if self.survival is None:
            return None
        if self.drop_mode == "batch" and not _tracing():  # CPU draws from the global RNG: no device sync, ranks
            draw: Callable[[float], Gate] = batch_gate  # stay in step; a dropped block is skipped
        elif self.drop_mode == "batch":  # compile / trace / export: a 0-d tensor gate, one graph for every draw
            draw = partial(batch_gate_tensor, u)
        else:
            draw = partial(sample_gate, u)
        gates: list[StepGate] = [None if p == 1.0 else draw(p) for p in self.survival]
        if self.runner.split > 1:  # the transition step keeps one draw
            first = int(self.shortcut is not None)
            more = [
                [None if p == 1.0 else draw(p) for p in self.survival[first:]] for _ in range(self.runner.split - 1)
            ]
            gates[first:] = list(zip(gates[first:], *more))
        return gates

    # ----------------------------------------------------------------------------------------------------- inverse
    def inverse(self, u: Tensor) -> Tensor:
        """u_N -> u_0 for an invertible (RevNet) stage: Y_n = Y_{n+1} - G(X_{n+1}), X_n = X_{n+1} - F(Y_n)."""
        if self.runner.invertible and (self.shortcut is not None or self.post_act is not None):
            raise ValueError("a stage with a transition step or a post-activation is not invertible")
        return self.runner.inverse(self.step_fns, u)  # raises for a family that is not invertible

    def extra_repr(self) -> str:
        out = f"scheme={self.scheme.name}, steps={len(self)}, transition={self.shortcut is not None}"
        if self.survival is not None:
            out += f", survival=({self.survival[0]:.3g}..{self.survival[-1]:.3g}), drop_mode={self.drop_mode}"
        if self.noise_sigma is not None:
            out += f", noise_sigma={self.noise_sigma:g}"
        return out


def _dropped_params(gate: StepGate, module: nn.Module) -> list[nn.Parameter]:
    """The parameters of the residual function(s) of one step that ``gate`` dropped (RevNet: per F / G)."""
    if isinstance(gate, tuple):
        parts = list(module) if isinstance(module, nn.ModuleList) else [module]
        return [p for g, part in zip(gate, parts) if is_dropped(g) for p in part.parameters()]
    return list(module.parameters()) if is_dropped(gate) else []


class _ZeroGradTie(torch.autograd.Function):
    """Identity on u whose backward also gives zero gradients to the tied parameters (no NaN from 0 * inf)."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, *params: Tensor) -> Tensor:
        ctx.shapes = [(p.shape, p.dtype, p.device) for p in params]
        return u.clone()  # a fresh tensor: later in-place ops (ReLU(inplace=True)) stay legal

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        return (grad, *(torch.zeros(s, dtype=d, device=dev) for s, d, dev in ctx.shapes))


def lm_coefficients(model: nn.Module) -> dict[str, list[float] | list[list[float]]]:
    """The LM coefficients k_n of every LM stage of ``model``, keyed by the stage's module name.

    Entry m of a stage's list is k of the stage's step m + 1 (step 0 is the starter or transition step).
    """
    stages = ((name, m.lm_k) for name, m in model.named_modules() if isinstance(m, Stage) and hasattr(m, "lm_k"))
    return lm_k_by_stage(stages)
