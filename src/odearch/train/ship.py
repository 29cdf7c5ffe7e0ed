"""Ship a finished run's final weights inside the package: ``odearch ship RUN``.

Refuses a run that has not finished all its epochs (``result.json`` status ``complete``, one ``metrics.jsonl`` row
per epoch) or that is not the paper's full recipe (all epochs of the data set's schedule, the whole training set);
evaluates the final weights (``checkpoints/last.safetensors``) on the test set in fp32 on the CPU and records the
number of correct images; copies the file byte for byte to ``odearch/weights/<model>.<tag>.safetensors`` and pins its
sha256, with data set, recipe, test accuracy and the commits that trained it, in ``odearch/weights/registry.json``
(:mod:`odearch.models._pretrained` reads it). The test suite re-evaluates every shipped file the same way
(:func:`evaluate_weights`) and checks the recorded count exactly.

``--prune-checkpoints`` then deletes the run's ``checkpoints/`` (the final weights are the shipped file, byte for byte;
the best-epoch weights and the optimizer state stay in the repository's history) and writes ``RUN/shipped.json``
naming the shipped weights, which ``odearch eval RUN`` then reads: a finished campaign run keeps ~1 MB in the
package instead of ~3.3 MB of checkpoints in the tracked tree. A run already shipped is pruned without shipping again.

Run it from a source checkout (``pip install -e .`` or ``PYTHONPATH=src``): it writes into the package's source
tree, ``src/odearch/weights/``; commit the new ``.safetensors`` and ``registry.json`` (pyproject's package-data puts
them into the wheel). ResNet-20 weights are ~1.1 MB each in fp32.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import REGISTRY_FILE, WEIGHTS_FORMAT, file_sha256, read_registry
from ..runfiles import SHIPPED_FILE
from .checkpoint import atomic_write, load_weights, weights_into
from .config import RECIPES, TrainConfig
from .epoch import evaluate
from .rundir import RunDir
from .state import build_model

__all__ = ["ShipError", "add_ship_arguments", "evaluate_weights", "prune_checkpoints", "run_ship", "ship_run",
           "shipped_name"]

EVAL_BATCH = 1000
RECIPE_KEYS = ("epochs", "milestones", "gamma", "schedule", "lr", "momentum", "nesterov", "weight_decay", "batch_size",
               "warmup_epochs", "label_smoothing", "augment", "amp", "seed", "subset", "val_split")  # fmt: skip


class ShipError(ValueError):
    """A run that may not ship (unfinished, not the full recipe) or a name already in the registry."""


def evaluate_weights(model: nn.Module, dataset: str, data_dir: str | Path,
                     subset: int | None = None) -> tuple[int, int]:  # fmt: skip
    """(correct, images) of ``model`` on the first ``subset`` (default: all) test images of ``dataset``, in fp32 on the
    CPU, batches of 1000, channels_last: the one evaluation that ships and the test suite repeat."""
    from ..data import get_dataset

    spec = get_dataset(dataset)
    loader, _ = spec.test_loader(spec.name, data_dir, EVAL_BATCH, "cpu", subset=subset, download=False,
                                 channels_last=True)  # fmt: skip
    model = model.to("cpu", torch.float32, memory_format=torch.channels_last)
    res = evaluate(model, loader)
    return round(res["acc"] * res["n"]), res["n"]


def _recipe_problems(cfg: TrainConfig) -> list[str]:
    """Why ``cfg`` is not the paper's full recipe for its data set (empty: it is)."""
    epochs, milestones = RECIPES[cfg.dataset]
    problems = []
    if cfg.epochs != epochs or tuple(cfg.milestones) != milestones:
        problems.append(f"{cfg.epochs} epochs with lr steps at {list(cfg.milestones)} (the recipe: {epochs}, "
                        f"{list(milestones)})")  # fmt: skip
    if cfg.subset is not None or cfg.val_split:
        problems.append(f"trained on part of the training set (subset {cfg.subset}, val_split {cfg.val_split})")
    return problems


