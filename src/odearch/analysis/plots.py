"""Plots of learned LM coefficients k_n and DenseResNet weights (matplotlib, PNG files).

* :func:`plot_k_vs_depth`: k_n against the global block index, stages separated by vertical lines, several runs
  overlaid; per-channel k is drawn as the channel mean with a min-max band.
* :func:`plot_k_over_epochs`: k_n during training, one panel per stage, from the ``lm_k`` entries of a run's
  ``metrics.jsonl``, epoch 0 (before training) from ``lm_k_init.json`` when the run has it; a point per
  epoch, integer epoch ticks. One run: a line per LM block, coloured by depth. Several runs: per run the stage mean over
  blocks with a min-max band, so that the panels stay readable.
* :func:`plot_dense_weights`: the weight matrices w_{nj} of DenseResNet stages as heatmaps.

Reference lines: k = 0 (ResNet, forward Euler) and k = -1 (the zero-stability limit: double root xi = 1).

Figures are built as ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, without pyplot, so importing
this module never changes the caller's backend and works without a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .lm_table import KValues, lm_table, stage_starts

_STAGE_MARKERS = ("o", "s", "^", "D", "v", "P")


def _reference_lines(ax: Axes) -> None:
    """k = 0 is ResNet; k = -1 is where the LM step stops being zero-stable."""
    ax.axhline(0.0, color="0.5", lw=0.8, ls=":", zorder=0)
    ax.axhline(-1.0, color="tab:red", lw=0.8, ls=":", zorder=0)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")  # a pyplot-free Figure renders with the Agg canvas
    return path


def _colors(count: int) -> list:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(count)]


def plot_k_vs_depth(runs: Mapping[str, dict[str, KValues]], path: str | Path, title: str | None = None) -> Path:
    """k_n against depth (global block index, counting the k-less block 0 of every stage).

    Args:
        runs: run name -> ``k_by_stage`` (stage name -> k of blocks 1..N-1, scalar or per channel).
        path: the PNG to write.
        title: figure title (default: a description).

    Returns:
        The path written.
    """
    if not runs:
        raise ValueError("plot_k_vs_depth: no runs")
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    single = len(runs) == 1
    stage_colors = _colors(max(len(ks) for ks in runs.values()))
    banded, ks = False, [0.0]  # k = 0 (ResNet) always in view
    for run_color, (run, k_by_stage) in zip(_colors(len(runs)), runs.items(), strict=True):
        rows = lm_table(k_by_stage)
        ks += [r[key] for r in rows for key in ("k_min", "k_max")]
        for s, stage in enumerate(k_by_stage):
            stage_rows = [r for r in rows if r["stage"] == stage]
            if not stage_rows:
                continue
            color = stage_colors[s] if single else run_color
            depth = [r["depth"] for r in stage_rows]
            label = stage if single else (run if s == 0 else None)
            marker = _STAGE_MARKERS[s % len(_STAGE_MARKERS)]
            ax.plot(depth, [r["k"] for r in stage_rows], marker=marker, ms=4, lw=1.4, color=color, label=label)
            if any(r["channels"] > 1 for r in stage_rows):  # per-channel k: the spread over channels
                low, high = [r["k_min"] for r in stage_rows], [r["k_max"] for r in stage_rows]
                ax.fill_between(depth, low, high, color=color, alpha=0.2, lw=0)
                banded = True
    starts = stage_starts(next(iter(runs.values())))
    for stage, start in starts.items():
        ax.axvline(start, color="0.3", lw=0.8, ls="--", zorder=0)
        ax.annotate(
            stage,
            (start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            color="0.3",
        )
    _reference_lines(ax)
    span = max(ks) - min(ks) or 0.1
    ax.set_ylim(min(ks) - 0.08 * span, max(ks) + 0.2 * span)  # the data, not the k = -1 line; room for stage names
    ax.set_xlabel("depth (global block index; block 0 of each stage has no k)")
    ax.set_ylabel("k_n")
    default_title = "LM coefficients k_n against depth (0: ResNet, -1: zero-stability limit)"
    if banded:
        default_title += "\nper-channel k: channel mean, band = min-max over channels"
    ax.set_title(title or default_title, fontsize=10)
    legend_title = "stage" if single else "run"  # the legend right of the axes: it hides no point
    ax.legend(fontsize=8, title=legend_title, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def k_history(metrics: Sequence[Mapping]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Epochs and, per stage, an (epochs, blocks) array of k (channel means for per-channel k) from metrics records.

    Records without ``lm_k`` are skipped; stages and block counts come from the first record that has it.

    Raises:
        ValueError: if no record has ``lm_k``, or the block count of a stage changes between records.
    """
    records = [m for m in metrics if m.get("lm_k")]
    if not records:
        raise ValueError("no metrics record has 'lm_k'")
    epochs = np.array([r.get("epoch", i) for i, r in enumerate(records)], dtype=float)
    history: dict[str, np.ndarray] = {}
    for stage in records[0]["lm_k"]:
        rows = []
        for r in records:
            ks = r["lm_k"].get(stage, [])
            rows.append([float(np.mean(k)) for k in ks])  # np.mean: a scalar or a channel list
        if len({len(row) for row in rows}) != 1:
            raise ValueError(f"the number of LM blocks of {stage} changes between epochs")
        history[stage] = np.array(rows, dtype=float).reshape(len(records), -1)
    return epochs, history


