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
a plain residual step for every scheme, u_1 = P(u_0) + f_0(u_0), and the LM history is reset to the projected input,
u_prev := P(u_0) (or, with a ``history_shortcut`` Q and an incoming history, u_prev := Q(u_{-1})). Hence ``lm_k``
holds one coefficient for each of the steps 1..N-1 of a stage.

An optional ``post_act`` sigma turns every step into u_{n+1} = sigma(update), the post-activation ResNet of He et
al. (2015), whose ReLU follows the addition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..schemes import ButcherTableau, LinearMultistep, LMScheme, PolyScheme, RevScheme, Scheme, get_scheme

ResidualFn = Callable[[Tensor], Tensor]
StepFns = ResidualFn | tuple[ResidualFn, ...]


def _axpy(u: Tensor, coef: float, v: Tensor) -> Tensor:
    """u + coef * v as one kernel (and no multiply when coef is 1)."""
    return u + v if coef == 1.0 else torch.add(u, v, alpha=coef)


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
        history_shortcut: Q, projecting an incoming u_{-1} across a transition (LM-ResNeXt); needs ``shortcut``.
        post_act: sigma applied after every step (post-activation ResNet); None for pre-activation networks.
        channels: number of channels of the state, needed for a per-channel LM coefficient.
    """

    def __init__(
        self,
        scheme: str | Scheme,
        fns: Sequence[StepFns],
        *,
        shortcut: nn.Module | None = None,
        history_shortcut: nn.Module | None = None,
        post_act: nn.Module | None = None,
        channels: int | None = None,
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

    def _init_lm_k(self, n_steps: int, channels: int | None) -> None:
        scheme = self.scheme
        assert isinstance(scheme, LMScheme)
        if scheme.per_channel and channels is None:
            raise ValueError("a per-channel LM coefficient needs channels= (the state's channel count)")
        shape = (n_steps, channels) if scheme.per_channel else (n_steps,)
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
    def forward(self, u: Tensor) -> Tensor:
        """Integrate u_0 -> u_N. u: the state, (B, C, H, W) in a network, any shape for plain callables."""
        return self.forward_with_history(u)[0]

    def forward_with_history(self, u: Tensor, u_prev: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Integrate u_0 -> u_N and also return the LM history u_{N-1} (None for other schemes).

        ``u_prev`` is the previous stage's u_{-1}; it is used only through ``history_shortcut`` at a transition.
        """
        fns = self.step_fns
        first = 0
        history: Tensor | None = None
        f_hist: list[Tensor] = []
        if self.shortcut is not None:
            p = self.shortcut(u)
            r = fns[0](u)
            u_new = self._act(p + r)
            if self.history_shortcut is not None and u_prev is not None:
                history = self.history_shortcut(u_prev)
            else:
                history = p
            u, first, f_hist = u_new, 1, [r]
        scheme = self.scheme
        if isinstance(scheme, ButcherTableau):
            for fn in fns[first:]:
                u = self._act(self._rk_step(u, fn, scheme))
            return u, None
        if isinstance(scheme, LMScheme):
            return self._run_lm(u, history, fns, first)
        if isinstance(scheme, LinearMultistep):
            return self._run_multistep(u, history, f_hist, fns, first, scheme), None
        if isinstance(scheme, PolyScheme):
            for fn in fns[first:]:
                u = self._act(self._poly_step(u, fn, scheme.degree))
            return u, None
        if isinstance(scheme, RevScheme):
            for fn in fns[first:]:
                u = self._act(self._rev_step(u, fn, scheme.split_dim))
            return u, None
        raise TypeError(f"no step for scheme {scheme!r}")  # unreachable: get_scheme validated it

    def _act(self, u: Tensor) -> Tensor:
        return u if self.post_act is None else self.post_act(u)

    # ----------------------------------------------------------------------------------------- one step per family
    @staticmethod
    def _rk_step(u: Tensor, fn: StepFns, tab: ButcherTableau, k1: Tensor | None = None) -> Tensor:
        """k_i = f_i(u + sum_j a_ij k_j); u_{n+1} = u + sum_i b_i k_i. ``k1``: f(u) when already evaluated."""
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
                out = _axpy(out, b_i, k_i)
        return out

    def _lm_coefficient(self, m: int, u: Tensor) -> Tensor:
        """k of LM step m (1-based within the stage), shaped to broadcast against u: a scalar or (C, 1, ..., 1)."""
        k = self.lm_k[m - 1].to(u.dtype)  # autocast leaves lerp alone: match the state's dtype
        if k.dim() == 1:
            k = k.view(-1, *([1] * (u.dim() - 2)))
        return k

    def _run_lm(self, u: Tensor, u_prev: Tensor | None, fns: list[StepFns], first: int) -> tuple[Tensor, Tensor]:
        """u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n); step 0 without a transition is forward Euler."""
        if first == 0:  # starter: one forward Euler step, u_{-1} := u_0
            u_prev, u = u, self._act(u + fns[0](u))
            first = 1
        assert u_prev is not None
        for m in range(first, len(fns)):
            k = self._lm_coefficient(m, u)
            # (1 - k) u + k u_prev == lerp(u, u_prev, k): one fused kernel
            u_prev, u = u, self._act(torch.lerp(u, u_prev, k) + fns[m](u))
        return u, u_prev

    def _run_multistep(
        self,
        u: Tensor,
        u_prev: Tensor | None,
        f_hist: list[Tensor],
        fns: list[StepFns],
        first: int,
        lmm: LinearMultistep,
    ) -> Tensor:
        """u_{n+s} = sum_{j<s} (-alpha_j u_{n+j} + beta_j f_{n+j}(u_{n+j})); the starter fills missing history."""
        s = lmm.steps
        us = [u] if u_prev is None else [u_prev, u]  # states, oldest first
        fs = list(f_hist)  # fs[i] = f(us[i]), known for all but the newest state
        for n in range(first, len(fns)):
            f_n = fns[n](u)
            fs.append(f_n)
            if len(us) < s:  # not enough history: a starter step, its first evaluation being f_n
                u_new = self._rk_step(u, fns[n], lmm.starter, k1=f_n)
            else:
                u_new = u if lmm.alpha[s - 1] == -1.0 else torch.mul(u, -lmm.alpha[s - 1])
                for coef, v in zip((*(-a for a in lmm.alpha[: s - 1]), *lmm.beta[:s]), (*us[-s:-1], *fs[-s:])):
                    if coef != 0.0:
                        u_new = _axpy(u_new, coef, v)
            u = self._act(u_new)
            us, fs = [*us, u][-s:], fs[-s:]
        return u

    @staticmethod
    def _poly_step(u: Tensor, fn: StepFns, degree: int) -> Tensor:
        """u_{n+1} = u_n + F(u_n) + F(F(u_n)) + ... (degree terms)."""
        out, term = u, u
        for _ in range(degree):
            term = fn(term)
            out = out + term
        return out

    @staticmethod
    def _rev_step(u: Tensor, fn: StepFns, dim: int) -> Tensor:
        """X_{n+1} = X_n + F(Y_n); Y_{n+1} = Y_n + G(X_{n+1})."""
        f, g = fn  # type: ignore[misc]
        x, y = u.chunk(2, dim=dim)
        x = x + f(y)
        y = y + g(x)
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
        return f"scheme={self.scheme.name}, steps={len(self)}, transition={self.shortcut is not None}"


def lm_coefficients(model: nn.Module) -> dict[str, list[float] | list[list[float]]]:
    """The LM coefficients k_n of every LM stage of ``model``, keyed by the stage's module name.

    Entry m of a stage's list is k of the stage's step m + 1 (step 0 is the starter or transition step).
    """
    out: dict[str, list[float] | list[list[float]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Stage) and hasattr(module, "lm_k"):
            out[name] = module.lm_k.detach().float().cpu().tolist()
    return out