def ship_run(run_dir: str | Path, *, data_dir: str | Path | None = None, tag: str | None = None,
             registry: str | Path | None = None, any_recipe: bool = False, test_subset: int | None = None,
             overwrite: bool = False) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """Ships the final weights of the finished run in ``run_dir``; returns (``"<model>.<tag>"``, registry entry).

    Args:
        run_dir: an ``odearch train`` run directory.
        data_dir: where the test set is (default: the run's ``data_dir``).
        tag: the weights' tag (default ``<dataset>_s<seed>``).
        registry: the registry file to write (default: the package's); the weights go beside it.
        any_recipe: ship a run that is not the paper's full recipe (tests only).
        test_subset: evaluate on the first N test images only (tests only).
        overwrite: replace an entry of the same name.
    """
    run = RunDir(Path(run_dir))
    result, cfg, rows, problems = _finished_run(run, any_recipe)
    tensors, meta = load_weights(run.last_weights)
    if meta.get("epoch") != cfg.epochs:
        raise ShipError(f"{run.last_weights} holds epoch {meta.get('epoch')}, not the final epoch {cfg.epochs}")
    model = build_model(cfg)
    weights_into(model, tensors, meta, run.last_weights, cfg.model)
    correct, n = evaluate_weights(model, cfg.dataset, data_dir or cfg.data_dir, test_subset)

    registry = Path(registry) if registry is not None else REGISTRY_FILE
    name = f"{cfg.model}.{tag or f'{cfg.dataset}_s{cfg.seed}'}"
    entries = read_registry(registry)
    if name in entries and not overwrite:
        raise ShipError(f"{name!r} is already in {registry}; pass --overwrite to replace it")
    file = f"{name}.safetensors"
    registry.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(registry.parent / file, run.last_weights.read_bytes())
    entries[name] = _entry(run, cfg, result, rows, file_sha256(registry.parent / file), file, correct, n) | (
        {"not_the_paper_recipe": problems} if problems else {})  # fmt: skip
    atomic_write(registry, (json.dumps({"format": WEIGHTS_FORMAT, "weights": entries}, indent=2) + "\n").encode())
    return name, entries[name]


def shipped_name(run_dir: str | Path, registry: str | Path | None = None) -> str | None:
    """The registry name whose file is byte for byte the run's final weights (None: not shipped)."""
    run = RunDir(Path(run_dir))
    if not run.last_weights.is_file():
        return None
    digest = file_sha256(run.last_weights)
    entries = read_registry(Path(registry) if registry is not None else REGISTRY_FILE)
    return next((name for name, entry in entries.items() if entry["sha256"] == digest), None)


def prune_checkpoints(run_dir: str | Path, registry: str | Path | None = None) -> dict[str, Any]:
    """Deletes ``RUN/checkpoints`` of a finished run whose final weights ship byte for byte (checked against the
    shipped file's sha256 and the registry's), after writing ``RUN/shipped.json``: the weights' registry name, sha256,
    and the files deleted with their sha256. Returns that record.

    Raises:
        ShipError: the run is not finished or its final weights are not shipped (ship them first).
    """
    run, reg = RunDir(Path(run_dir)), Path(registry) if registry is not None else REGISTRY_FILE
    _finished_run(run, any_recipe=True)
    name = shipped_name(run.root, reg)
    if name is None:
        raise ShipError(f"{run.last_weights} is not in {reg} byte for byte: ship the run before pruning it")
    entry = read_registry(reg)[name]
    if file_sha256(reg.parent / entry["file"]) != entry["sha256"]:
        raise ShipError(f"{reg.parent / entry['file']} does not match its registry sha256; not pruning {run.root}")
    files = sorted(p for p in run.checkpoints.rglob("*") if p.is_file() and not p.is_symlink())
    record = {"weights": name, "sha256": entry["sha256"], "test_acc": entry["test_acc"],
              "deleted": {str(p.relative_to(run.root)): file_sha256(p) for p in files},
              "note": "checkpoints deleted after shipping: the final weights are the shipped file (odearch eval RUN "
                      "reads it); the rest is in the repository history (git log -- RUN/checkpoints)"}  # fmt: skip
    atomic_write(run.shipped, (json.dumps(record, indent=2) + "\n").encode())
    shutil.rmtree(run.checkpoints)
    return record


def _finished_run(run: RunDir, any_recipe: bool) -> tuple[dict[str, Any], TrainConfig, list[dict[str, Any]],
                                                          list[str]]:  # fmt: skip
    """(result, config, metrics rows, recipe problems) of a run that may ship (not yet pruned): finished, CIFAR, the
    paper's full recipe unless ``any_recipe``; else ShipError."""
    if run.shipped.is_file() and not run.checkpoints.exists():
        raise ShipError(f"{run.root} is already shipped and pruned: {run.shipped} names its weights")
    if not run.result.is_file():
        raise ShipError(f"{run.root} has no result.json: the run has not finished (or never started)")
    result, cfg, rows = run.read_result(), run.read_config(), run.read_metrics()
    if result.get("status") != "complete" or result.get("epochs_done") != cfg.epochs or len(rows) != cfg.epochs:
        raise ShipError(f"{run.root} is not finished: status {result.get('status')!r}, {len(rows)} of {cfg.epochs} "
                        f"epochs in metrics.jsonl; resume it with `odearch train --resume {run.root}`")  # fmt: skip
    if cfg.dataset not in ("cifar10", "cifar100"):
        raise ShipError(f"{run.root}: only CIFAR runs ship (this one is {cfg.dataset})")
    problems = _recipe_problems(cfg)
    if problems and not any_recipe:
        raise ShipError(f"{run.root} is not the paper's full recipe: {'; '.join(problems)}")
    return result, cfg, rows, problems