def plot_k_over_epochs(runs: Mapping[str, Sequence[Mapping]], path: str | Path, title: str | None = None) -> Path:
    """k_n over training epochs, one panel per stage.

    Args:
        runs: run name -> its metrics records (dicts with ``epoch`` and ``lm_k``).
        path: the PNG to write.
        title: figure title (default: a description).

    Returns:
        The path written.
    """
    if not runs:
        raise ValueError("plot_k_over_epochs: no runs")
    histories = {run: k_history(metrics) for run, metrics in runs.items()}
    stages = list(dict.fromkeys(stage for _, h in histories.values() for stage in h))
    has_initial = any((epochs == 0).any() for epochs, _ in histories.values())
    fig = Figure(figsize=(4.2 * len(stages), 3.6))
    axes = fig.subplots(1, len(stages), sharey=True, squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        if len(histories) == 1:
            _per_block_lines(ax, *next(iter(histories.values())), stage)
        else:
            for color, (run, (epochs, history)) in zip(_colors(len(histories)), histories.items(), strict=True):
                _stage_band(ax, epochs, history.get(stage), color, run)
        _reference_lines(ax)
        ax.set_title(stage, fontsize=9)
        ax.set_xlabel("epoch (0: before training)" if has_initial else "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("k_n")
    default_title = f"LM coefficients k_n during training ({', '.join(histories)})"
    if len(histories) > 1:
        default_title += ": stage mean, band = min-max over blocks"
    fig.suptitle(title or default_title, fontsize=10)
    return _save(fig, path)


def _per_block_lines(ax: Axes, epochs: np.ndarray, history: dict[str, np.ndarray], stage: str) -> None:
    """One line per LM block, coloured from shallow (dark) to deep (light); legend for the first and last."""
    k = history.get(stage)
    if k is None or k.shape[1] == 0:
        return
    blocks = k.shape[1]
    cmap = colormaps["viridis"]
    for b in range(blocks):
        label = f"block {b + 1}" if b in (0, blocks - 1) else None
        ax.plot(epochs, k[:, b], color=cmap(b / max(blocks - 1, 1)), lw=1.1, marker="o", ms=3, label=label)


def _stage_band(ax: Axes, epochs: np.ndarray, k: np.ndarray | None, color: object, run: str) -> None:
    """The mean over a stage's blocks, with the min-max band over blocks."""
    if k is None or k.shape[1] == 0:
        return
    ax.plot(epochs, k.mean(axis=1), color=color, lw=1.4, marker="o", ms=3, label=f"{run} (mean)")
    ax.fill_between(epochs, k.min(axis=1), k.max(axis=1), color=color, alpha=0.2, lw=0)


def plot_dense_weights(
    runs: Mapping[str, Mapping[str, Sequence[Sequence[float]]]], path: str | Path, title: str | None = None
) -> Path:
    """DenseResNet's weight matrices w_{nj} as heatmaps: a row of panels per run, one panel per stage.

    Args:
        runs: run name -> stage name -> the stage's N x N weight matrix (row n: step n, column j: state u_j, NaN
            above the diagonal; :func:`odearch.analysis.dense_table.weight_matrix`).
        path: the PNG to write.
        title: figure title (default: a description).

    Returns:
        The path written.
    """
    from matplotlib.colors import Normalize

    if not runs:
        raise ValueError("plot_dense_weights: no runs")
    stages = list(dict.fromkeys(stage for by_stage in runs.values() for stage in by_stage))
    values = np.concatenate([np.asarray(m, dtype=float).ravel() for r in runs.values() for m in r.values()])
    values = values[np.isfinite(values)]
    limit = max(1.0, float(np.abs(values).max()))  # symmetric: w = 0 is white, w = 1 (Euler's) dark red
    norm = Normalize(vmin=-limit, vmax=limit)
    fig = Figure(figsize=(3.6 * len(stages), 3.4 * len(runs)))
    axes = fig.subplots(len(runs), len(stages), squeeze=False)
    image = None
    for row, (run, by_stage) in zip(axes, runs.items(), strict=True):
        for ax, stage in zip(row, stages, strict=True):
            matrix = np.asarray(by_stage.get(stage, [[np.nan]]), dtype=float)
            image = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", norm=norm)
            if len(matrix) <= 6:  # small stages: the values in the cells
                for (n, j), w in np.ndenumerate(matrix):
                    if np.isfinite(w):
                        color = "white" if abs(w) > 0.6 * limit else "black"  # readable on dark cells
                        ax.text(j, n, f"{w:.2f}", ha="center", va="center", fontsize=7, color=color)
            ax.set_title(stage if len(runs) == 1 else f"{run}: {stage}", fontsize=9)
            ax.set_xlabel("state j (u_j; u_0 = P(u_0) after a transition)", fontsize=8)
            ax.set_ylabel("step n", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="w_nj")
    fig.suptitle(
        title or "DenseResNet weights w_nj = k_nj / sum_j k_nj (u_{n+1} = sum_j w_nj u_j + f_n(u_n))", fontsize=10
    )
    return _save(fig, path)
