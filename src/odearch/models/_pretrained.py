"""Weights shipped inside the package, as timm's pretrained configs: ``create_model(name, pretrained=True)``.

The registry is ``odearch/weights/registry.json``: one entry per ``"<model>.<tag>"`` (timm's naming, e.g.
``"lm_resnet20.cifar10_s0"``) giving the weights file beside it (safetensors, xz-packed: :mod:`odearch.packing`),
its pinned sha256 (``weights_sha256``: of the safetensors bytes it packs), and where the weights come from (data
set, recipe, test accuracy, commits). ``odearch ship RUN`` (:mod:`odearch.train.ship`) writes entries from finished
runs; nobody edits the file by hand. ``create_model("lm_resnet20", pretrained=True)`` takes the first
entry of that model; ``create_model("lm_resnet20.cifar10_s1", pretrained=True)`` a given one.

A registry file that is not one (a list, no ``weights`` mapping, bad JSON) is a one-line :class:`PretrainedError`
naming the file; a malformed entry (no ``sha256``, ...) is left out of the listings, and only using that name fails
(:func:`registry_problems` says what is wrong). A weights file whose metadata names another model than its entry is
refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from torch import nn

from ..nn.cfg import data_cfg
from ..packing import unpack_weights
from ..runfiles import SHIPPED_FILE

__all__ = [
    "REGISTRY_FILE",
    "PretrainedError",
    "file_sha256",
    "list_pretrained",
    "load_pretrained",
    "pretrained_entry",
    "pretrained_file",
    "read_registry",
    "read_shipped_record",
    "registry_file",
    "registry_problems",
    "shipped_record_registry",
    "shipped_run_weights",
    "shipped_weights_named",
]

REGISTRY_FILE = Path(__file__).resolve().parents[1] / "weights" / "registry.json"
FORMAT = "odearch-weights/1"


class PretrainedError(ValueError):
    """No weights for a name, or a shipped weights file that is missing or fails its sha256 check."""


ENTRY_KEYS: dict[str, type] = {"file": str, "sha256": str, "model": str, "num_classes": int}


def registry_file() -> Path:
    """The package's registry file (``REGISTRY_FILE``, read at call time: tests point it elsewhere)."""
    return REGISTRY_FILE


def _entry_problem(name: Any, entry: Any) -> str | None:
    """Why a registry entry cannot be used (None: it can)."""
    if not isinstance(name, str) or "." not in name:
        return "its name is not <model>.<tag>"
    if not isinstance(entry, dict):
        return f"the entry is a {type(entry).__name__}, not a mapping"
    for key, kind in ENTRY_KEYS.items():
        if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
            return f"no {key!r}" if key not in entry else f"{key!r} is not a {kind.__name__}"
    if Path(entry["file"]).name != entry["file"]:
        return f"'file' {entry['file']!r} is not a file name beside the registry"
    return None


