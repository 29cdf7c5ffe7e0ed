"""``odearch report RESULTS_DIR [...] --out docs/results.md``: the results table and learning curves, generated.

Reads run directories (``config.yaml``, ``metrics.jsonl``, ``result.json``; a RESULTS_DIR is a run or a folder of
runs) and writes a Markdown report beside PNG learning curves. Nothing in it is typed by hand: the paper's numbers
come from :data:`PAPER_CIFAR10` (copied from the paper's CIFAR-10 table, ``(?)`` where recalled, not confirmed),
ours from the files. Per run:

- ours, the headline: test error after the last epoch done (what the paper reports); for a run in progress, the
  error after its current epoch, labelled with that epoch;
- best epoch: the lowest test error over the epochs, chosen on the TEST set (optimistic; no validation split);
- epochs done of the recipe's, ``in progress`` until ``result.json`` says ``complete``; the current epoch is the last
  row of ``metrics.jsonl`` (newer than ``result.json`` while a stretch runs);
- wall time: ``result.json``'s ``wall_seconds`` (all stretches) when it is up to date, else ``>=`` the sum of the
  epochs' training seconds; training images/s = sum(images) / sum(seconds) over the epochs;
- device (CPU or GPU model), commits (a run spans commits: first..last and how many, ``+dirty`` if any epoch ran
  on a modified tree), precision (fp32, or the autocast dtype; ``compiled`` for a run under torch.compile).

Runs that are not the paper's full recipe (fewer epochs, a subset of the training set) go to a separate table,
without the paper's numbers, so that a short run never reads as a reproduction.

A damaged run (a file that is not JSON / YAML, a value of the wrong type, a NaN or an accuracy outside [0, 1]) is
left out with a warning on stderr naming it and what is wrong (:class:`RunFileError`); a number the report prints is
never NaN. A malformed ``queue.yaml`` is ignored with a warning (the runs then follow their names); a results path
that does not exist is a one-line error (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .arms import arm_section, headline, plot_arm_curves
from .depth import depth_section
from .probe_report import probe_section
from .runfiles import read_metrics
from .runsummary import PAPER_CIFAR10, PAPER_LM_WEIGHT_DECAY, PAPER_RECIPE, RunSummary, last_phase_mean

__all__ = [
    "HEADLINE_END",
    "HEADLINE_START",
    "PAPER_CIFAR10",
    "ReportInputError",
    "RunFileError",
    "RunSummary",
    "add_report_arguments",
    "find_runs",
    "headline_block",
    "last_phase_mean",
    "plot_curves",
    "render",
    "run_report",
    "summarize",
    "twin_rows",
    "write_headline",
    "write_report",
    "write_tensorboard",
]

_COLORS = {"resnet": "tab:blue", "preact": "tab:orange", "lm": "tab:green"}
_STYLES = ("-", "--", ":", "-.")
_TICKS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 100)  # test error %, log axis


# ------------------------------------------------------------------------------------------------- reading
class RunFileError(ValueError):
    """A file of a run directory that the report cannot use; the report leaves the run out with a warning."""


class ReportInputError(FileNotFoundError):
    """A results path given to the report that is neither a run nor a folder (``odearch report`` exits with 2)."""


_MAX_SECONDS = 1e12  # bounds wall times and rates far beyond any real run, so that their sums stay finite


def _warn(message: str) -> None:
    print(f"odearch: warning: {message}", file=sys.stderr)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (holding ``config.yaml``) among ``paths`` and their direct subfolders, in the order given;
    within a folder, in the order of its ``queue.yaml`` (the campaign's) if it has one, else by name.

    Raises:
        ReportInputError: a path that is neither a run directory nor a folder.
    """
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            runs.append(p)
            continue
        if not p.is_dir():
            what = "is not a run directory (no config.yaml) nor a folder" if p.exists() else "no such results directory"
            raise ReportInputError(f"{p}: {what}")
        subs = sorted(d for d in p.iterdir() if (d / "config.yaml").is_file())
        order = _queue_order(p / "queue.yaml")
        subs.sort(key=lambda d: (order.index(d.name) if d.name in order else len(order), d.name))
        runs += subs
    return runs


