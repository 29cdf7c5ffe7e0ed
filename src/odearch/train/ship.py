"""Ship a finished run's final weights inside the package: ``odearch ship RUN``.

Refuses a run that has not finished all its epochs (``result.json`` status ``complete``, one ``metrics.jsonl`` row
per epoch) or that is not the paper's full recipe (all epochs of the data set's schedule, the whole training set);
verifies the final weights (``checkpoints/last.safetensors``) against the sha256 of their checkpoint manifest, as
``eval`` and ``--resume`` do; writes them to ``odearch/weights/<model>.<tag>.safetensors.xz`` (packed, below);
evaluates the shipped file on the test set in fp32 on the CPU and records the number of correct images, with its
sha256, data set, recipe, the run and the commits that trained it, in ``odearch/weights/registry.json``
(:mod:`odearch.models._pretrained` reads it). The test suite re-evaluates every shipped file the same way
(:func:`evaluate_weights`) and checks the recorded count exactly.

What is written: the verified bytes for a run trained in fp32 (or with ``--full-precision``); for a run trained under
bf16 autocast, a compact file (:mod:`odearch.train.compact`) with the convolution and linear weights in bf16, as
autocast used them at every step, and the rest fp32: half the bytes, and bitwise the same logits under autocast,
which ship checks on the test set first (the entry's ``stored`` record; ``final_weights_sha256`` names the master
weights it was made from). Its fp32 evaluation, the recorded one, differs slightly from the master weights'.
Every shipped file is xz-packed (``<model>.<tag>.safetensors.xz``, lossless, :mod:`odearch.packing`): the
entry's ``sha256`` pins the packed file, ``weights_sha256`` the safetensors bytes inside. ``--repack``
(:func:`repack_shipped`) rewrites the shipped file of a pruned run so, and compact for a bf16 run whose fp32 master
weights shipped byte for byte before compact storage existed.

Tags (:func:`default_tag`): ``<dataset>_s<seed>`` for the paper's recipe in fp32, with a suffix for each thing that
sets a run apart from it, before the seed: ``bf16`` / ``fp16`` (trained under autocast), and for nets with LM
coefficients ``nokdecay`` (``lm_weight_decay none``) or ``kdecay`` (``k``), e.g. ``cifar10_nokdecay_bf16_s1``. A
name already in the registry is never replaced by the weights of another run unless that run still holds them in its
checkpoints (``--overwrite``); a run pruned after shipping (its ``shipped.json`` names the entry) keeps it always.

``--prune-checkpoints`` then deletes the run's ``checkpoints/`` (the final weights are the shipped file, byte for byte
or compact), which ``odearch eval RUN`` then reads: a finished ResNet-20 campaign run keeps ~1.1 MB in the package
(fp32; 0.57 MB compact) instead of ~3.3 MB of checkpoints in the tracked tree. It refuses unless git's ``HEAD`` holds
every file to be deleted unchanged (the best-epoch weights and the optimizer state then stay in the repository's
history), or ``--force`` is given. It is crash-safe: ``RUN/shipped.json`` (the weights' name, sha256, the registry used,
the files to delete) is written atomically first, ``eval`` reads the shipped copy from then on, and a second
``--prune-checkpoints`` finishes a prune that a kill cut short. A run already shipped is pruned without shipping again.

Run it from a source checkout (``pip install -e .`` or ``PYTHONPATH=src``): it writes into the package's source
tree, ``src/odearch/weights/``; commit the new ``.safetensors.xz`` and ``registry.json`` (pyproject's package-data puts
them into the wheel).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import (
    WEIGHTS_FORMAT,
    PretrainedError,
    file_sha256,
    read_registry,
    read_shipped_record,
    registry_file,
    registry_problems,
    shipped_record_registry,
    shipped_run_weights,
)
from ..packing import XZ_SUFFIX, pack_weights, unpack_weights
from ..runfiles import SHIPPED_FILE
from . import generations
from .checkpoint import CheckpointError, atomic_write, tensors_bytes, weights_bytes, weights_from_bytes, weights_into
from .compact import autocast_mismatches, compact_state, rounded_copy
from .config import RECIPES, TrainConfig
from .epoch import evaluate
from .rundir import RunDir
from .state import build_model

__all__ = [
    "ShipError",
    "add_ship_arguments",
    "default_tag",
    "evaluate_weights",
    "prune_checkpoints",
    "repack_shipped",
    "run_ship",
    "ship_run",
    "shipped_name",
]

EVAL_BATCH = 1000
RECIPE_KEYS = (
    "epochs",
    "milestones",
    "gamma",
    "schedule",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "batch_size",
    "warmup_epochs",
    "label_smoothing",
    "augment",
    "amp",
    "seed",
    "subset",
    "val_split",
)


class ShipError(ValueError):
    """A run that may not ship (unfinished, not the full recipe, damaged) or a name already in the registry."""


def evaluate_weights(
    model: nn.Module, dataset: str, data_dir: str | Path, subset: int | None = None
) -> tuple[int, int]:
    """(correct, images) of ``model`` on the first ``subset`` (default: all) test images of ``dataset``, in fp32 on the
    CPU, batches of 1000, channels_last: the one evaluation that ships and the test suite repeat."""
    model = model.to("cpu", torch.float32, memory_format=torch.channels_last)
    res = evaluate(model, _test_loader(dataset, data_dir, subset))
    return round(res["acc"] * res["n"]), res["n"]


def _test_loader(dataset: str, data_dir: str | Path, subset: int | None) -> Any:
    """The first ``subset`` (default: all) test images of ``dataset``, CPU, channels_last, batches of 1000."""
    from ..data import get_dataset

    spec = get_dataset(dataset)
    return spec.test_loader(spec.name, data_dir, EVAL_BATCH, "cpu", subset=subset, download=False, channels_last=True)[
        0
    ]


STORED_TENSORS = "the weights and biases of the convolutions and linear layers (what autocast casts); the rest fp32"


def _compact(
    model: nn.Module, meta: dict[str, Any], dtype: torch.dtype, dataset: str, data_dir: str | Path, subset: int | None
) -> tuple[nn.Module, bytes, dict[str, Any]]:
    """(the net as its compact file loads, the file's bytes, the entry's record of the storage) of ``model`` stored
    in ``dtype`` (:mod:`odearch.train.compact`); ShipError when, under autocast, the compact net's logits differ from
    the master weights' in any bit on any test batch."""
    model = model.to("cpu", torch.float32, memory_format=torch.channels_last)
    compact = rounded_copy(model, dtype)
    mismatched, correct, n = autocast_mismatches(model, compact, _test_loader(dataset, data_dir, subset), dtype)
    name = str(dtype).removeprefix("torch.")
    if mismatched:
        raise ShipError(
            f"storing the weights in {name} would change the net: under {name} autocast its logits differ from "
            f"the fp32 master weights' on {mismatched} test batches; ship them byte for byte with --full-precision"
        )
    data = tensors_bytes(compact_state(model, dtype), {**meta, "stored_dtype": name})
    stored = {"dtype": name, "tensors": STORED_TENSORS, "autocast_test_correct": correct, "autocast_test_images": n}
    evaluated = f"the shipped file ({name} storage), fp32, CPU, channels_last, batch {EVAL_BATCH}, no augmentation"
    return compact, data, {"stored": stored, "eval": evaluated}