def _entry(run: RunDir, cfg: TrainConfig, result: dict[str, Any], rows: list[dict[str, Any]], sha256: str, file: str,
           correct: int, n: int) -> dict[str, Any]:  # fmt: skip
    """The registry entry of the shipped weights: recipe, this evaluation, and the run's provenance."""
    commits = list(dict.fromkeys(r["git_commit"] for r in rows if r.get("git_commit"))) or [result.get("git_commit")]
    return {
        "file": file, "sha256": sha256, "model": cfg.model, "scheme": cfg.scheme,
        "model_kwargs": cfg.model_kwargs, "num_classes": cfg.num_classes, "dataset": cfg.dataset,
        "recipe": {k: getattr(cfg, k) for k in RECIPE_KEYS} | {"train_images": result.get("train_images")},
        "test_acc": correct / n, "test_correct": correct, "test_images": n,
        "eval": f"checkpoints/last.safetensors, fp32, CPU, channels_last, batch {EVAL_BATCH}, no augmentation",
        "run_final_test_acc": rows[-1].get("test_acc"), "run": str(run.root),
        "run_config_hash": result.get("config_hash"),
        "commits": commits, "git_dirty": any(bool(r.get("git_dirty")) for r in rows) or bool(result.get("git_dirty")),
        "wall_seconds": result.get("wall_seconds"), "device_name": result.get("device_name"),
        "torch_version": result.get("torch_version"),
    }  # fmt: skip


def add_ship_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``odearch ship``."""
    p.add_argument("run", help="a finished run directory (result.json status complete)")
    p.add_argument("--data-dir", help="directory holding the test set (default: the run's)")
    p.add_argument("--tag", help="weights tag after the dot (default: <dataset>_s<seed>)")
    p.add_argument("--registry", help="registry file to write (default: the package's odearch/weights/registry.json)")
    p.add_argument("--any-recipe", action="store_true", help="ship a run that is not the paper's full recipe")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test images only (for tests)")
    p.add_argument("--overwrite", action="store_true", help="replace an entry of the same name")
    p.add_argument("--prune-checkpoints", action="store_true",
                   help=f"then delete RUN/checkpoints and write RUN/{SHIPPED_FILE} (a run already shipped byte for "
                        "byte is only pruned)")  # fmt: skip


def run_ship(args: argparse.Namespace) -> int:
    """``odearch ship``: ships the run and prints the entry; with ``--prune-checkpoints`` deletes its checkpoints."""
    already = shipped_name(args.run, args.registry) if args.prune_checkpoints and not args.overwrite else None
    if already is None:
        _ship_and_print(args)
    else:
        print(f"{args.run}: final weights already shipped as {already}")
    if args.prune_checkpoints:
        record = prune_checkpoints(args.run, args.registry)
        print(f"deleted {len(record['deleted'])} checkpoint files of {args.run}; {Path(args.run) / SHIPPED_FILE} "
              f"names the shipped weights {record['weights']}")  # fmt: skip
    return 0


def _ship_and_print(args: argparse.Namespace) -> None:
    name, entry = ship_run(args.run, data_dir=args.data_dir, tag=args.tag, registry=args.registry,
                           any_recipe=args.any_recipe, test_subset=args.test_subset,
                           overwrite=args.overwrite)  # fmt: skip
    print(f"shipped {name}: test accuracy {100 * entry['test_acc']:.2f}% ({entry['test_correct']}/"
          f"{entry['test_images']}), sha256 {entry['sha256']}, {entry['file']}")  # fmt: skip
    if entry["run_final_test_acc"] is not None and abs(entry["run_final_test_acc"] - entry["test_acc"]) > 0:
        print(f"note: the run's own last-epoch evaluation read {100 * entry['run_final_test_acc']:.2f}% (another "
              f"machine or evaluation order); the registry records this evaluation")  # fmt: skip
