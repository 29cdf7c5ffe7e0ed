"""The dense table: the learned weight matrix of a DenseResNet and what each step means as a multistep method.

DenseResNet's step n computes u_{n+1} = sum_{j<=n} w_{nj} u_j + f_n(u_n), w_{nj} = k_{nj} / sum_j k_{nj}
(:mod:`odearch.schemes.dense`). Frozen at its learned weights, step n is the linear (n + 1)-step method
alpha = (-w_{n0}, ..., -w_{nn}, 1), beta = (0, ..., 0, 1, 0) (f_n = dt g). Each row of the step table reads one step:

* ``k_sum`` = sum_j k_{nj}, ``clamped``: |k_sum| < ``min_abs_sum``, where the normalisation's guard divides by
  sign(k_sum) min_abs_sum instead and the weights no longer sum to one (:func:`odearch.schemes.dense.denominator`).
* ``w_newest`` = w_{nn} (1 for forward Euler, ResNet), ``w_oldest`` = w_{n0} (the stage input, P(u_0) after a
  transition), ``alpha``: the effective multistep coefficients, oldest first.
* ``c`` = rho'(1) = 1 + sum_j (n - j) w_{nj}: the step is a consistent scheme for c u' = g(u); ``effective_step`` =
  dt / c, the step along u' = g taken relative to a ResNet block; ``consistent``: rho(1) = 0 and c = 1 (consistent
  with u' = g itself, e.g. forward Euler).
* ``order``: the order of the frozen method for u' = g (0: consistent with c u' = g only, c != 1; -1: not even
  rho(1) = 0, a clamped row), from the order conditions as for :class:`odearch.schemes.LinearMultistep`.
* ``max_abs_root``, ``zero_stable``: the root condition on rho(xi) = xi^(n+1) - sum_j w_{nj} xi^j (always met by
  convex weights, as at the official initialisation).

``depth`` is the global block index of step n (block 0 of every stage counted, as in :mod:`.lm_table`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..schemes.dense import DenseRows, dense_step

DENSE_COLUMNS = (
    "stage",
    "step",
    "depth",
    "states",
    "k_sum",
    "clamped",
    "w_newest",
    "w_oldest",
    "c",
    "effective_step",
    "consistent",
    "order",
    "max_abs_root",
    "zero_stable",
    "alpha",
)
"""The columns of a step row, in order (a row may start with an extra ``run`` column)."""

WEIGHT_COLUMNS = ("stage", "step", "state", "k", "w")
"""The columns of the long-form weight matrix (one row per k_{nj})."""


def dense_table(dense_by_stage: Mapping[str, DenseRows], dt: float = 1.0, min_abs_sum: float = 1e-3) -> list[dict]:
    """One row per dense step (stages in the mapping's order; steps 1 .. N-1 of each), keys :data:`DENSE_COLUMNS`.

    Args:
        dense_by_stage: stage name -> the k rows of its steps 1 .. N-1 (as ``odearch.nn.dense_coefficients``).
        dt: the step of the ODE reading; only ``effective_step`` scales with it (dt / c).
        min_abs_sum: the normalisation's guard of the scheme the k come from (default that of ``dense``).
    """
    rows, depth = [], 0
    for stage, k_rows in dense_by_stage.items():
        for n, k in enumerate(k_rows, start=1):
            s = dense_step(k, min_abs_sum)
            w = s["weights"]
            rows.append(
                {
                    "stage": stage,
                    "step": n,
                    "depth": depth + n,
                    "states": n + 1,
                    "k_sum": s["row_sum"],
                    "clamped": s["clamped"],
                    "w_newest": w[-1],
                    "w_oldest": w[0],
                    "c": s["c"],
                    "effective_step": dt / s["c"],
                    "consistent": s["consistent"],
                    "order": s["order"],
                    "max_abs_root": s["max_abs_root"],
                    "zero_stable": s["zero_stable"],
                    "alpha": " ".join(f"{a:.6g}" for a in s["alpha"]),
                }
            )
        depth += len(k_rows) + 1  # block 0 of the stage carries no k
    return rows


def weight_rows(dense_by_stage: Mapping[str, DenseRows], min_abs_sum: float = 1e-3) -> list[dict]:
    """The weight matrix in long form: one row (stage, step n, state j, k_{nj}, w_{nj}) per learned k."""
    out = []
    for stage, k_rows in dense_by_stage.items():
        for n, k in enumerate(k_rows, start=1):
            w = dense_step(k, min_abs_sum)["weights"]
            out += [{"stage": stage, "step": n, "state": j, "k": k[j], "w": w[j]} for j in range(n + 1)]
    return out


def weight_matrix(k_rows: DenseRows, min_abs_sum: float = 1e-3) -> list[list[float]]:
    """The full N x N weight matrix of a stage, row n: w_{n0} .. w_{nn} then NaN; row 0 is the plain first step
    (weight 1 on u_0, or on P(u_0) after a transition)."""
    size = len(k_rows) + 1
    rows = [[1.0], *(dense_step(k, min_abs_sum)["weights"] for k in k_rows)]
    return [row + [float("nan")] * (size - len(row)) for row in rows]


def format_matrices(dense_by_stage: Mapping[str, DenseRows], min_abs_sum: float = 1e-3) -> str:
    """Each stage's weight matrix w_{nj} as text (row n: step n, column j: state u_j; row 0 the plain first step)."""
    lines = []
    for stage, k_rows in dense_by_stage.items():
        matrix = weight_matrix(k_rows, min_abs_sum)
        lines.append(f"{stage}: weights w_nj = k_nj / sum_j k_nj (row: step n, column: state u_j)")
        lines.append("  n\\j " + "".join(f"{j:>8d}" for j in range(len(matrix))))
        for n, row in enumerate(matrix):
            lines.append(f"{n:5d} " + "".join(f"{w:8.4f}" for w in row if w == w))
        lines.append("")
    return "\n".join(lines)


_ALARM = {"clamped": True, "zero_stable": False}  # the boolean value printed in capitals: the one to look at


def _cell(column: str, value: object) -> str:
    if isinstance(value, bool):
        text = "yes" if value else "no"
        return text.upper() if _ALARM.get(column) is value else text
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


_HEADERS = {
    "effective_step": "step/dt",
    "max_abs_root": "max|xi|",
    "zero_stable": "stable",
    "w_newest": "w_nn",
    "w_oldest": "w_n0",
    "consistent": "cons.",
    "states": "m",
}


def format_dense_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of the step rows (``alpha`` left to the CSV), with a legend line."""
    if not rows:
        return "(no dense steps)"
    columns = [c for c in rows[0] if c != "alpha"]
    table = [[_HEADERS.get(c, c) for c in columns]] + [[_cell(c, row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    legend = (
        "step n: u_{n+1} = sum_j w_nj u_j + f_n(u_n), m = n + 1 states; c = rho'(1) = 1 + sum_j (n-j) w_nj: consistent "
        "with c u' = g(u); step/dt = 1/c; order for u' = g; xi = roots of xi^(n+1) - sum_j w_nj xi^j"
    )
    return "\n".join([*lines, legend])


def write_rows(rows: Sequence[dict], columns: Sequence[str], path: str | Path) -> Path:
    """Write ``rows`` as CSV (keys not in ``columns``, such as ``run``, first); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = [key for key in rows[0] if key not in columns] if rows else []
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*extra, *columns])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_dense_report(runs: Mapping[str, Mapping[str, DenseRows]], out: Path, dt: float = 1.0) -> str:
    """Write ``dense_table.csv`` (one row per step), ``dense_weights.csv`` (one row per k_{nj}) and
    ``dense_weights.png`` (the weight matrices as heatmaps) for ``runs`` (run name -> its k rows by stage); returns
    the text: per run the weight matrices, then the step table."""
    from .plots import plot_dense_weights  # matplotlib only when plotting

    steps = [{"run": run} | row for run, by_stage in runs.items() for row in dense_table(by_stage, dt)]
    write_rows(steps, DENSE_COLUMNS, out / "dense_table.csv")
    weights = [{"run": run} | row for run, by_stage in runs.items() for row in weight_rows(by_stage)]
    write_rows(weights, WEIGHT_COLUMNS, out / "dense_weights.csv")
    plot_dense_weights(
        {run: {s: weight_matrix(k) for s, k in by_stage.items()} for run, by_stage in runs.items()},
        out / "dense_weights.png",
    )
    matrices = [f"run {run}\n{format_matrices(by_stage)}" for run, by_stage in runs.items()]
    return "\n".join([*matrices, format_dense_table(steps)])