def _autocast_dtype(cfg: TrainConfig, result: dict[str, Any], rows: list[dict[str, Any]]) -> torch.dtype | None:
    """bfloat16 for a run trained under bf16 autocast throughout (its weights ship compact), else None."""
    return torch.bfloat16 if _precisions(cfg, result, rows) == {"bfloat16"} else None


def _final_sha(entry: dict[str, Any]) -> str:
    """The sha256 of the run's final weights that a registry entry holds: recorded as such, else its unpacked
    weights', else its file's."""
    return entry.get("final_weights_sha256") or entry.get("weights_sha256") or entry["sha256"]


def _recipe_problems(cfg: TrainConfig) -> list[str]:
    """Why ``cfg`` is not the paper's full recipe for its data set (empty: it is)."""
    epochs, milestones = RECIPES[cfg.dataset]
    problems = []
    if cfg.epochs != epochs or tuple(cfg.milestones) != milestones:
        problems.append(
            f"{cfg.epochs} epochs with lr steps at {list(cfg.milestones)} (the recipe: {epochs}, {list(milestones)})"
        )
    if cfg.subset is not None or cfg.val_split:
        problems.append(f"trained on part of the training set (subset {cfg.subset}, val_split {cfg.val_split})")
    return problems


def ship_run(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    tag: str | None = None,
    registry: str | Path | None = None,
    any_recipe: bool = False,
    test_subset: int | None = None,
    overwrite: bool = False,
    ema: bool = False,
    full_precision: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Ships the final weights of the finished run in ``run_dir``; returns (``"<model>.<tag>"``, registry entry).

    Args:
        run_dir: an ``odearch train`` run directory.
        data_dir: where the test set is (default: the run's ``data_dir``).
        tag: the weights' tag (default :func:`default_tag`).
        registry: the registry file to write (default: the package's); the weights go beside it.
        any_recipe: ship a run that is not the paper's full recipe (tests only).
        test_subset: evaluate on the first N >= 1 test images only (tests only).
        overwrite: replace an entry of the same name shipped from this run, or from another run that still holds
            those weights in its checkpoints.
        ema: ship the final EMA of the weights (a run trained with ``--ema-decay``) instead; its default tag has
            ``ema`` before the seed.
        full_precision: ship a bf16 run's fp32 master weights byte for byte instead of the compact file
            (:mod:`odearch.train.compact`).
    """
    if test_subset is not None and test_subset < 1:
        raise ShipError(
            f"test_subset must be a positive number of test images, got {test_subset} (leave it out to "
            "evaluate the whole test set)"
        )
    run = RunDir(Path(run_dir))
    registry = Path(registry) if registry is not None else registry_file()
    result, cfg, rows, problems = _finished_run(run, any_recipe)
    data, tensors, meta = _verified_final(run)
    ema_tensors = _final_ema(run) if ema else None
    if meta.get("epoch") != cfg.epochs:
        raise ShipError(f"{run.last_weights} holds epoch {meta.get('epoch')}, not the final epoch {cfg.epochs}")
    damaged = registry_problems(registry)
    if damaged:
        raise ShipError(f"not shipping into a damaged registry: {damaged[0]}; repair it first (a ship rewrites it)")
    name = f"{cfg.model}.{tag or default_tag(cfg, result, rows, tensors, ema=ema)}"
    entries = read_registry(registry)
    _check_name(name, entries, run, result, registry, overwrite)
    model = build_model(cfg)
    weights_into(model, tensors if ema_tensors is None else ema_tensors, meta, run.last_weights, cfg.model)
    final = {} if ema else {"final_weights_sha256": generations.sha256(data)}
    meta = {**meta, "ema": True} if ema else meta
    if ema_tensors is not None:
        data = weights_bytes(model, meta)
    store = None if full_precision else _autocast_dtype(cfg, result, rows)
    stored: dict[str, Any] = {}
    if store is not None:
        model, data, stored = _compact(model, meta, store, cfg.dataset, data_dir or cfg.data_dir, test_subset)
    correct, n = evaluate_weights(model, cfg.dataset, data_dir or cfg.data_dir, test_subset)
    file, packed = f"{name}.safetensors{XZ_SUFFIX}", pack_weights(data)
    registry.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(registry.parent / file, packed)
    replaced = entries.get(name, {}).get("file")
    entries[name] = _entry(run, cfg, result, rows, generations.sha256(packed), file, correct, n) | final | stored
    entries[name] |= {"weights_sha256": generations.sha256(data)}
    entries[name] |= {"not_the_paper_recipe": problems} if problems else {}
    if ema:
        entries[name] |= {"ema": True, "ema_decay": cfg.ema_decay}
    atomic_write(registry, (json.dumps({"format": WEIGHTS_FORMAT, "weights": entries}, indent=2) + "\n").encode())
    if replaced and replaced != file:  # --overwrite of an entry stored unpacked
        (registry.parent / replaced).unlink(missing_ok=True)
    return name, entries[name]


def repack_shipped(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    test_subset: int | None = None,
    force: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Rewrites the shipped file of a pruned run as a ship writes it today; returns (name, new entry): packed
    (``<name>.safetensors.xz``, :mod:`odearch.packing`), and for a bf16 run whose fp32 master weights shipped byte for
    byte (before compact storage existed) compact, after the bitwise check under autocast of :func:`ship_run` and
    the fp32 evaluation the registry records. Writes the new file, the registry, ``RUN/shipped.json``, then deletes
    the old file; run again after a kill, it finishes what is left.

    Raises:
        ShipError: the run is not pruned, already stored so and finished, its shipped file is damaged, or git's HEAD
            does not hold that file unchanged (its bytes would be lost) and not ``force``.
    """
    run, (record, registry, entries) = RunDir(Path(run_dir)), _pruned_entry(run_dir)
    name = record["weights"]
    entry, old = entries[name], registry.parent / entries[name]["file"]
    cfg = run.read_config()
    store = None if entry.get("stored") else _autocast_dtype(cfg, run.read_result(), run.read_metrics())
    if entry.get("weights_sha256") and store is None:
        return name, _finish_repack(run, record, registry, entry)
    if _not_in_git(old.parent, [old]) and not force:
        raise ShipError(
            f"not repacking {name}: git's HEAD does not hold {old} unchanged, so its bytes would be lost; commit it "
            "first, or pass --force"
        )
    data, new = unpack_weights(old.read_bytes()), dict(entry)
    if store is not None:
        new["final_weights_sha256"] = generations.sha256(data)  # the fp32 master weights, shipped byte for byte
        data, stored = _compact_master(cfg, store, data, old, data_dir, test_subset)
        stored["stored"]["converted"] = f"from the fp32 file shipped first (sha256 {entry['sha256']}, in git history)"
        new |= stored
    packed = pack_weights(data)
    new |= {"file": f"{name}.safetensors{XZ_SUFFIX}", "sha256": generations.sha256(packed)}
    new |= {"weights_sha256": generations.sha256(data)}
    atomic_write(registry.parent / new["file"], packed)
    entries[name] = new
    atomic_write(registry, (json.dumps({"format": WEIGHTS_FORMAT, "weights": entries}, indent=2) + "\n").encode())
    return name, _finish_repack(run, record, registry, new)


def _pruned_entry(run_dir: str | Path) -> tuple[dict[str, Any], Path, dict[str, dict[str, Any]]]:
    """(shipped.json record, registry file, its entries) of a pruned run whose registry is sound and lists it."""
    try:
        record = read_shipped_record(run_dir)
    except PretrainedError as e:
        raise ShipError(f"not repacking {run_dir}: {e}") from None
    if record is None:
        raise ShipError(f"{run_dir} is not pruned: ship it (--overwrite to re-ship), then prune it")
    registry = shipped_record_registry(run_dir, record)
    damaged = registry_problems(registry)
    if damaged:
        raise ShipError(f"not repacking into a damaged registry: {damaged[0]}; repair it first")
    entries = read_registry(registry)
    entry = entries.get(record["weights"])
    path = registry.parent / entry["file"] if entry else None
    if path is None or not path.is_file() or file_sha256(path) != entry["sha256"]:  # type: ignore[index]
        raise ShipError(f"{run_dir / SHIPPED_FILE} names {record['weights']}, missing or damaged in {registry}")
    return record, registry, entries


def _compact_master(
    cfg: TrainConfig, store: torch.dtype, data: bytes, path: Path, data_dir: str | Path | None, test_subset: int | None
) -> tuple[bytes, dict[str, Any]]:
    """(compact file bytes, the entry's storage and evaluation keys) of the fp32 master weights ``data``."""
    model = build_model(cfg)
    tensors, meta = weights_from_bytes(data, path)
    weights_into(model, tensors, meta, path, cfg.model)
    model, compact, stored = _compact(model, meta, store, cfg.dataset, data_dir or cfg.data_dir, test_subset)
    correct, n = evaluate_weights(model, cfg.dataset, data_dir or cfg.data_dir, test_subset)
    return compact, stored | {"test_acc": correct / n, "test_correct": correct, "test_images": n}


def _finish_repack(run: RunDir, record: dict[str, Any], registry: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Points ``RUN/shipped.json`` at the repacked entry and deletes the run's old unpacked file; ShipError when
    there was nothing left to do."""
    old = registry.parent / entry["file"].removesuffix(XZ_SUFFIX)
    stale = old.is_file() and old.name != entry["file"]
    current = record["sha256"] == entry["sha256"] and record.get("test_acc") == entry["test_acc"]
    if current and not stale:
        raise ShipError(f"{record['weights']} is already stored as a ship writes it today ({entry['file']})")
    if not current:
        record |= {"sha256": entry["sha256"], "test_acc": entry["test_acc"]}
        record |= {"note": PRUNE_NOTE[bool(entry.get("stored"))]}
        atomic_write(run.shipped, (json.dumps(record, indent=2) + "\n").encode())
    if stale:
        old.unlink()
    return entry


def _final_ema(run: RunDir) -> dict[str, torch.Tensor]:
    """The EMA weights kept in the run's final training state (checked against its manifest); ShipError if the run
    kept no EMA."""
    try:
        state = torch.load(io.BytesIO(generations.read_verified(run.last_state)), map_location="cpu", weights_only=True)
    except CheckpointError as e:
        raise ShipError(f"not shipping {run.root}: {e}") from None
    ema = (state.get("train_step") or {}).get("ema")
    if not ema:
        raise ShipError(f"{run.root} was trained without --ema-decay: it has no EMA weights to ship (drop --ema)")
    return ema


def _verified_final(run: RunDir) -> tuple[bytes, dict[str, torch.Tensor], dict[str, Any]]:
    """(bytes, tensors, metadata) of the run's final weights, the bytes checked against their checkpoint manifest
    (:func:`odearch.train.generations.read_verified`, as eval and resume do); damage is a ShipError."""
    try:
        data = generations.read_verified(run.last_weights)
        return (data, *weights_from_bytes(data, run.last_weights))
    except CheckpointError as e:
        raise ShipError(f"not shipping {run.root}: {e}") from None


LM_DECAY_TAGS = {"kappa": "", "k": "kdecay", "none": "nokdecay"}  # kappa: the official code's, the default
PRECISION_TAGS = {"bfloat16": "bf16", "float16": "fp16"}


def default_tag(
    cfg: TrainConfig,
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    tensors: dict[str, torch.Tensor],
    ema: bool = False,
) -> str:
    """``<dataset>[_<lm decay>][_<precision>]_s<seed>``: the paper's recipe in fp32 has no suffix; a net with LM
    coefficients trained with ``lm_weight_decay`` none or k gets ``nokdecay`` / ``kdecay``; autocast ``bf16`` /
    ``fp16`` (the precision recorded per epoch, else in result.json, else implied by ``amp`` and the device)."""
    parts = [cfg.dataset]
    if any(k.rpartition(".")[2] == "lm_k" for k in tensors):
        parts.append(LM_DECAY_TAGS.get(cfg.lm_weight_decay, f"{cfg.lm_weight_decay}decay"))
    parts += sorted(PRECISION_TAGS[d] for d in _precisions(cfg, result, rows) if d in PRECISION_TAGS)
    parts += ["ema"] if ema else []
    return "_".join([p for p in parts if p] + [f"s{cfg.seed}"])


def _precisions(cfg: TrainConfig, result: dict[str, Any], rows: list[dict[str, Any]]) -> set[str]:
    """The autocast dtypes a run trained in (``"float32"``: none): recorded per epoch, else in result.json, else
    implied by ``amp`` and the device (a run from before the precision was recorded)."""
    dtypes = {r.get("amp_dtype") for r in rows} | {result.get("amp_dtype")}
    dtypes.discard(None)
    if not dtypes:
        cuda = str(result.get("device", "")).startswith("cuda")
        dtypes = {{"bf16": "bfloat16", "fp16": "float16", "auto": "bfloat16" if cuda else ""}.get(cfg.amp, "")}
    return dtypes


def _check_name(
    name: str, entries: dict[str, dict[str, Any]], run: RunDir, result: dict[str, Any], registry: Path, overwrite: bool
) -> None:
    """ShipError unless ``name`` may take the run's weights: a new name, or (``overwrite``) one shipped from this run
    or from another that still holds those weights in its checkpoints. Never one a pruned run's shipped.json names."""
    old = entries.get(name)
    if old is None:
        return
    other = _entry_run(old, registry)
    if (
        other is not None
        and other.resolve() == run.root.resolve()
        and old.get("run_config_hash") == result.get("config_hash")
    ):
        if not overwrite:
            raise ShipError(f"{name!r} is already in {registry}, shipped from this run; pass --overwrite to replace it")
        return
    where = f"another run, {old.get('run') or '(not recorded)'}"
    try:
        record = read_shipped_record(other) if other is not None else None
    except PretrainedError:
        record = {"weights": name}  # a damaged record: assume the worst
    if record is not None and record["weights"] == name:
        raise ShipError(
            f"{name!r} in {registry} holds the final weights of {where}, whose checkpoints were pruned "
            f"({other / SHIPPED_FILE} names it): that file is their only copy, never replaced; ship this "
            "run with another --tag"
        )
    if not overwrite:
        raise ShipError(
            f"{name!r} is already in {registry}, shipped from {where}; ship this run with another --tag "
            "(the default tag sets runs apart only by data set, LM decay, precision and seed)"
        )
    theirs = RunDir(other).last_weights if other is not None else None
    if theirs is None or not theirs.is_file() or file_sha256(theirs) != _final_sha(old):
        raise ShipError(
            f"--overwrite refused: {name!r} in {registry} was shipped from {where}, which does not hold "
            "those weights any more (pruned, moved or changed): the shipped file may be their only copy; "
            "ship this run with another --tag"
        )


def _entry_run(entry: dict[str, Any], registry: Path) -> Path | None:
    """The run directory a registry entry was shipped from, looked for as recorded (relative paths: from here, then
    from each folder above the registry); None when it is not found."""
    recorded = entry.get("run")
    if not isinstance(recorded, str) or not recorded:
        return None
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, *(d / path for d in registry.resolve().parents)]
    return next((c for c in candidates if (c / "config.yaml").is_file() or (c / SHIPPED_FILE).is_file()), None)


def shipped_name(run_dir: str | Path, registry: str | Path | None = None) -> str | None:
    """The registry name whose file holds the run's final weights, byte for byte or compact (None: not shipped)."""
    run = RunDir(Path(run_dir))
    if not run.last_weights.is_file():
        return None
    digest = file_sha256(run.last_weights)
    entries = read_registry(Path(registry) if registry is not None else registry_file())
    return next((name for name, entry in entries.items() if _final_sha(entry) == digest), None)


def prune_checkpoints(
    run_dir: str | Path, registry: str | Path | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Deletes ``RUN/checkpoints`` of a finished run whose final weights ship, byte for byte or compact (verified
    against their manifest, the shipped file's sha256 and the registry's), after writing ``RUN/shipped.json``
    atomically: the weights' registry name, sha256, the registry file (when not the package's), and the files to
    delete with their sha256. Returns that record; ``already_pruned`` / ``completed`` set when it found shipped.json
    (a prune done, or one cut short by a kill, which it completes).

    Raises:
        ShipError: the run is not finished, its final weights are damaged or not shipped (ship them first), or git's
            HEAD does not hold every file to delete unchanged and not ``force``.
    """
    run = RunDir(Path(run_dir))
    try:
        record = read_shipped_record(run.root)
    except PretrainedError as e:
        raise ShipError(str(e)) from None
    if record is not None:
        return _complete_prune(run, record)
    reg = Path(registry) if registry is not None else registry_file()
    _finished_run(run, any_recipe=True)
    digest = generations.sha256(_verified_final(run)[0])
    name = next((n for n, e in read_registry(reg).items() if _final_sha(e) == digest), None)
    if name is None:
        raise ShipError(f"{run.last_weights} is not shipped in {reg}: ship the run before pruning it")
    entry = read_registry(reg)[name]
    if file_sha256(reg.parent / entry["file"]) != entry["sha256"]:
        raise ShipError(f"{reg.parent / entry['file']} does not match its registry sha256; not pruning {run.root}")
    files = sorted(p for p in run.checkpoints.rglob("*") if p.is_file() and not p.is_symlink())
    lost = _not_in_git(run.root, files)
    if lost and not force:
        raise ShipError(
            f"not pruning {run.root}: git's HEAD does not hold {len(lost)} of its {len(files)} checkpoint "
            f"files unchanged ({_listed(run, lost)}), so deleting them would lose them (best-epoch "
            "weights, optimizer state); commit them first, or pass --force to delete them anyway"
        )
    record = {
        "weights": name,
        "sha256": entry["sha256"],
        "test_acc": entry["test_acc"],
        **({} if _is_package_registry(reg) else {"registry": str(reg.resolve())}),
        "deleted": {str(p.relative_to(run.root)): file_sha256(p) for p in files},
        **({"not_in_git": [str(p.relative_to(run.root)) for p in lost]} if lost else {}),
        "note": PRUNE_NOTE[bool(entry.get("stored"))],
    }
    atomic_write(run.shipped, (json.dumps(record, indent=2) + "\n").encode())  # first: a kill from here on is resumable
    shutil.rmtree(run.checkpoints)
    return record


PRUNE_NOTE = {
    False: "checkpoints deleted after shipping: the final weights are the shipped file (odearch eval RUN reads it); "
    "the rest is in the repository history (git log -- RUN/checkpoints)",
    True: "checkpoints deleted after shipping: the final weights are the shipped file, stored as autocast computes "
    "with them (odearch eval RUN reads it); the fp32 master weights and the rest are in the repository history "
    "where they were committed (git log -- RUN/checkpoints)",
}


def _is_package_registry(reg: Path) -> bool:
    return reg.resolve() == registry_file().resolve()


def _listed(run: RunDir, files: list[Path], most: int = 3) -> str:
    """``files`` relative to the run, the first ``most`` of them."""
    names = [str(p.relative_to(run.root)) for p in files]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _complete_prune(run: RunDir, record: dict[str, Any]) -> dict[str, Any]:
    """The prune of a run that has a shipped.json: nothing to do (``already_pruned``), or the deletion a kill cut
    short finished (``completed``) once the shipped copy checks out and every file left is one the record lists."""
    if not run.checkpoints.exists() and not run.checkpoints.is_symlink():
        return {**record, "already_pruned": True}
    try:
        shipped_run_weights(run.root)
    except PretrainedError as e:
        raise ShipError(f"not completing the prune of {run.root}: {e}") from None
    listed = record.get("deleted", {})
    left = sorted(p for p in run.checkpoints.rglob("*") if p.is_file() and not p.is_symlink())
    strange = [p for p in left if listed.get(str(p.relative_to(run.root))) != file_sha256(p)]
    if strange:
        raise ShipError(
            f"{run.shipped} records a prune of {run.checkpoints}, but it holds files that the record "
            f"does not list as deleted ({_listed(run, strange)}); move them out, then prune again"
        )
    shutil.rmtree(run.checkpoints)
    return {**record, "completed": True, "deleted_now": len(left)}


def _not_in_git(root: Path, files: list[Path]) -> list[Path]:
    """The ``files`` that git's HEAD does not hold byte for byte (``git ls-tree`` against ``git hash-object``): all
    of them outside a repository, without git, or where git fails."""
    if not files:
        return []
    try:
        top = os.path.realpath(_git(["rev-parse", "--show-toplevel"], root).decode().strip())
        rels = {f: Path(os.path.realpath(f)).relative_to(top).as_posix() for f in files}
        tree = _git(["ls-tree", "-r", "-z", "--full-tree", "HEAD", "--", *sorted(set(rels.values()))], Path(top))
        hashes = _git(["hash-object", "--", *(os.path.realpath(f) for f in files)], Path(top)).decode().split()
    except (OSError, ValueError, subprocess.CalledProcessError):
        return list(files)
    blobs = {}
    for item in tree.split(b"\0"):
        info, _, path = item.partition(b"\t")
        if len(info.split()) == 3 and info.split()[1] == b"blob":
            blobs[path.decode(errors="replace")] = info.split()[2].decode()
    return [f for f, h in zip(files, hashes, strict=True) if blobs.get(rels[f]) != h]


def _git(args: list[str], cwd: Path) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, timeout=120).stdout


def _finished_run(run: RunDir, any_recipe: bool) -> tuple[dict[str, Any], TrainConfig, list[dict[str, Any]], list[str]]:
    """(result, config, metrics rows, recipe problems) of a run that may ship (not yet pruned): finished, CIFAR, the
    paper's full recipe unless ``any_recipe``; else ShipError."""
    if run.shipped.is_file():
        raise ShipError(
            f"{run.root} is already shipped and pruned: {run.shipped} names its weights (a prune cut short "
            "is finished by `odearch ship RUN --prune-checkpoints`)"
        )
    if not run.result.is_file():
        raise ShipError(f"{run.root} has no result.json: the run has not finished (or never started)")
    result, cfg, rows = run.read_result(), run.read_config(), run.read_metrics()
    if result.get("status") != "complete" or result.get("epochs_done") != cfg.epochs or len(rows) != cfg.epochs:
        raise ShipError(
            f"{run.root} is not finished: status {result.get('status')!r}, {len(rows)} of {cfg.epochs} "
            f"epochs in metrics.jsonl; resume it with `odearch train --resume {run.root}`"
        )
    if cfg.dataset not in ("cifar10", "cifar100"):
        raise ShipError(f"{run.root}: only CIFAR runs ship (this one is {cfg.dataset})")
    if cfg.refine_at:
        raise ShipError(
            f"{run.root} is a multi-level run (refined after epochs {list(cfg.refine_at)}): its weights "
            f"are not {cfg.model}'s shape, and the registry names weights by the model they load into; "
            "evaluate it with `odearch eval RUN`"
        )
    problems = _recipe_problems(cfg)
    if problems and not any_recipe:
        raise ShipError(f"{run.root} is not the paper's full recipe: {'; '.join(problems)}")
    return result, cfg, rows, problems


def _entry(
    run: RunDir,
    cfg: TrainConfig,
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    sha256: str,
    file: str,
    correct: int,
    n: int,
) -> dict[str, Any]:
    """The registry entry of the shipped weights: recipe, this evaluation, and the run's provenance."""
    commits = list(dict.fromkeys(r["git_commit"] for r in rows if r.get("git_commit"))) or [result.get("git_commit")]
    return {
        "file": file,
        "sha256": sha256,
        "model": cfg.model,
        "scheme": cfg.scheme,
        "model_kwargs": cfg.model_kwargs,
        "num_classes": cfg.num_classes,
        "dataset": cfg.dataset,
        "recipe": {k: getattr(cfg, k) for k in RECIPE_KEYS} | {"train_images": result.get("train_images")},
        "test_acc": correct / n,
        "test_correct": correct,
        "test_images": n,
        "eval": f"checkpoints/last.safetensors, fp32, CPU, channels_last, batch {EVAL_BATCH}, no augmentation",
        "run_final_test_acc": rows[-1].get("test_acc"),
        "run": str(run.root),
        "run_config_hash": result.get("config_hash"),
        "commits": commits,
        "git_dirty": any(bool(r.get("git_dirty")) for r in rows) or bool(result.get("git_dirty")),
        "wall_seconds": result.get("wall_seconds"),
        "device_name": result.get("device_name"),
        "torch_version": result.get("torch_version"),
    }


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive number of test images, got {value} (leave the flag out to evaluate the whole test set)"
        )
    return value


def add_ship_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``odearch ship``."""
    p.add_argument("run", help="a finished run directory (result.json status complete)")
    p.add_argument("--data-dir", help="directory holding the test set (default: the run's)")
    p.add_argument(
        "--tag",
        help="weights tag after the dot (default: <dataset>_s<seed> for the paper's recipe in "
        "fp32; what sets a run apart from it goes before the seed: nokdecay / kdecay for an "
        "LM net with --lm-weight-decay none / k, bf16 / fp16 for autocast, e.g. "
        "cifar10_nokdecay_bf16_s1; a run that differs otherwise from one already shipped "
        "under its default tag is refused: give it a --tag)",
    )
    p.add_argument("--registry", help="registry file to write (default: the package's odearch/weights/registry.json)")
    p.add_argument("--any-recipe", action="store_true", help="ship a run that is not the paper's full recipe")
    p.add_argument(
        "--test-subset", type=_positive, metavar="N", help="evaluate on the first N >= 1 test images only (for tests)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an entry of the same name shipped from this run (or from another run that still "
        f"holds those weights in its checkpoints; never one a pruned run's {SHIPPED_FILE} names)",
    )
    p.add_argument(
        "--prune-checkpoints",
        action="store_true",
        help=f"then delete RUN/checkpoints, after writing RUN/{SHIPPED_FILE} (a run already shipped byte "
        "for byte is only pruned; a prune cut short is completed); refused unless git's HEAD holds "
        "every file to delete unchanged",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --prune-checkpoints: delete checkpoint files that git does not hold (they are lost)",
    )
    p.add_argument(
        "--ema",
        action="store_true",
        help="ship the final EMA of the weights of a run trained with --ema-decay (tag: ..._ema_s<seed>)",
    )
    p.add_argument(
        "--repack",
        action="store_true",
        help="rewrite the shipped file of a pruned run as a ship writes it today: xz-packed, and compact for a bf16 "
        "run whose fp32 master weights shipped byte for byte; refused unless git's HEAD holds the old file (--force: "
        "drop it)",
    )
    p.add_argument(
        "--full-precision",
        action="store_true",
        help="ship a bf16 run's fp32 master weights byte for byte (default: conv and linear weights in bf16, as "
        "autocast used them, half the bytes, bitwise the same logits under bf16 autocast)",
    )


def run_ship(args: argparse.Namespace) -> int:
    """``odearch ship``: ships the run and prints the entry; with ``--prune-checkpoints`` deletes its checkpoints."""
    if args.repack:
        return _repack_and_print(args)
    if args.force and not args.prune_checkpoints:
        raise ShipError("--force only applies to --prune-checkpoints and --repack")
    if args.ema and args.prune_checkpoints:
        raise ShipError("--ema with --prune-checkpoints: prune after shipping the run's raw final weights")
    if not (args.prune_checkpoints and Path(args.run, SHIPPED_FILE).is_file()):  # else: pruned, or being pruned
        already = shipped_name(args.run, args.registry) if args.prune_checkpoints and not args.overwrite else None
        if already is None:
            _ship_and_print(args)
        else:
            print(f"{args.run}: final weights already shipped as {already}")
    if args.prune_checkpoints:
        _prune_and_print(args)
    return 0


REPACK_ALONE = ("tag", "registry", "any_recipe", "overwrite", "prune_checkpoints", "ema", "full_precision")


def _repack_and_print(args: argparse.Namespace) -> int:
    given = [f"--{k.replace('_', '-')}" for k in REPACK_ALONE if getattr(args, k)]
    if given:
        raise ShipError(
            f"--repack takes --data-dir, --test-subset and --force only, not {', '.join(given)} (the run's "
            f"{SHIPPED_FILE} names its weights and registry)"
        )
    record = read_shipped_record(args.run) or {}
    was_compact = bool(
        read_registry(shipped_record_registry(args.run, record)).get(record.get("weights"), {}).get("stored")
    )
    name, entry = repack_shipped(args.run, data_dir=args.data_dir, test_subset=args.test_subset, force=args.force)
    print(f"repacked {name}: {entry['file']}, sha256 {entry['sha256']} (unpacked {entry['weights_sha256']})")
    stored = entry.get("stored") or {}
    if stored and not was_compact:
        print(
            f"stored compact: {stored['dtype']} {stored['tensors']}; under {stored['dtype']} autocast "
            f"{stored['autocast_test_correct']}/{stored['autocast_test_images']}, bitwise the fp32 file's logits; "
            f"fp32 {entry['test_correct']}/{entry['test_images']}"
        )
    return 0


def _prune_and_print(args: argparse.Namespace) -> None:
    record = prune_checkpoints(args.run, args.registry, force=args.force)
    shipped = Path(args.run) / SHIPPED_FILE
    if record.get("already_pruned"):
        print(f"{args.run}: already shipped as {record['weights']} and pruned ({shipped}); nothing to do")
    elif record.get("completed"):
        print(
            f"{args.run}: completed a prune that was cut short: deleted the {record['deleted_now']} checkpoint "
            f"files left; {shipped} names the shipped weights {record['weights']}"
        )
    else:
        print(
            f"deleted {len(record['deleted'])} checkpoint files of {args.run}; {shipped} names the shipped weights "
            f"{record['weights']}"
        )
        if record.get("not_in_git"):
            print(
                f"odearch: warning: --force: {len(record['not_in_git'])} of them were not in git's HEAD and are "
                f"lost: {', '.join(record['not_in_git'])}",
                file=sys.stderr,
            )


def _ship_and_print(args: argparse.Namespace) -> None:
    name, entry = ship_run(
        args.run,
        data_dir=args.data_dir,
        tag=args.tag,
        registry=args.registry,
        any_recipe=args.any_recipe,
        test_subset=args.test_subset,
        overwrite=args.overwrite,
        ema=args.ema,
        full_precision=args.full_precision,
    )
    print(
        f"shipped {name}: test accuracy {100 * entry['test_acc']:.2f}% ({entry['test_correct']}/"
        f"{entry['test_images']}, fp32), sha256 {entry['sha256']}, {entry['file']}"
    )
    stored = entry.get("stored")
    if stored:
        print(
            f"stored compact: {stored['dtype']} {stored['tensors']}; under {stored['dtype']} autocast it scores "
            f"{stored['autocast_test_correct']}/{stored['autocast_test_images']}, bitwise the master weights' logits"
        )
    own = stored["autocast_test_correct"] / stored["autocast_test_images"] if stored else entry["test_acc"]
    if entry["run_final_test_acc"] is not None and abs(entry["run_final_test_acc"] - own) > 0:
        print(
            f"note: the run's own last-epoch evaluation read {100 * entry['run_final_test_acc']:.2f}% (another "
            f"machine, evaluation order, or a compiled net's fused kernels); the registry records this evaluation"
        )
