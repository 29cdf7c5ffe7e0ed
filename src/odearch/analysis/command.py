"""``odearch analyze RUN_OR_CHECKPOINT [...] [--out DIR] [--dt 1.0]``: the LM table and k_n plots of trained runs.

The CLI module registers the subcommand with :func:`add_analyze_arguments` and calls :func:`run_analyze`.

Inputs (the ``odearch train`` run-directory contract): a run directory ``RUN`` (its checkpoint is
``RUN/checkpoints/best.safetensors`` if present, else ``last.safetensors``, else for a run pruned after shipping
the package's copy of its final weights) or a ``.safetensors`` file (its run
directory, if any, is two levels up: ``RUN/checkpoints/x.safetensors``). The k values are read from the state-dict
keys ``<stage>.lm_k`` alone (shape (n,) or (n, C)), or for a DenseResNet ``<stage>.dense_k`` (one flat vector), so
no model is rebuilt and any checkpoint of an LM or dense network works; ``RUN/metrics.jsonl`` (one JSON object per
epoch with ``epoch`` and ``lm_k``) gives k over training, and ``RUN/config.yaml`` the model name for the report.

Outputs in ``--out`` (default ``RUN/analysis/`` of the first input): ``lm_table.csv``, ``lm_table.txt`` (also
printed), ``k_vs_depth.png`` and, when a run has metrics, ``k_over_epochs.png``; several inputs are overlaid. For
dense inputs: ``dense_table.csv`` / ``dense_table.txt`` (also printed: the weight matrices, then each step's frozen
multistep method, its consistency, order and zero-stability), ``dense_weights.csv`` and ``dense_weights.png`` (the
weight matrices as a heatmap per stage; :mod:`.dense_table`).
Errors (missing path, not a safetensors file, no LM coefficients, bad metrics) are one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..models import PretrainedError, registry_file, shipped_run_weights, shipped_weights_named
from ..packing import is_packed, unpack_weights, weights_stem
from ..runfiles import INITIAL_K_FILE
from ..runfiles import read_metrics as read_metrics_rows
from ..schemes.dense import DenseRows, dense_k_by_stage
from ..schemes.lm import lm_k_by_stage
from .dense_table import write_dense_report
from .lm_table import KValues, format_table, lm_table, write_csv

EXIT_ERROR = 2


class AnalyzeError(Exception):
    """A user-facing error of ``odearch analyze`` (printed as one line, exit code 2)."""


@dataclass(frozen=True)
class RunSource:
    """One analysed input.

    Args:
        name: the label in tables and legends (the run directory's name, or the checkpoint's stem).
        checkpoint: the safetensors file the k values were read from.
        run_dir: the run directory, if the checkpoint belongs to one.
        k_by_stage: stage name -> k of its blocks 1..N-1 (empty for a dense network).
        metrics: the records of ``metrics.jsonl``, or None if there is none.
        model: the model name from ``config.yaml``, if known.
        dense_k: stage name -> the k rows of its steps 1..N-1 of a dense network (empty for an LM network).
    """

    name: str
    checkpoint: Path
    run_dir: Path | None
    k_by_stage: dict[str, KValues]
    metrics: list[dict] | None
    model: str | None
    dense_k: dict[str, DenseRows] = field(default_factory=dict)


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``analyze`` arguments to a (sub)parser."""
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="RUN_OR_CHECKPOINT",
        help="a run directory (uses checkpoints/best.safetensors, else last.safetensors), a .safetensors file, or "
        "the name of shipped weights (lm_resnet20.cifar10_s0; default output ./analysis/NAME); several are overlaid",
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: RUN/analysis of the first)")
    parser.add_argument(
        "--dt", type=float, default=1.0, help="the step dt of the ODE reading (scales the effective step; default 1)"
    )