def _queue_order(queue: Path) -> list[str]:
    """The run names of a campaign's ``queue.yaml`` in its order (``runs: [{name: ...}, ...]``); none when there is
    no queue, and none with a warning when it is malformed (the runs then follow their names)."""
    if not queue.is_file():
        return []
    try:
        data = yaml.safe_load(queue.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        _warn(f"ignoring {queue} (runs listed by name): not readable YAML ({_first_line(e)})")
        return []
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in runs):
        _warn(
            f"ignoring {queue} (runs listed by name): expected a mapping with `runs:`, a list of entries each "
            "with a `name:`"
        )
        return []
    return [r["name"] for r in runs]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(
    where: str,
    d: dict[str, Any],
    strings: Sequence[str] = (),
    ints: dict[str, int] | None = None,
    numbers: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Raises :class:`RunFileError` for the first value of ``d`` the report cannot use: each key of ``strings`` a
    string, of ``ints`` an integer at least its minimum, of ``numbers`` a finite number within its (low, high); an
    absent key or a null passes."""
    for k in strings:
        if d.get(k) is not None and not isinstance(d[k], str):
            raise RunFileError(f"{where}: {k} must be a string, got {_short(d[k])}")
    for k, lo in (ints or {}).items():
        v = d.get(k)
        if v is not None and not (_is_int(v) and v >= lo):
            raise RunFileError(f"{where}: {k} must be an integer >= {lo}, got {_short(v)}")
    for k, (lo, hi) in (numbers or {}).items():
        v = d.get(k)
        if v is not None and not (_is_number(v) and lo <= v <= hi):
            span = f"a finite number >= {lo:g}" if hi == math.inf else f"a number in [{lo:g}, {hi:g}]"
            raise RunFileError(f"{where}: {k} must be {span}, got {_short(v)}")


def _read_config(run_dir: Path) -> dict[str, Any]:
    """``config.yaml`` as a mapping whose values the report reads are of the types it expects."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise RunFileError(f"config.yaml is not readable YAML ({_first_line(e)})") from None
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise RunFileError(f"config.yaml holds a {type(cfg).__name__}, not a mapping of config keys")
    _check_fields(
        "config.yaml",
        cfg,
        strings=("model", "dataset", "scheme", "schedule", "amp", "device", "lm_weight_decay"),
        ints={"epochs": 1, "seed": 0, "num_classes": 0},
    )
    ms = cfg.get("milestones")
    if ms is not None and not (isinstance(ms, list) and all(map(_is_int, ms))):
        raise RunFileError(f"config.yaml: milestones must be a list of epochs, got {_short(ms)}")
    if cfg.get("model_kwargs") is not None and not isinstance(cfg["model_kwargs"], dict):
        raise RunFileError(f"config.yaml: model_kwargs must be a mapping, got {_short(cfg['model_kwargs'])}")
    return cfg


def _read_result(run_dir: Path) -> dict[str, Any] | None:
    """``result.json`` (None while there is none) as an object whose values the report reads are usable."""
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunFileError(f"result.json is not JSON ({_first_line(e)})") from None
    if not isinstance(result, dict):
        raise RunFileError(f"result.json holds a {type(result).__name__}, not an object")
    _check_fields(
        "result.json",
        result,
        strings=("status", "device", "device_name", "git_commit", "precision"),
        ints={"epochs_done": 0, "params": 0},
        numbers={"wall_seconds": (0.0, _MAX_SECONDS)},
    )
    return result


def _read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (none while there is none; a torn last line, a run writing now, is skipped),
    each with the values the report reads usable: accuracies in [0, 1], finite seconds, ``lm_k`` per stage."""
    path = run_dir / "metrics.jsonl"
    try:
        rows = read_metrics(path) if path.is_file() else []
    except (OSError, ValueError) as e:
        raise RunFileError(_first_line(e).replace(str(run_dir) + os.sep, "")) from None
    for r in rows:
        where = f"metrics.jsonl, epoch {r['epoch']}"
        _check_fields(
            where,
            r,
            strings=("device_name", "git_commit"),
            numbers={"test_acc": (0.0, 1.0), "seconds": (0.0, _MAX_SECONDS), "images_per_s": (0.0, _MAX_SECONDS)},
        )
        lm_k = r.get("lm_k")
        if lm_k is not None and not (
            isinstance(lm_k, dict) and all(isinstance(ks, list) and all(map(_is_number, ks)) for ks in lm_k.values())
        ):
            raise RunFileError(f"{where}: lm_k must map each stage to a list of finite numbers, got {_short(lm_k)}")
    return rows


def _count_params(cfg: dict[str, Any]) -> int | None:
    """Parameter count of the config's model, built on the meta device (no memory, no time)."""
    import torch

    from .models import create_model

    try:
        with torch.device("meta"):
            model = create_model(
                cfg["model"],
                num_classes=cfg.get("num_classes"),
                scheme=cfg.get("scheme"),
                **(cfg.get("model_kwargs") or {}),
            )
    except (ValueError, TypeError, RuntimeError):  # a config this version cannot build: no count
        return None
    return sum(p.numel() for p in model.parameters())


def _precision(cfg: dict[str, Any], result: dict[str, Any] | None) -> str:
    """fp32, or the autocast dtype the run trained in (``amp: auto`` is bf16 on CUDA, off on CPU); ``, compiled``
    for a run trained under torch.compile."""
    return _dtype(cfg, result) + (", compiled" if cfg.get("compile") else "")


def _dtype(cfg: dict[str, Any], result: dict[str, Any] | None) -> str:
    if result and result.get("precision"):
        return str(result["precision"])
    amp = cfg.get("amp", "auto")
    if amp == "auto":
        device = (result or {}).get("device") or cfg.get("device", "auto")
        if str(device).startswith("cuda"):
            amp = "bf16"
        elif str(device).startswith("cpu"):
            amp = "off"
        else:
            return "auto (bf16 on CUDA, fp32 on CPU)"
    return "fp32" if amp == "off" else f"{amp} autocast"


def summarize(run_dir: str | Path) -> RunSummary:
    """Reads one run directory into a :class:`RunSummary`.

    Raises:
        RunFileError: a file of the run the report cannot use (the message names the file and what is wrong).
    """
    run_dir = Path(run_dir)
    cfg, rows, result = _read_config(run_dir), _read_rows(run_dir), _read_result(run_dir)
    epochs = int(cfg.get("epochs") or PAPER_RECIPE["epochs"])
    done = rows[-1]["epoch"] if rows else 0
    complete = bool(result and result.get("status") == "complete" and result.get("epochs_done") == epochs == done)
    curve = [(r["epoch"], 100 * (1 - r["test_acc"])) for r in rows if r.get("test_acc") is not None]
    best = min(curve, key=lambda c: (c[1], c[0])) if curve else None
    up_to_date = bool(result and result.get("epochs_done") == done and result.get("wall_seconds") is not None)
    seconds = sum(r.get("seconds") or 0.0 for r in rows)
    images = sum((r.get("seconds") or 0.0) * (r.get("images_per_s") or 0.0) for r in rows)
    res = result or {}
    devices, commits = _devices_and_commits(rows, res)
    diff = _recipe_diff(cfg)
    is_lm = str(cfg.get("model", "")).startswith("lm_")
    milestones = [int(m) for m in cfg.get("milestones") or []]
    lm_decay = cfg.get("lm_weight_decay", "k")  # absent: a run made before the option, whose decay pulled k to 0
    return RunSummary(
        name=run_dir.name,
        path=run_dir,
        model=cfg.get("model") or "?",
        dataset=cfg.get("dataset") or "?",
        seed=int(cfg.get("seed") or 0),
        epochs=epochs,
        epochs_done=done,
        complete=complete,
        final_err=curve[-1][1] if curve else None,
        best_err=best[1] if best else None,
        best_epoch=best[0] if best else None,
        params=res.get("params") or _count_params(cfg),
        wall_s=res["wall_seconds"] if up_to_date else (seconds or None),
        wall_exact=up_to_date,
        img_s=images / seconds if seconds else None,
        devices=devices,
        commits=commits,
        dirty=any(bool(r.get("git_dirty")) for r in rows) or bool(res.get("git_dirty")),
        precision=_precision(cfg, result),
        recipe_diff=diff,
        curve=curve,
        lm_k=(rows[-1].get("lm_k") or {}) if rows else {},
        lm_weight_decay=lm_decay if is_lm else None,
        last_phase=max(milestones) + 1 if milestones and cfg.get("schedule", "step") == "step" else None,
        lm_init=str(cfg.get("lm_init", "global")) if is_lm else None,
        superseded=_superseded(run_dir),
    )


def _devices_and_commits(rows: list[dict[str, Any]], result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The devices and the commits that trained a run, in order of first appearance (the result's when no row says)."""
    named = [r["device_name"] for r in rows if r.get("device_name")]
    devices = list(dict.fromkeys(named + ([result["device_name"]] if result.get("device_name") else [])))
    commits = list(dict.fromkeys(r["git_commit"] for r in rows if r.get("git_commit")))
    if not commits and result.get("git_commit"):
        commits = [result["git_commit"]]
    return devices, commits


def _recipe_diff(cfg: dict[str, Any]) -> list[str]:
    """How a run's config departs from the paper's recipe (and, for an LM net, from the official decay on k)."""
    diff = [
        f"{k} {cfg.get(k)!r} (paper {v!r})"
        for k, v in PAPER_RECIPE.items()
        if k in cfg and _norm(cfg.get(k)) != _norm(v)
    ]
    diff += [f"{k} {cfg[k]!r}" for k in ("scheme", "model_kwargs") if cfg.get(k)]  # another net than the name's
    if cfg.get("refine_at"):  # multi-level: trained at several depths, ends at another net's shape than the name's
        diff.append(f"refine_at {list(cfg['refine_at'])!r} (multi-level, refined by {cfg.get('refine_factor', 2)})")
    lm_decay = cfg.get("lm_weight_decay", "k")  # absent: a run made before the option, whose decay pulled k to 0
    if str(cfg.get("model", "")).startswith("lm_") and lm_decay != PAPER_LM_WEIGHT_DECAY:
        diff.append(f"lm_weight_decay {lm_decay!r} (official code {PAPER_LM_WEIGHT_DECAY!r})")
    return diff


SUPERSEDED_FILE = "superseded.txt"
"""A run directory holding this file (its text says why) is kept as it is but no longer counted in any table."""


def _superseded(run_dir: Path) -> str | None:
    path = run_dir / SUPERSEDED_FILE
    if not path.is_file():
        return None
    return " ".join(path.read_text(errors="replace").split()) or "superseded"


def _norm(v: Any) -> Any:
    return (
        [float(x) for x in v]
        if isinstance(v, list | tuple)
        else (float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
    )


# ------------------------------------------------------------------------------------------------- cells
def _paper_cell(s: RunSummary) -> str:
    if s.paper is None:
        return "—"
    err, confirmed = s.paper
    return f"{err:.2f}" if confirmed else f"{err:.2f} (?)"


def _final_cell(s: RunSummary) -> str:
    if s.final_err is None:
        return "—"
    return f"{s.final_err:.2f}" if s.complete else f"{s.final_err:.2f} (epoch {s.epochs_done})"


def _delta_cell(s: RunSummary) -> str:
    if not s.complete or s.paper is None or s.final_err is None:
        return ""
    return f"{s.final_err - s.paper[0]:+.2f}" + ("" if s.paper[1] else " (?)")


def _best_cell(s: RunSummary) -> str:
    return "—" if s.best_err is None else f"{s.best_err:.2f} (epoch {s.best_epoch})"


def _epochs_cell(s: RunSummary) -> str:
    return f"{s.epochs_done}/{s.epochs}" if s.complete else f"{s.epochs_done}/{s.epochs}, in progress"


def _wall_cell(s: RunSummary) -> str:
    if s.wall_s is None:
        return "—"
    return f"{s.wall_s / 3600:.2f} h" if s.wall_exact else f"≥ {s.wall_s / 3600:.2f} h"


def _commit_cell(s: RunSummary) -> str:
    if not s.commits:
        return "?"
    c = [f"`{x[:7]}`" for x in s.commits]
    text = c[0] if len(c) == 1 else f"{c[0]}..{c[-1]} ({len(c)} commits)"
    return text + (" +dirty" if s.dirty else "")


def _precision_cell(s: RunSummary) -> str:
    """The precision, and for an LM run how its k_n were drawn (paired: the plain twin's every other weight)."""
    return s.precision + (f", {s.lm_init} init" if s.lm_init else "")


def _link(s: RunSummary, base: Path) -> str:
    rel = os.path.relpath(s.path.resolve(), base.resolve())
    return f"[{s.name}]({Path(rel).as_posix()})"


MAIN_HEADER = (
    "| run | model | seed | paper error % | ours: error % after the last epoch | ours − paper | "
    "best epoch, chosen on test: error % | epochs | params | wall time | train images/s | device | "
    "commits | precision |"
)
OTHER_HEADER = (
    "| run | model | seed | differs from the paper's recipe in | error % after the last epoch | epochs | "
    "wall time | device | commits | precision |"
)


def main_row(s: RunSummary, base: Path) -> list[str]:
    """The cells of ``s`` in the main table (the order of :data:`MAIN_HEADER`)."""
    return [
        _link(s, base),
        f"`{s.model}`",
        str(s.seed),
        _paper_cell(s),
        _final_cell(s),
        _delta_cell(s),
        _best_cell(s),
        _epochs_cell(s),
        "—" if s.params is None else f"{s.params / 1e6:.3f}M",
        _wall_cell(s),
        "—" if s.img_s is None else f"{s.img_s:.0f}",
        " + ".join(s.devices) or "?",
        _commit_cell(s),
        _precision_cell(s),
    ]


def other_row(s: RunSummary, base: Path) -> list[str]:
    """The cells of ``s`` in the table of runs that are not the paper's recipe."""
    return [
        _link(s, base),
        f"`{s.model}`",
        str(s.seed),
        "; ".join(s.recipe_diff),
        _final_cell(s),
        _epochs_cell(s),
        _wall_cell(s),
        " + ".join(s.devices) or "?",
        _commit_cell(s),
        _precision_cell(s),
    ]


TWIN_HEADER = (
    "| twins | seed | plain: error % | LM: error % | LM − plain (points) | LM − plain, mean over the "
    "last lr phase (points) | paper: LM-ResNet − ResNet (points) |"
)


def twin_rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    """One row per ``lm_X`` run and plain run of the same data set and seed among ``runs``: its exact twin
    ``preact_X``, then ``X``, the post-activation net the paper compares with (where the paper has one); both final
    errors and their difference once both have finished, the difference of their :func:`last_phase_mean` beside it;
    the paper's LM-ResNet minus ResNet difference last."""
    rows = []
    for lm in runs:
        if not lm.model.startswith("lm_"):
            continue
        base = lm.model.removeprefix("lm_")
        p_lm = PAPER_CIFAR10.get(lm.model) if lm.dataset == "cifar10" else None
        p_plain = PAPER_CIFAR10.get(base) if lm.dataset == "cifar10" else None
        paper = f"{p_lm[0] - p_plain[0]:+.2f}" + ("" if p_lm[1] and p_plain[1] else " (?)") if p_lm and p_plain else ""
        for plain_name, label in (("preact_" + base, "exact twin"), (base, "post-activation, the paper's pairing")):
            for plain in runs:
                if (plain.model, plain.dataset, plain.seed) != (plain_name, lm.dataset, lm.seed):
                    continue
                both = lm.complete and plain.complete and lm.final_err is not None and plain.final_err is not None
                diff = f"{lm.final_err - plain.final_err:+.2f}" if both else ""  # type: ignore[operator]
                rows.append(
                    [
                        f"`{lm.model}` vs `{plain.model}` ({label})",
                        str(lm.seed),
                        _final_cell(plain),
                        _final_cell(lm),
                        diff,
                        _phase_diff_cell(lm, plain),
                        paper,
                    ]
                )
    return rows


def _phase_diff_cell(lm: RunSummary, plain: RunSummary) -> str:
    m_lm, m_plain = last_phase_mean(lm), last_phase_mean(plain)
    if m_lm is None or m_plain is None or lm.last_phase != plain.last_phase:
        return ""
    return f"{m_lm - m_plain:+.2f} ({m_plain:.2f} vs {m_lm:.2f}, epochs {lm.last_phase}-{lm.epochs})"


LM_K_HEADER = "| run | after epoch | k_n per stage (its LM blocks in order) | max abs k_n | weight decay |"
_DECAY_ON_K = {"kappa": "on 1 - k (toward 1)", "k": "on k (toward 0)", "none": "none"}


def _lm_k_row(s: RunSummary, base: Path) -> list[str]:
    ks = [k for stage in s.lm_k.values() for k in stage]
    return [
        _link(s, base),
        str(s.epochs_done) + ("" if s.complete else ", in progress"),
        "; ".join(f"{stage}: " + ", ".join(f"{k:+.3f}" for k in stage_ks) for stage, stage_ks in s.lm_k.items()),
        f"{max(map(abs, ks)):.3f}",
        _DECAY_ON_K.get(str(s.lm_weight_decay), "?"),
    ]


def lm_k_section(runs: Sequence[RunSummary], base: Path) -> list[str]:
    """The learned k_n of every LM run after its last epoch done, per stage, with where weight decay pulls them."""
    rows = [_lm_k_row(s, base) for s in runs if any(s.lm_k.values())]
    if not rows:
        return []
    return [
        "",
        "## Learned LM coefficients k_n",
        "",
        *_table(LM_K_HEADER, rows),
        "",
        "The first block of each stage is a plain residual step and has no k_n. The LM step is zero-stable while "
        "every abs k_n <= 1; `odearch analyze RUN` gives the modified equation each k_n implies and plots k_n "
        "over the epochs.",
    ]


def _table(header: str, rows: list[list[str]]) -> list[str]:
    ncol = header.count("|") - 1
    return [header, "|" + "---|" * ncol, *("| " + " | ".join(r) + " |" for r in rows)]


# ------------------------------------------------------------------------------------------------- curves
def _group_of(model: str, dataset: str) -> str:
    """Twins share a group: the model name without its scheme prefix (lm_resnet20, preact_resnet20 -> resnet20)."""
    return f"{dataset}_" + re.sub(r"^[a-z0-9]+_(?=resnet)", "", model)


def _group(s: RunSummary) -> str:
    return _group_of(s.model, s.dataset)


def _family(model: str) -> str:
    return model.split("_")[0] if "_" in model and model.split("_")[0] in _COLORS else "resnet"


def plot_curves(runs: Sequence[RunSummary], out_dir: str | Path) -> list[Path]:
    """One PNG per group of twins, ``curves_<dataset>_<net>.png``: test error (%, log scale) after each epoch,
    every run of the group overlaid (colour: family; line style: seed), the paper's errors as dotted lines."""
    from matplotlib.figure import Figure

    groups: dict[str, list[RunSummary]] = {}
    for s in runs:
        if s.curve:
            groups.setdefault(_group(s), []).append(s)
    paths = []
    for group, members in groups.items():
        fig = Figure(figsize=(7.5, 4.5))
        ax = fig.add_subplot()
        seeds = sorted({s.seed for s in members})
        for s in members:
            color = _COLORS[_family(s.model)]
            ep, err = zip(*s.curve)
            state = f"final {s.final_err:.2f}%" if s.complete else f"in progress, epoch {s.epochs_done}"
            ax.plot(
                ep,
                err,
                color=color,
                ls=_STYLES[seeds.index(s.seed) % len(_STYLES)],
                lw=1.2,
                label=f"{s.model} seed {s.seed} ({state})",
            )
        models = list(dict.fromkeys(s.model for s in members))
        values = [e for s in members for _, e in s.curve]
        twins = [m for m in PAPER_CIFAR10 if group.startswith("cifar10_") and _group_of(m, "cifar10") == group]
        for model in dict.fromkeys(models + twins):  # the paper's numbers of the whole group, trained or not yet
            paper = PAPER_CIFAR10.get(model) if group.startswith("cifar10_") else None
            if paper:
                values.append(paper[0])
                ax.axhline(
                    paper[0],
                    color=_COLORS[_family(model)],
                    ls=":",
                    lw=1,
                    label=f"paper {model}: {paper[0]:.2f}%" + ("" if paper[1] else " (?)"),
                )
        epochs = max(s.epochs for s in members)
        for m in PAPER_RECIPE["milestones"] if epochs == PAPER_RECIPE["epochs"] else []:
            ax.axvline(m, color="0.8", lw=0.8, zorder=0)
        lo, hi = 0.9 * min(values), min(100.0, 1.1 * max(values))
        ax.set_yscale("log")
        ax.set_yticks([t for t in _TICKS if lo <= t <= hi])
        ax.yaxis.set_major_formatter("{x:g}")
        ax.yaxis.set_minor_formatter("")
        ax.set_ylim(lo, hi)
        ax.set_xlim(0, epochs)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error % (log scale)")
        ax.set_title(f"{s.dataset.upper().replace('CIFAR', 'CIFAR-')} test error after each epoch: {', '.join(models)}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
        path = Path(out_dir) / f"curves_{group}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------- report
SUPERSEDED_HEADER = "| run | model | seed | epochs | why |"


def render(
    runs: Sequence[RunSummary],
    out: Path,
    command: str,
    curves: Sequence[Path] = (),
    arm_curves: Sequence[Path] = (),
    probes: str | Path | None = None,
) -> str:
    """The Markdown text of the report written to ``out`` (links are relative to its folder); with ``probes``, the
    tables of the probe records in that folder (:func:`odearch.probe_report.probe_section`)."""
    base = out.parent
    superseded = [s for s in runs if s.superseded]
    runs = [s for s in runs if not s.superseded]
    main = [s for s in runs if not s.recipe_diff]
    other = [s for s in runs if s.recipe_diff]
    lines = [
        "# Results",
        "",
        f"Generated by `{command}` from the run directories (`config.yaml`, `metrics.jsonl`, `result.json`); "
        "do not edit by hand, regenerate.",
        "",
    ]
    lines += [
        "## CIFAR-10 at the paper's recipe",
        "",
        "SGD momentum 0.9, batch 128, lr 0.1 / 10 at epochs 80 and 120, 160 epochs, weight decay 1e-4, "
        "4-pixel pad + crop + flip, all 50k training images, tested on the 10k test images.",
        "",
    ]
    lines += _table(MAIN_HEADER, [main_row(s, base) for s in main]) if main else ["No run at the paper's recipe."]
    lines += [
        "",
        "- Headline: ours = test error after the last epoch done, as the paper reports. For a run in progress "
        "it is the error after its current epoch (named in parentheses), not a result.",
        "- Best epoch: the lowest test error over all epochs, chosen on the test set itself (no validation "
        "split, as in the paper): optimistic, for reference only.",
        "- Paper: the paper's CIFAR-10 table; (?) marks a number recalled, not confirmed against the PDF "
        "(../shared/PAPER.md). `resnet*` are the post-activation ResNets of the paper's baseline rows; the "
        "paper has no row for `preact_resnet20..56` (the LM nets' exact plain twins): compare those with "
        "their `lm_` twin.",
        "- One seed per row unless the seed column says otherwise; a difference under ~0.3 points is "
        "within seed noise for ResNet-20.",
        "- Wall time over all stretches of a run (≥: the sum of the epochs' training seconds, while "
        "`result.json` is older than the last epoch); train images/s over the training passes only; "
        "commits: first..last of the code that trained the epochs (`+dirty`: some epoch ran on a modified "
        "tree).",
    ]
    twins = twin_rows(main)
    if twins:
        lines += ["", "## The LM nets against their plain twins (same seed and recipe)", ""]
        lines += _table(TWIN_HEADER, twins)
        lines += [
            "",
            "The exact twin (`preact_*`: the same pre-activation backbone with k_n = 0) isolates the LM "
            "coupling; the paper compares LM-ResNet (pre-activation) with the post-activation ResNet of He et "
            "al. (`resnet*`), which also differs in block layout. One seed: a difference under ~0.3 points is "
            "within seed noise. The mean over the last lr phase (every epoch after the last lr drop) takes "
            "out the epoch-to-epoch jitter of a single final epoch, not the noise between seeds.",
        ]
    lines += arm_section(runs, base, arm_curves)
    lines += depth_section(runs)
    lines += lm_k_section(runs, base)
    if probes is not None:
        lines += probe_section(probes, base)
    if curves:
        lines += ["", "## Learning curves", ""]
        for c in curves:
            lines += [f"![{c.stem}]({Path(os.path.relpath(c.resolve(), base.resolve())).as_posix()})", ""]
        lines.pop()
    if other:
        lines += ["", "## Other runs (not the paper's recipe: not comparable to its numbers)", ""]
        lines += _table(OTHER_HEADER, [other_row(s, base) for s in other])
    lines += _superseded_section(superseded, base)
    return "\n".join(lines) + "\n"


def _superseded_section(superseded: Sequence[RunSummary], base: Path) -> list[str]:
    """The table of runs kept as they stopped and no longer counted (none: no lines)."""
    if not superseded:
        return []
    rows = [
        [_link(s, base), f"`{s.model}`", str(s.seed), f"{s.epochs_done}/{s.epochs}", s.superseded or ""]
        for s in superseded
    ]
    return ["", "## Superseded runs (kept as they stopped, not counted)", "", *_table(SUPERSEDED_HEADER, rows)]


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    command: str,
    plots: bool = True,
    readme: str | Path | None = None,
    probes: str | Path | None = None,
) -> tuple[Path, list[Path]]:
    """Summarises every run under ``paths``, writes the curves beside ``out`` and the Markdown to ``out``; with
    ``readme``, also rewrites that file's results headline (:func:`write_headline`); with ``probes``, a folder of
    ``scripts/probe_lm.py`` records, adds their tables.

    Raises:
        ReportInputError: ``probes`` is not a folder.
    """
    out = Path(out)
    if probes is not None and not Path(probes).is_dir():
        raise ReportInputError(f"--probes {probes}: not a folder")
    runs = _summaries(find_runs(paths))
    if readme is not None:
        write_headline(readme, runs, out)
    counted = [s for s in runs if not s.superseded]
    curves = plot_curves([s for s in counted if not s.recipe_diff], out.parent) if plots else []
    arm_curves = plot_arm_curves(counted, out.parent) if plots else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs, out, command, curves, arm_curves, probes))
    return out, curves + arm_curves


HEADLINE_START = "<!-- results-headline:start -->"
HEADLINE_END = "<!-- results-headline:end -->"
"""The markers around the results headline of a README, which ``odearch report --readme`` rewrites."""


def headline_block(runs: Sequence[RunSummary], readme: str | Path, out: str | Path) -> str:
    """The results headline of ``readme`` between its markers (markers included): the verdicts of the pre-registered
    test (:func:`odearch.arms.headline`), linking to the report ``out``."""
    link = Path(os.path.relpath(Path(out).resolve(), Path(readme).resolve().parent)).as_posix()
    return "\n".join([HEADLINE_START, *headline([s for s in runs if not s.superseded], link), HEADLINE_END])


def write_headline(readme: str | Path, runs: Sequence[RunSummary], out: str | Path) -> None:
    """Replaces the block between ``readme``'s headline markers by :func:`headline_block`; the rest is kept.

    Raises:
        ReportInputError: ``readme`` is missing, or lacks the markers (one pair, start before end).
    """
    readme = Path(readme)
    text = readme.read_text() if readme.is_file() else ""
    start, end = text.find(HEADLINE_START), text.find(HEADLINE_END)
    if text.count(HEADLINE_START) != 1 or text.count(HEADLINE_END) != 1 or end < start:
        raise ReportInputError(f"{readme}: needs one {HEADLINE_START} ... {HEADLINE_END} pair for the headline")
    block = headline_block(runs, readme, out)
    readme.write_text(text[:start] + block + text[end + len(HEADLINE_END) :])


def write_tensorboard(paths: Sequence[str | Path], dest: str | Path) -> list[Path]:
    """Replays the ``metrics.jsonl`` of every run under ``paths`` into ``dest/RUN_NAME`` as TensorBoard events (what
    training writes to ``RUN/tb/``, which results/ does not track); a run whose metrics cannot be read is skipped with a
    warning, and so is a second run of the same name.

    Returns:
        The folders written.
    """
    from .train.tensorboard import replay

    written: list[Path] = []
    for run_dir in find_runs(paths):
        logdir = Path(dest) / run_dir.name
        if logdir in written:
            _warn(f"skipping run {run_dir} for TensorBoard: {logdir} holds another run of that name")
            continue
        try:
            rows = _read_rows(run_dir)
        except RunFileError as e:
            _warn(f"skipping run {run_dir} for TensorBoard: {e}")
            continue
        if rows:
            replay(rows, logdir)
            written.append(logdir)
    return written


def _summaries(run_dirs: Sequence[Path]) -> list[RunSummary]:
    """The runs the report can read; each damaged one is left out with a warning naming it and what is wrong."""
    runs = []
    for d in run_dirs:
        try:
            runs.append(summarize(d))
        except RunFileError as e:
            _warn(f"skipping run {d}: {e}")
    return runs


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``odearch report``."""
    p.add_argument("results", nargs="+", help="run directories, or folders of runs (e.g. results/campaign)")
    p.add_argument("--out", default="docs/results.md", help="Markdown file to write; the PNGs go beside it")
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.add_argument(
        "--readme",
        metavar="MARKDOWN",
        help=f"also rewrite the results headline between the {HEADLINE_START} and {HEADLINE_END} markers of this file "
        "(e.g. README.md)",
    )
    p.add_argument(
        "--probes",
        metavar="DIR",
        help="also tabulate the probe records of this folder (scripts/probe_lm.py; e.g. results/probes)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write each run's metrics.jsonl as TensorBoard events to DIR/RUN_NAME (the tracked runs keep no "
        "event files; then: tensorboard --logdir DIR)",
    )


def run_report(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """``odearch report``: writes the report and says where."""
    command = shlex.join(["odearch", *argv]) if argv is not None else "odearch report"
    try:
        out, curves = write_report(
            args.results, args.out, command, plots=not args.no_plots, readme=args.readme, probes=args.probes
        )
    except ReportInputError as e:  # a path the user gave: usage, not a failure
        print(f"odearch: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}" + (f" and {', '.join(map(str, curves))}" if curves else ""))
    if args.readme:
        print(f"rewrote the results headline of {args.readme}")
    if args.tensorboard:
        logdirs = write_tensorboard(args.results, args.tensorboard)
        print(f"wrote TensorBoard events of {len(logdirs)} runs under {args.tensorboard}")
    return 0
