"""Weights shipped inside the package, as timm's pretrained configs: ``create_model(name, pretrained=True)``.

The registry is ``odearch/weights/registry.json``: one entry per ``"<model>.<tag>"`` (timm's naming, e.g.
``"lm_resnet20.cifar10_s0"``) giving the safetensors file beside it, its pinned sha256, and where the weights come
from (data set, recipe, test accuracy, commits). ``odearch ship RUN`` (:mod:`odearch.train.ship`) writes entries
from finished runs; nobody edits the file by hand. ``create_model("lm_resnet20", pretrained=True)`` takes the first
entry of that model; ``create_model("lm_resnet20.cifar10_s1", pretrained=True)`` a given one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from torch import nn

from ..runfiles import SHIPPED_FILE

__all__ = ["REGISTRY_FILE", "PretrainedError", "file_sha256", "list_pretrained", "load_pretrained",
           "pretrained_entry", "pretrained_file", "read_registry", "shipped_run_weights",
           "shipped_weights_named"]  # fmt: skip

REGISTRY_FILE = Path(__file__).resolve().parents[1] / "weights" / "registry.json"
FORMAT = "odearch-weights/1"


class PretrainedError(ValueError):
    """No weights for a name, or a shipped weights file that is missing or fails its sha256 check."""


def read_registry(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The entries of the registry file (default :data:`REGISTRY_FILE`), ``{"<model>.<tag>": entry}``, in file
    order; an absent file is an empty registry."""
    path = Path(path) if path is not None else REGISTRY_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise PretrainedError(f"{path}: not an odearch weights registry (format {data.get('format')!r})")
    return dict(data["weights"])


def list_pretrained(pattern: str | None = None) -> list[str]:
    """``"<model>.<tag>"`` names that have shipped weights, in registry order; ``pattern`` filters the model part
    shell-style (``"lm_*"``)."""
    import fnmatch

    names = list(read_registry())
    return [n for n in names if pattern is None or fnmatch.fnmatch(n.partition(".")[0], pattern)]


def pretrained_entry(name: str) -> tuple[str, dict[str, Any]]:
    """(full name, entry) of ``"<model>"`` (its first entry) or ``"<model>.<tag>"``; a name without weights raises
    :class:`PretrainedError` listing the names that have them."""
    reg = read_registry()
    if "." in name:
        if name in reg:
            return name, reg[name]
    else:
        for full, entry in reg.items():
            if full.partition(".")[0] == name:
                return full, entry
    have = ", ".join(reg) if reg else "none (no weights have been shipped yet)"
    raise PretrainedError(f"no pretrained weights for {name!r}; models with weights: {have}")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_run_weights(run_dir: str | Path) -> Path | None:
    """The package's copy of the final weights of a run pruned by ``odearch ship --prune-checkpoints`` (its
    ``shipped.json`` names them), checked against the sha256 recorded there; None for a run that was not pruned."""
    record_file = Path(run_dir) / SHIPPED_FILE
    if not record_file.is_file():
        return None
    record = json.loads(record_file.read_text())
    _, entry = pretrained_entry(record["weights"])
    path = REGISTRY_FILE.parent / entry["file"]
    if not path.is_file() or file_sha256(path) != record["sha256"]:
        raise PretrainedError(f"{record_file} names {record['weights']} (sha256 {record['sha256']}), but {path} is "
                              f"missing or differs; reinstall odearch")  # fmt: skip
    return path


def _read_verified(name: str) -> tuple[str, dict[str, Any], bytes]:
    """(full name, entry, file bytes) of a shipped weights name, the bytes checked against the pinned sha256."""
    full, entry = pretrained_entry(name)
    path = REGISTRY_FILE.parent / entry["file"]
    if not path.is_file():
        raise PretrainedError(f"weights file of {full!r} is missing: {path}; reinstall odearch")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise PretrainedError(f"sha256 mismatch for {full!r}: {path} hashes to {digest}, the registry pins "
                              f"{entry['sha256']}; the file is damaged or was replaced, reinstall odearch")  # fmt: skip
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


def _classifier(model: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` of ``model`` (the classifier), None if it has none."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def load_pretrained(model: nn.Module, name: str, num_classes: int | None = None) -> nn.Module:
    """Loads the shipped weights of ``name`` into ``model`` after checking their sha256; returns ``model``, with the
    entry attached as ``model.pretrained_cfg``.

    If ``num_classes`` differs from the weights' (a new head, e.g. fine-tuning on CIFAR-100, or 0 for no head), every
    tensor but the classifier's is loaded and the model keeps its freshly initialised head, as timm does.
    """
    full, entry, data = _read_verified(name)
    tensors = st_load(data)
    drop: set[str] = set()
    if num_classes is not None and num_classes != entry["num_classes"]:
        with torch.device("meta"):  # the architecture the weights were trained in, to name its classifier
            from ._registry import model_entrypoint

            kwargs = {**entry.get("model_kwargs", {}), **({"scheme": entry["scheme"]} if entry.get("scheme") else {})}
            head = _classifier(model_entrypoint(entry["model"])(num_classes=entry["num_classes"], **kwargs))
        drop = {k for k in tensors if head is not None and k.startswith(head + ".")}
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors) - drop)
    unexpected = sorted(set(tensors) - set(own) - drop)
    shapes = sorted(k for k in (set(own) & set(tensors)) - drop if own[k].shape != tensors[k].shape)
    if missing or unexpected or shapes:
        first = (shapes or missing or unexpected)[0]
        raise PretrainedError(f"the weights {full!r} ({entry['model']}, {entry['num_classes']} classes) do not fit "
                              f"this model: {len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} "
                              f"shape-mismatched keys, e.g. {first!r}")  # fmt: skip
    with torch.no_grad():
        for k, v in tensors.items():
            if k not in drop:
                own[k].copy_(v)
    # the registry entry joins the model's data config; num_classes stays the model's own (a new head may differ)
    model.pretrained_cfg = {"name": full, **{k: v for k, v in entry.items() if k != "num_classes"}}  # type: ignore
    return model
