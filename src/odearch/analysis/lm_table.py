"""The LM table: what each learned k_n of an LM-ResNet means as a numerical scheme (plain data, no torch).

LM-ResNet's block n computes u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n), with f_n = dt g. Its modified
equation is (1 + k_n) u' + (1 - k_n)(dt/2) u'' = g(u) (paper, "Modified equations"; derived in
:mod:`odearch.analysis.modified_equation`). Each row of the table reads one k_n through that lens:

* ``one_plus_k`` = 1 + k: the first-order factor; the step is a consistent scheme for (1 + k) u' = g.
* ``half_one_minus_k`` = (1 - k)/2: the coefficient of dt u'' (ResNet, k = 0: 1/2).
* ``effective_step`` = 1/(1 + k): the step along the flow u' = g that the block takes, relative to a ResNet block
  (k = 0: 1), because (1 + k) u' = g is u' = g/(1 + k): for k in (-1, 0) the block transports further than a
  ResNet block with the same residual. Negative for k < -1 (the scheme then runs the flow backwards).
* ``second_order_weight`` = (1 - k)/(2 (1 + k)): the u'' coefficient relative to the u' coefficient, i.e. the
  inertia of the modified equation (ResNet 1/2; grows as k -> -1).
* ``gamma_dt`` = gamma dt = -(1 + k)/k: the damping of the second-order flow X'' + gamma X' = f whose two-step
  discretisation has k = -1/(1 + gamma dt). Positive (damped) for k in (-1, 0); +inf at k = 0 (the overdamped,
  first-order limit, ResNet, taken from k < 0); negative (anti-damped, energy-injecting) for k > 0 and for k < -1.
* ``root_principal``, ``root_parasitic``: the roots of rho(xi) = xi^2 - (1 - k) xi - k, computed with
  ``numpy.roots``; they are 1 and -k.
* ``max_abs_root`` and ``zero_stable``: the root condition (all |xi| <= 1, those with |xi| = 1 simple). It holds for
  k in (-1, 1]; k = -1 fails (double root xi = 1), as does |k| > 1.

Stages: k values belong to blocks 1..N-1 of a stage; block 0 is a plain residual (or down-sampling transition)
step, so ``block`` = position in the stage's k list + 1, and ``depth`` (the global block index) counts block 0 of
every stage. Per-channel k (a list per block): the row reports the channel mean k (and the derived columns at the
mean), ``k_min``/``k_max`` over channels, ``max_abs_root`` over all channels, and ``zero_stable`` only if every
channel is zero-stable.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..schemes.lm import KValues, lm_k_by_stage

COLUMNS = (
    "stage",
    "block",
    "depth",
    "channels",
    "k",
    "k_min",
    "k_max",
    "one_plus_k",
    "half_one_minus_k",
    "effective_step",
    "second_order_weight",
    "gamma_dt",
    "root_principal",
    "root_parasitic",
    "max_abs_root",
    "zero_stable",
)
"""The columns of a row, in order (a row may start with an extra ``run`` column, see :func:`write_csv`)."""

_ROOT_TOL = 1e-9  # two roots closer than this count as repeated; |xi| within this of 1 counts as on the unit circle


def characteristic_roots(k: float) -> tuple[float, float]:
    """The roots of rho(xi) = xi^2 - (1 - k) xi - k, principal (nearest 1) first; analytically 1 and -k.

    Raises:
        ArithmeticError: if ``numpy.roots`` disagrees with the closed form (a numerical sanity check).
    """
    roots = np.roots([1.0, -(1.0 - k), -k])
    roots = np.real_if_close(roots, tol=1e6)  # a double root (k = -1) may come back with a ~1e-8 imaginary part
    principal, parasitic = sorted((complex(r) for r in roots), key=lambda r: abs(r - 1.0))
    if abs(principal - 1.0) > 1e-6 or abs(parasitic + k) > 1e-6:
        raise ArithmeticError(f"numpy.roots gave {roots} for k = {k}, expected 1 and {-k}")
    return principal.real, parasitic.real


def is_zero_stable(k: float) -> bool:
    """The root condition for rho(xi) = xi^2 - (1 - k) xi - k: |xi| <= 1, and unit-modulus roots simple.

    True exactly for -1 < k <= 1 (k = 1: roots 1 and -1, distinct; k = -1: double root 1).
    """
    roots = characteristic_roots(k)
    if max(abs(r) for r in roots) > 1.0 + _ROOT_TOL:
        return False
    on_circle = [r for r in roots if abs(abs(r) - 1.0) <= _ROOT_TOL]
    return not (len(on_circle) == 2 and abs(on_circle[0] - on_circle[1]) <= _ROOT_TOL)


def _ratio(numerator: float, denominator: float) -> float:
    """numerator/denominator, +-inf (sign of the numerator) for a zero denominator."""
    if denominator == 0.0:
        return math.copysign(math.inf, numerator) if numerator != 0.0 else math.nan
    return numerator / denominator


def _scheme_columns(k: float, dt: float) -> dict[str, float]:
    """The modified-equation columns for one k (see the module docstring for each formula)."""
    principal, parasitic = characteristic_roots(k)
    return {
        "one_plus_k": 1.0 + k,
        "half_one_minus_k": (1.0 - k) / 2.0,
        "effective_step": dt * _ratio(1.0, 1.0 + k),
        "second_order_weight": _ratio(1.0 - k, 2.0 * (1.0 + k)),
        # k = -1/(1 + gamma dt)  <=>  gamma dt = -(1 + k)/k; at k = 0 the limit from k < 0, +inf
        "gamma_dt": math.inf if k == 0.0 else -(1.0 + k) / k,
        "root_principal": principal,
        "root_parasitic": parasitic,
    }


def lm_row(stage: str, block: int, depth: int, k: float | Sequence[float], dt: float = 1.0) -> dict:
    """One row of the LM table for a block's k (a scalar, or one value per channel)."""
    ks = [float(v) for v in np.atleast_1d(np.asarray(k, dtype=np.float64)).ravel()]
    if not ks:
        raise ValueError(f"{stage} block {block}: empty k")
    k_mean = float(np.mean(ks))
    row = {"stage": stage, "block": block, "depth": depth, "channels": len(ks) if np.ndim(k) else 1}
    row |= {"k": k_mean, "k_min": min(ks), "k_max": max(ks)}
    row |= _scheme_columns(k_mean, dt)
    row["max_abs_root"] = max(max(abs(r) for r in characteristic_roots(v)) for v in ks)
    row["zero_stable"] = all(is_zero_stable(v) for v in ks)
    return row