def run_analyze(args: argparse.Namespace) -> int:
    """Write the LM table and plots for ``args.paths``; returns the exit code (0, or 2 on a user error)."""
    try:
        sources = _unique_names([load_source(Path(p)) for p in args.paths])
        out = Path(args.out) if args.out is not None else _default_out(sources[0])
        text = write_report(sources, out, args.dt)
    except AnalyzeError as error:
        print(f"odearch analyze: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(text)
    print(f"wrote {out}/")
    return 0


def write_report(sources: list[RunSource], out: Path, dt: float = 1.0) -> str:
    """Write the LM report of the LM inputs (:func:`write_lm_report`) and the dense report of the dense ones
    (``dense_table.txt`` and :func:`.dense_table.write_dense_report`'s files); returns the text."""
    out.mkdir(parents=True, exist_ok=True)
    lm, dense = [s for s in sources if s.k_by_stage], [s for s in sources if s.dense_k]
    texts = [write_lm_report(lm, out, dt)] if lm else []
    if dense:
        text = "\n".join([*_header(dense), "", write_dense_report({s.name: s.dense_k for s in dense}, out, dt)])
        (out / "dense_table.txt").write_text(text + "\n")
        texts.append(text)
    return "\n\n".join(texts)


def _header(sources: list[RunSource]) -> list[str]:
    """One line per input: its checkpoint (a run's best one says so: ``odearch eval RUN`` reads the last)."""
    lines = []
    for s in sources:
        notes = [f"model {s.model}"] if s.model else []
        if s.run_dir is not None and s.checkpoint.name == "best.safetensors":
            notes.append("the best epoch's weights; odearch eval RUN reads last.safetensors unless --checkpoint best")
        lines.append(f"run {s.name}: {s.checkpoint}" + (f" ({'; '.join(notes)})" if notes else ""))
    return lines


def write_lm_report(sources: list[RunSource], out: Path, dt: float = 1.0) -> str:
    """Write lm_table.csv, lm_table.txt, k_vs_depth.png and (with metrics) k_over_epochs.png; returns the text."""
    from .plots import plot_k_over_epochs, plot_k_vs_depth  # matplotlib only when plotting

    rows = [{"run": s.name} | row for s in sources for row in lm_table(s.k_by_stage, dt)]
    write_csv(rows, out / "lm_table.csv")
    text = "\n".join([*_header(sources), "", format_table(rows)])
    (out / "lm_table.txt").write_text(text + "\n")
    plot_k_vs_depth({s.name: s.k_by_stage for s in sources}, out / "k_vs_depth.png")
    with_metrics = {s.name: s.metrics for s in sources if s.metrics and any(r.get("lm_k") for r in s.metrics)}
    if with_metrics:
        try:
            plot_k_over_epochs(with_metrics, out / "k_over_epochs.png")
        except ValueError as error:  # metrics without usable lm_k entries
            raise AnalyzeError(f"metrics.jsonl: {error}") from error
    return text


def load_source(path: Path) -> RunSource:
    """Resolve a run directory or a checkpoint and read its k values, metrics and model name."""
    checkpoint, run_dir = resolve_checkpoint(path)
    dense_k = read_dense_k(checkpoint)
    k_by_stage = {} if dense_k else read_lm_k(checkpoint)
    metrics = read_metrics(run_dir / "metrics.jsonl") if run_dir else None
    initial = read_initial_k(run_dir / INITIAL_K_FILE) if run_dir else None
    if metrics is not None and initial is not None:
        metrics = [initial, *metrics]  # k_n before the first epoch: epoch 0 of k over epochs
    model = read_model_name(run_dir / "config.yaml") if run_dir else None
    name = run_dir.name if run_dir else weights_stem(checkpoint)
    return RunSource(name, checkpoint, run_dir, k_by_stage, metrics, model, dense_k)


def resolve_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run directory or None) for a run directory or a checkpoint file."""
    if not path.exists():
        try:
            shipped = shipped_weights_named(str(path))
        except PretrainedError as error:
            raise AnalyzeError(str(error)) from error
        if shipped is None:
            raise AnalyzeError(f"no such file or directory, nor the name of shipped weights: {path}")
        return shipped, None
    if path.is_dir():
        try:  # pruned after shipping (or a prune cut short): the shipped copy holds its final weights
            shipped = shipped_run_weights(path)
        except PretrainedError as error:
            raise AnalyzeError(str(error)) from error
        if shipped is not None:
            return shipped, path
        for name in ("best.safetensors", "last.safetensors"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name, path
        raise AnalyzeError(f"{path}: no checkpoints/best.safetensors or checkpoints/last.safetensors")
    parent = Path(os.path.abspath(path)).parent  # not resolve(): checkpoints/last.safetensors is a link into a
    if parent.name.startswith("gen-") and parent.parent.name == "checkpoints":  # generation; a generation's file
        parent = parent.parent  # belongs to the run two levels above its folder
    run_dir = parent.parent  # RUN/checkpoints/x.safetensors -> RUN
    is_run = parent.name == "checkpoints" and (
        (run_dir / "config.yaml").is_file() or (run_dir / "metrics.jsonl").is_file()
    )
    return path, run_dir if is_run else None


def _natural_key(text: str) -> list[int | str]:
    """'stages.10' after 'stages.2' (safetensors stores keys sorted as strings)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _arrays_ending(checkpoint: Path, suffix: str) -> dict:
    """The arrays of a safetensors file whose keys end in ``suffix``, keys in natural order (AnalyzeError if the
    file cannot be read)."""
    from safetensors import safe_open

    try:
        with open(checkpoint, "rb") as f:
            packed = is_packed(f.read(8))
        if packed:  # a shipped file: the safetensors bytes it packs, read through torch (bf16 tensors)
            from safetensors.torch import load

            tensors = load(unpack_weights(checkpoint.read_bytes()))
            keys = sorted((key for key in tensors if key.endswith(suffix)), key=_natural_key)
            return {key: tensors[key].numpy() for key in keys}
        with safe_open(str(checkpoint), framework="numpy") as handle:
            keys = sorted((key for key in handle.keys() if key.endswith(suffix)), key=_natural_key)
            return {key: handle.get_tensor(key) for key in keys}
    except Exception as error:  # safetensors raises its own error types (and OSError / ValueError) for bad files
        raise AnalyzeError(f"{checkpoint}: not a readable safetensors file ({error})") from error