def _load_registry(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(usable entries, {name: problem} of the malformed ones) of a registry file; an absent file is empty."""
    if not path.is_file():
        return {}, {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{path}: unreadable weights registry ({_one_line(e)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise PretrainedError(f"{path}: not an odearch weights registry (format {got!r}, expected {FORMAT!r})")
    if not isinstance(data.get("weights"), dict):
        raise PretrainedError(
            f"{path}: the weights registry has no 'weights' mapping; restore the file (odearch ship writes it)"
        )
    good, bad = {}, {}
    for name, entry in data["weights"].items():
        problem = _entry_problem(name, entry)
        if problem is None:
            good[name] = entry
        else:
            bad[name] = problem
    return good, bad


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_registry(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The usable entries of the registry file (default :data:`REGISTRY_FILE`), ``{"<model>.<tag>": entry}``, in
    file order; an absent file is an empty registry, a malformed entry is left out (:func:`registry_problems`).

    Raises:
        PretrainedError: naming the file, when it is not a weights registry at all.
    """
    return _load_registry(Path(path) if path is not None else REGISTRY_FILE)[0]


def registry_problems(path: str | Path | None = None) -> list[str]:
    """One line per problem of the registry file: the whole file, or each malformed entry (empty: none)."""
    path = Path(path) if path is not None else REGISTRY_FILE
    try:
        bad = _load_registry(path)[1]
    except PretrainedError as e:
        return [str(e)]
    return [f"{path}: entry {name!r} is malformed ({problem}) and is ignored" for name, problem in bad.items()]


def list_pretrained(pattern: str | None = None) -> list[str]:
    """``"<model>.<tag>"`` names that have shipped weights, in registry order; ``pattern`` filters the model part
    shell-style (``"lm_*"``)."""
    import fnmatch

    names = list(read_registry())
    return [n for n in names if pattern is None or fnmatch.fnmatch(n.partition(".")[0], pattern)]


def pretrained_entry(name: str, registry: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """(full name, entry) of ``"<model>"`` (its first entry) or ``"<model>.<tag>"`` in ``registry`` (default: the
    package's); a name without weights raises :class:`PretrainedError` listing the names that have them, a malformed
    entry one naming the registry file."""
    path = Path(registry) if registry is not None else REGISTRY_FILE
    reg, bad = _load_registry(path)
    if "." in name:
        if name in reg:
            return name, reg[name]
    else:
        for full, entry in reg.items():
            if full.partition(".")[0] == name:
                return full, entry
    broken = [n for n in bad if n == name or n.partition(".")[0] == name]
    if broken:
        raise PretrainedError(f"{path}: the entry {broken[0]!r} is malformed ({bad[broken[0]]}); restore the registry")
    have = ", ".join(reg) if reg else "none (no weights have been shipped yet)"
    raise PretrainedError(f"no pretrained weights for {name!r}; models with weights: {have}")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_shipped_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``shipped.json`` of a run pruned (or being pruned) by ``odearch ship --prune-checkpoints``: ``weights``
    (registry name), ``sha256``, ``registry`` (the registry file used; absent: the package's), ``deleted``; None
    when the run has none. A damaged record raises :class:`PretrainedError` naming it."""
    path = Path(run_dir) / SHIPPED_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{path}: unreadable ({_one_line(e)})") from None
    if not _record_ok(record):
        raise PretrainedError(f"{path}: not a record of shipped weights (needs 'weights' and 'sha256')")
    return record


def _record_ok(record: Any) -> bool:
    """A shipped.json's shape: ``weights`` and ``sha256`` strings, ``registry`` a string if any, ``deleted`` a map."""
    if not isinstance(record, dict):
        return False
    return (
        isinstance(record.get("weights"), str)
        and isinstance(record.get("sha256"), str)
        and isinstance(record.get("registry") or "", str)
        and isinstance(record.get("deleted", {}), dict)
    )


def shipped_record_registry(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """The registry file a run's ``shipped.json`` record names (relative: from the run directory; none: the
    package's)."""
    registry = Path(record["registry"]) if record.get("registry") else REGISTRY_FILE
    return registry if registry.is_absolute() else Path(run_dir) / registry


def shipped_run_weights(run_dir: str | Path) -> Path | None:
    """The shipped copy of the final weights of a run pruned by ``odearch ship --prune-checkpoints`` (its
    ``shipped.json`` names them and the registry they went to), checked against the sha256 recorded there; None for
    a run that was not pruned."""
    record = read_shipped_record(run_dir)
    if record is None:
        return None
    record_file = Path(run_dir) / SHIPPED_FILE
    registry = shipped_record_registry(run_dir, record)
    fix = "reinstall odearch" if registry == REGISTRY_FILE else f"restore {registry} and the weights beside it"
    entry = _load_registry(registry)[0].get(record["weights"])
    if entry is None:
        raise PretrainedError(f"{record_file} names {record['weights']}, which {registry} does not list; {fix}")
    path = registry.parent / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"] or record["sha256"] not in _shas(entry):
        raise PretrainedError(
            f"{record_file} names {record['weights']} (sha256 {record['sha256']}), but {path} is "
            f"missing or differs; {fix}"
        )
    return path


def _shas(entry: dict[str, Any]) -> set[str]:
    """The sha256 a shipped.json may record for a registry entry: its file's, or the unpacked weights' of a packed
    file (a record written before its file was packed)."""
    return {entry["sha256"], entry.get("weights_sha256") or entry["sha256"]}


def _file_model(data: bytes) -> str | None:
    """The model named in a safetensors file's odearch metadata (None: none)."""
    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        model = json.loads(meta["model"]) if "model" in meta else None
    except (ValueError, AttributeError, TypeError):
        return None
    return model if isinstance(model, str) else None


def _read_verified(name: str) -> tuple[str, dict[str, Any], bytes]:
    """(full name, entry, safetensors bytes) of a shipped weights name, the file checked against the pinned sha256
    (then unpacked) and the model its metadata names against the entry's."""
    full, entry = pretrained_entry(name)
    path = REGISTRY_FILE.parent / entry["file"]
    if not path.is_file():
        raise PretrainedError(f"weights file of {full!r} is missing: {path}; reinstall odearch")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise PretrainedError(
            f"sha256 mismatch for {full!r}: {path} hashes to {digest}, the registry pins "
            f"{entry['sha256']}; the file is damaged or was replaced, reinstall odearch"
        )
    try:
        data = unpack_weights(data)
    except ValueError as e:
        raise PretrainedError(f"{path}: {e}, though its sha256 matches the registry's; reinstall odearch") from None
    saved = _file_model(data)
    if saved is not None and saved != entry["model"]:
        raise PretrainedError(
            f"{path} holds weights of model {saved!r} (its metadata), but {REGISTRY_FILE} lists "
            f"{full!r} as model {entry['model']!r}; refusing them"
        )
    return full, entry, data


def pretrained_file(name: str) -> Path:
    """The shipped safetensors file of ``"<model>"`` (its first entry) or ``"<model>.<tag>"``, checked against the
    sha256 the registry pins; :class:`PretrainedError` for a name without weights or a missing or damaged file."""
    _, entry, _ = _read_verified(name)
    return REGISTRY_FILE.parent / entry["file"]


def shipped_weights_named(target: str) -> Path | None:
    """The shipped file (sha256 checked) when ``target`` names shipped weights rather than a path: ``"<model>.<tag>"``
    or ``"<model>"`` (its first); None when its model has no shipped weights. :class:`PretrainedError` when the model
    has weights but not that tag, or its file is missing or damaged."""
    if "/" in target or "\\" in target:
        return None
    if target.partition(".")[0] not in {n.partition(".")[0] for n in read_registry()}:
        return None
    return pretrained_file(target)


def load_pretrained(
    model: nn.Module, name: str, num_classes: int | None = None, trained_head: str | None = None
) -> nn.Module:
    """Loads the shipped weights of ``name`` into ``model`` after checking their sha256; returns ``model``, with the
    entry attached as ``model.pretrained_cfg``.

    If ``num_classes`` differs from the weights' (a new head, e.g. fine-tuning on CIFAR-100, or 0 for no head), every
    tensor but those of ``trained_head`` (the classifier's module name in the network the weights were trained in)
    is loaded and the model keeps its freshly initialised head, as timm does.
    """
    full, entry, data = _read_verified(name)
    tensors = st_load(data)
    drop: set[str] = set()
    if num_classes is not None and num_classes != entry["num_classes"] and trained_head is not None:
        drop = {k for k in tensors if k.startswith(trained_head + ".")}
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors) - drop)
    unexpected = sorted(set(tensors) - set(own) - drop)
    shapes = sorted(k for k in (set(own) & set(tensors)) - drop if own[k].shape != tensors[k].shape)
    if missing or unexpected or shapes:
        first = (shapes or missing or unexpected)[0]
        raise PretrainedError(
            f"the weights {full!r} ({entry['model']}, {entry['num_classes']} classes) do not fit "
            f"this model: {len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} "
            f"shape-mismatched keys, e.g. {first!r}"
        )
    with torch.no_grad():
        for k, v in tensors.items():
            if k not in drop:
                own[k].copy_(v)
    # the registry entry joins the model's data config; num_classes stays the model's own (a new head may differ),
    # mean / std the weights' (a CIFAR-100 head on CIFAR-10 weights keeps the normalisation they were trained with)
    kind = getattr(model, "data_kind", None)
    trained = data_cfg(kind, entry["num_classes"], model.in_chans) if kind else {}  # type: ignore[arg-type]
    stats = {k: trained[k] for k in ("mean", "std") if k in trained}
    model.pretrained_cfg = {"name": full, **stats, **{k: v for k, v in entry.items() if k != "num_classes"}}  # type: ignore
    return model