def lm_table(k_by_stage: dict[str, KValues], dt: float = 1.0) -> list[dict]:
    """One row per LM block, stages in the dict's order.

    Args:
        k_by_stage: stage name -> the k of its blocks 1..N-1 (floats, or one list of per-channel floats per block),
            as returned by ``odearch.nn.lm_coefficients``.
        dt: the step of the ODE reading; only ``effective_step`` scales with it (dt / (1 + k)).

    Returns:
        Rows with the keys :data:`COLUMNS`.
    """
    rows, depth = [], 0
    for stage, ks in k_by_stage.items():
        for position, k in enumerate(ks):
            rows.append(lm_row(stage, position + 1, depth + position + 1, k, dt))
        depth += len(ks) + 1  # block 0 of the stage carries no k
    return rows


def stage_starts(k_by_stage: dict[str, KValues]) -> dict[str, int]:
    """The global depth of block 0 of each stage (the stage boundaries of a k-against-depth plot)."""
    starts, depth = {}, 0
    for stage, ks in k_by_stage.items():
        starts[stage] = depth
        depth += len(ks) + 1
    return starts


def _columns(rows: Sequence[dict]) -> list[str]:
    extra = [key for key in rows[0] if key not in COLUMNS] if rows else []
    return extra + list(COLUMNS)


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write the rows as CSV (extra keys such as ``run`` first, then :data:`COLUMNS`); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


_HEADERS = {
    "half_one_minus_k": "(1-k)/2",
    "one_plus_k": "1+k",
    "effective_step": "step",
    "second_order_weight": "w2/w1",
    "gamma_dt": "gamma*dt",
    "root_principal": "xi_1",
    "root_parasitic": "xi_2",
    "max_abs_root": "max|xi|",
    "zero_stable": "stable",
    "channels": "C",
}


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of the rows (one line per block), with a legend line."""
    if not rows:
        return "(no LM blocks)"
    columns = _columns(rows)
    table = [[_HEADERS.get(c, c) for c in columns]] + [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    legend = (
        "modified eq. (1+k) u' + (1-k)(dt/2) u'' = g(u); step = dt/(1+k) relative to ResNet; "
        "w2/w1 = (1-k)/(2(1+k)); gamma*dt = -(1+k)/k; xi = roots of xi^2-(1-k)xi-k"
    )
    channels = "C = how many k the block has: 1 (one k per block) or its channels (one k each; k is their mean)"
    return "\n".join([*lines, legend, channels])


def k_by_stage_from_state_dict(state: dict[str, object], suffix: str = ".lm_k") -> dict[str, KValues]:
    """The k values from a state dict alone: every key ``<stage>.lm_k``, shape (n,) or (n, C), keyed by ``<stage>``.

    Values may be numpy arrays or tensors (anything ``numpy.asarray`` takes, after ``.detach().cpu()`` if present).
    Keys keep the state dict's order, which is the module order.
    """
    return lm_k_by_stage(state.items(), suffix)


def analyze_model(model: object, dt: float = 1.0) -> list[dict]:
    """The LM table of a model, from ``odearch.nn.lm_coefficients(model)`` (stage module name -> k values).

    Raises:
        ValueError: if the model has no LM coefficients.
    """
    from ..nn import lm_coefficients  # torch only when a model is analysed

    k_by_stage = lm_coefficients(model)
    if not any(len(ks) for ks in k_by_stage.values()):
        raise ValueError(f"{type(model).__name__} has no LM coefficients (not an LM-architecture network)")
    return lm_table(k_by_stage, dt)