def read_lm_k(checkpoint: Path, suffix: str = ".lm_k") -> dict[str, KValues]:
    """k_by_stage from the ``<stage>.lm_k`` tensors of a safetensors file, stages in natural order.

    Raises:
        AnalyzeError: not a safetensors file, or no ``.lm_k`` key (not an LM network), or a bad shape.
    """
    arrays = _arrays_ending(checkpoint, suffix)
    if not arrays:
        raise AnalyzeError(
            f"{checkpoint}: no LM coefficients (no '*{suffix}' key; not an LM-architecture network) "
            "and no dense coefficients (no '*.dense_k' key)"
        )
    try:
        return lm_k_by_stage(arrays.items(), suffix)
    except ValueError as error:
        raise AnalyzeError(f"{checkpoint}: {error}") from error


def read_dense_k(checkpoint: Path, suffix: str = ".dense_k") -> dict[str, DenseRows]:
    """The k rows of every dense stage (``<stage>.dense_k`` keys) of a safetensors file, stages in natural order;
    {} when it has none (an LM or plain network).

    Raises:
        AnalyzeError: not a safetensors file, or a ``dense_k`` that is not one vector of N(N + 1)/2 - 1 values.
    """
    try:
        return dense_k_by_stage(_arrays_ending(checkpoint, suffix).items(), suffix)
    except ValueError as error:
        raise AnalyzeError(f"{checkpoint}: {error}") from error


def read_initial_k(path: Path) -> dict | None:
    """The ``{"epoch": 0, "lm_k": ...}`` record of k_n before training, or None if the run has none (runs of
    older versions)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AnalyzeError(f"{path}: not JSON ({error.msg})") from error
    if not isinstance(record, dict) or not isinstance(record.get("lm_k"), dict):
        raise AnalyzeError(f"{path}: expected an object with an 'lm_k' mapping")
    return {"epoch": 0, "lm_k": record["lm_k"]}


def read_metrics(path: Path) -> list[dict] | None:
    """The rows of a metrics.jsonl (:func:`odearch.runfiles.read_metrics`: a torn last line is skipped, as training
    does), or None if the file does not exist.

    Raises:
        AnalyzeError: a complete line that is not a metrics row (the message names ``file:line``).
    """
    if not path.is_file():
        return None
    try:
        return read_metrics_rows(path)
    except ValueError as error:
        raise AnalyzeError(str(error)) from None


def read_model_name(path: Path) -> str | None:
    """The ``model`` entry of a run's config.yaml, or None if there is no readable one (it is only a label)."""
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return str(config["model"]) if isinstance(config, dict) and "model" in config else None


def _default_out(source: RunSource) -> Path:
    if source.run_dir:
        return source.run_dir / "analysis"
    if source.checkpoint.parent == registry_file().parent:  # shipped weights: never write into the installed package
        return Path("analysis") / source.name
    return source.checkpoint.parent / "analysis"


def _unique_names(sources: list[RunSource]) -> list[RunSource]:
    """Disambiguate equal run names (e.g. two runs both called 'seed0' in different folders) with #2, #3, ..."""
    seen: dict[str, int] = {}
    out = []
    for source in sources:
        seen[source.name] = seen.get(source.name, 0) + 1
        if seen[source.name] > 1:
            source = RunSource(**{**source.__dict__, "name": f"{source.name}#{seen[source.name]}"})
        out.append(source)
    return out
