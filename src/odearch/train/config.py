"""The training configuration: one frozen dataclass, filled from a YAML file, then from command-line flags.

Every field is both a YAML key and a flag (``weight_decay`` <-> ``--weight-decay``); the CLI builds its flags from
``dataclasses.fields(TrainConfig)`` and their ``metadata`` (help text, choices), so the two can never drift apart.
Recipe defaults are the paper's (SGD, momentum 0.9, no Nesterov, batch 128, lr 0.1 divided by 10 at epochs 80 and
120, 160 epochs, weight decay 1e-4 on CIFAR-10; 300 epochs with steps at 150 and 225 on CIFAR-100; on ImageNet 90
epochs with steps at 30, 60 and 80, 1000 classes, ``odearch.data.IMAGENET_RECIPE``). Fields left None that depend on
the data set (``epochs``, ``milestones``, ``num_classes``) are resolved in ``__post_init__`` from the data set table
(:data:`odearch.data.DATASETS`), which also gives the ``dataset`` choices. The LM coefficients are
decayed as in the official code (``lm_weight_decay: kappa``, kappa = 1 - k; see :mod:`odearch.train.optim`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import DATASETS, canonical_name
from ..models import is_model, model_entrypoint

__all__ = ["RECIPES", "ConfigError", "TrainConfig", "config_hash", "load_yaml"]

# (epochs, milestones) of the paper's CIFAR recipes and of the ImageNet recipe (He et al. 2015): the data set table's.
RECIPES: dict[str, tuple[int, tuple[int, ...]]] = {name: (d.epochs, d.milestones) for name, d in DATASETS.items()}
# Data sets whose labels are fixed (0..n-1 in the files): num_classes must be the table's n (fewer: labels outside the
# classifier; more: logits never trained). ImageNet's classes are its folders' (odearch.data.splits checks those).
FIXED_LABELS = ("cifar10", "cifar100")
MAX_LR = 3.4028234663852886e38  # the largest float32: the optimizer's arithmetic is float32 (larger: an overflow error)
MAX_WEIGHT_DECAY = 1.0  # L2 decay above 1 shrinks every weight by more than lr per step: never a working setting


class ConfigError(ValueError):
    """A configuration that cannot run: unknown key, bad value, unknown model (the CLI exits with code 2)."""


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    """A dataclass field carrying its CLI help text and choices."""
    meta = {"help": help, "choices": choices}
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Build with keywords or :meth:`from_dict`; frozen once built."""

    # model
    model: str = _f("", "registered model name (see `odearch models`)")
    dataset: str = _f(
        "cifar10", "data set (imagenet: an ImageFolder with train/ and val/ in --data-dir)", choices=tuple(DATASETS)
    )
    num_classes: int | None = _f(None, "classifier size (default: from the data set)")
    scheme: str | None = _f(None, "integrator of every stage, e.g. euler, lm, rk2 (default: the model's own)")
    model_kwargs: dict[str, Any] = field(  # a mutable default needs a factory
        default_factory=dict, metadata={"help": "extra model constructor keywords (YAML mapping; --model-kw K=V)"}
    )
    # optimisation
    lr: float = _f(0.1, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum (the paper's code: off)")
    weight_decay: float = _f(1e-4, "L2 weight decay (paper: 1e-4; 5e-4 for LM-ResNeXt)")
    lm_weight_decay: str = _f(
        "kappa",
        "weight decay on the LM coefficients k_n: kappa (the official code: decay "
        "kappa = 1 - k, pulling k toward 1), k (toward 0; runs made before this "
        "option), none",
        choices=("kappa", "k", "none"),
    )
    lm_init: str = _f(
        "paired",
        "how the LM coefficients k_n are drawn at initialisation: paired (from a copy of the "
        "RNG: every other weight equals the plain twin's at the same seed), global (from the "
        "global RNG, shifting later draws; runs made before this option)",
        choices=("paired", "global"),
    )
    batch_size: int = _f(128, "GLOBAL batch size (split over ranks when distributed)")
    epochs: int | None = _f(
        None, "epochs (default: " + ", ".join(f"{d.epochs} on {n}" for n, d in DATASETS.items()) + ")"
    )
    milestones: tuple[int, ...] | None = _f(
        None,
        "step schedule: epochs where lr *= gamma (default: "
        + " / ".join(" ".join(map(str, d.milestones)) for d in DATASETS.values())
        + ")",
    )
    gamma: float = _f(0.1, "step schedule factor")
    refine_at: tuple[int, ...] = _f(
        (),
        "multi-level training: after each of these epochs, refine every stage's mesh "
        "(odearch.refine: more, smaller steps; momentum carried over) before the next "
        "epoch trains",
    )
    ema_decay: float | None = _f(
        None,
        "keep an exponential moving average of the weights with this decay (e.g. 0.9998; timm's ModelEmaV3 rule "
        "with warm-up), evaluated beside the raw model every epoch; the best epoch is chosen on it",
    )
    refine_factor: int = _f(2, "multi-level training: steps per old step at each --refine-at epoch")
    schedule: str = _f("step", "learning-rate schedule", choices=("step", "cosine"))
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs (per step)")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing")
    # data
    data_dir: str | None = _f(
        None,
        "directory holding cifar-10-batches-py/, or ImageNet's train/ and val/ (default: $ODEARCH_DATA, else ./data)",
    )
    download: bool = _f(True, "download the official archive when files are missing")
    val_split: int = _f(0, "hold out this many training images for validation (0 or e.g. 5000: 45k/5k)")
    select_on: str = _f(
        "auto",
        "metric that picks best.safetensors (auto: val if split else test, labelled)",
        choices=("auto", "val", "test"),
    )
    subset: int | None = _f(None, "train on the first N training images (imagenet: N evenly spaced over the classes)")
    eval_subset: int | None = _f(
        None, "evaluate on the first N test images (smoke tests only; imagenet: evenly spaced)"
    )
    augment: bool = _f(True, "random crops and flips of the training images (off: train on unaugmented images)")
    crop_size: int = _f(224, "imagenet: training and evaluation crop (small, e.g. 32, for smoke tests)")
    resize_size: int = _f(256, "imagenet: evaluation resize of the shorter side before the centre crop")
    # run control
    max_minutes: float | None = _f(None, "stop cleanly after this many minutes with a resumable checkpoint")
    seed: int = _f(0, "seed of model init and data order")
    out: str | None = _f(None, "run directory (default: runs/<model>_<dataset>_s<seed>_<time>)")
    log_every: int = _f(50, "steps between progress-bar metric refreshes (each one syncs the device); 0: never")
    tensorboard: bool = _f(True, "write TensorBoard events to RUN/tb/")
    # speed and numerics
    device: str = _f("auto", "where to train", choices=("auto", "cpu", "cuda"))
    amp: str = _f(
        "auto",
        "autocast dtype (auto: bf16 on CUDA, off = float32 on CPU; bf16 on CPU: see README)",
        choices=("auto", "bf16", "fp16", "off"),
    )
    channels_last: bool = _f(True, "channels_last memory format for model and batches")
    compile: bool = _f(False, "torch.compile the model")
    memory: str = _f(
        "auto",
        "activation memory of the backward pass: store (autograd), recompute (checkpoint every "
        "residual function), reversible (rev stages: rebuild inputs by the inverse); auto: the "
        "model's own (reversible for rev_ models, else store; a run dir's config.yaml without "
        "this key reads as store)",
        choices=("auto", "store", "recompute", "reversible"),
    )
    allocator: str = _f(
        "auto",
        "CPU host allocator: keep (freed memory stays in the process: fewer page faults, "
        "faster), return (freed memory goes back: resident size follows live tensors); auto: "
        "return under --memory recompute / reversible, keep otherwise",
        choices=("auto", "keep", "return"),
    )
    deterministic: bool = _f(False, "deterministic algorithms (torch.use_deterministic_algorithms, cudnn flags)")
    sync_bn: bool = _f(False, "BatchNorm statistics over the global batch when distributed (SyncBatchNorm)")
    dist_timeout: float = _f(
        600.0,
        "distributed: seconds a rank waits for the others in a collective before the run "
        "fails (torch's default is 30 min)",
    )
    workers: int | None = _f(None, "imagenet: DataLoader worker processes per rank (default: min(8, CPUs per rank))")
    decode: str = _f(
        "pil",
        "imagenet: decode JPEGs in the workers (pil) or on the device (nvJPEG on a GPU)",
        choices=("pil", "device"),
    )

    def __post_init__(self) -> None:
        # Normalise types that YAML / argparse may hand over loosely, then fill data-set-dependent defaults.
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, str(f.type), getattr(self, f.name)))
        if self.milestones is not None:
            ms = self.milestones
            if not isinstance(ms, (list, tuple)) or not all(isinstance(m, int) and not isinstance(m, bool) for m in ms):
                raise ConfigError(f"milestones must be a list of epochs (integers), got {ms!r}")
            object.__setattr__(self, "milestones", tuple(ms))
        ra = self.refine_at
        if not isinstance(ra, (list, tuple)) or not all(isinstance(e, int) and not isinstance(e, bool) for e in ra):
            raise ConfigError(f"refine_at must be a list of epochs (integers), got {ra!r}")
        object.__setattr__(self, "refine_at", tuple(ra))
        if self.model_kwargs is None:  # an empty `model_kwargs:` in YAML
            object.__setattr__(self, "model_kwargs", {})
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a mapping, got {self.model_kwargs!r}")
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        ds = canonical_name(self.dataset)
        if ds not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; expected one of {sorted(DATASETS)}")
        object.__setattr__(self, "dataset", ds)
        spec = DATASETS[ds]
        if self.epochs is None:
            object.__setattr__(self, "epochs", spec.epochs)
        if self.milestones is None:
            object.__setattr__(self, "milestones", spec.milestones)
        if self.num_classes is None:
            object.__setattr__(self, "num_classes", spec.num_classes)
        if self.data_dir is None:
            object.__setattr__(self, "data_dir", os.environ.get("ODEARCH_DATA") or "data")
        self._check()

    def _check(self) -> None:
        """Fail early, with the fix in the message, on values that cannot run."""
        if not self.model:
            raise ConfigError("no model given: use --model NAME or a --config YAML with a `model:` key")
        if not is_model(self.model):
            try:
                model_entrypoint(self.model)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}")
        positive = {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "num_classes": self.num_classes,
            "crop_size": self.crop_size,
            "resize_size": self.resize_size,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("subset", "eval_subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be a non-negative integer, got {self.workers!r}")
        if not isinstance(self.val_split, int) or self.val_split < 0:
            raise ConfigError(f"val_split must be a non-negative integer, got {self.val_split!r}")
        if self.select_on == "val" and not self.val_split:
            raise ConfigError("select_on=val needs a validation split: add --val-split 5000")
        self._check_numbers()
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed (--seed) must be in [0, 2**63), got {self.seed}")
        if self.log_every < 0:
            raise ConfigError("log_every must be non-negative")
        if self.dist_timeout <= 0:
            raise ConfigError(f"dist_timeout must be positive (seconds), got {self.dist_timeout}")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            raise ConfigError(
                f"milestones (--milestones) must be increasing positive epochs, got {list(self.milestones)}"
            )
        self._check_refine()
        n = DATASETS[self.dataset].num_classes
        if self.dataset in FIXED_LABELS and self.num_classes != n:
            raise ConfigError(
                f"num_classes (--num-classes) must be {n} on {self.dataset} (its labels are "
                f"0..{n - 1}), got {self.num_classes}"
            )
        if not all(isinstance(k, str) and k.isidentifier() for k in self.model_kwargs):
            raise ConfigError(f"model_kwargs keys must be identifiers, got {list(self.model_kwargs)}")

    def _check_refine(self) -> None:
        """Refinement epochs strictly increasing inside the run (a refinement after the last epoch trains nothing)."""
        ra = list(self.refine_at)
        if ra and (ra != sorted(set(ra)) or ra[0] < 1 or ra[-1] >= self.epochs):
            raise ConfigError(
                f"refine_at (--refine-at) must be strictly increasing epochs in 1..{self.epochs - 1} "
                f"(the model is refined after each, before the next trains), got {ra}"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay (--ema-decay) must be in (0, 1), e.g. 0.9998, got {self.ema_decay}")
        if self.ema_decay is not None and ra:
            raise ConfigError("ema_decay with refine_at: the average of a model that changes shape is not defined")
        if isinstance(self.refine_factor, bool) or self.refine_factor < 2:
            raise ConfigError(f"refine_factor (--refine-factor) must be an integer >= 2, got {self.refine_factor!r}")

    def _check_numbers(self) -> None:
        """The optimisation numbers: finite, in range, and small enough for the optimizer's float32 arithmetic."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        if self.lr <= 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0 or not 0 < self.gamma <= 1:
            raise ConfigError("need lr > 0, 0 <= momentum < 1, weight_decay >= 0, 0 < gamma <= 1")
        if self.lr > MAX_LR:
            raise ConfigError(
                f"lr (--lr) must be at most {MAX_LR:.4g} (the largest float32: the optimizer computes in "
                f"float32), got {self.lr:g}"
            )
        if self.weight_decay > MAX_WEIGHT_DECAY:
            raise ConfigError(
                f"weight_decay (--weight-decay) must be at most {MAX_WEIGHT_DECAY:g} (paper: 1e-4), got "
                f"{self.weight_decay:g}"
            )
        if not 0 <= self.label_smoothing < 1 or self.warmup_epochs < 0:
            raise ConfigError("need 0 <= label_smoothing < 1 and warmup_epochs >= 0")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be positive, got {self.max_minutes}")

    # --------------------------------------------------------------------------------------------- conversions
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | None = None) -> TrainConfig:
        """Builds a config from a mapping, rejecting unknown keys (listing close matches) and bad types.

        Args:
            values: field name -> value (YAML keys).
            source: where the mapping came from (a YAML path), prefixed to error messages.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            import difflib

            hints = [
                f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, known, 1)) else repr(k)
                for k in unknown
            ]
            raise ConfigError(f"{source or 'config'}: unknown key(s) {', '.join(hints)}")
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}" if source else str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain-YAML-safe dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones or ())
        d["refine_at"] = list(self.refine_at)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Checks a scalar field's type; ints pass as floats, and numeric strings too (YAML 1.1 reads ``1e-4`` as one)."""
    optional = annotation.endswith(" | None")
    kind = _SCALARS.get(annotation.removesuffix(" | None"))
    if kind is None or (value is None and optional):
        return value
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{name} must be {'an' if kind is int else 'a'} {kind.__name__}, got {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML config as a mapping; a missing file, bad syntax or a non-mapping raises ConfigError."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{yaml_error_where(path, e)}: invalid YAML: {yaml_error_what(e)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def yaml_error_where(path: str | Path, e: yaml.YAMLError) -> str:
    """``FILE:LINE:COLUMN`` of a YAML error (1-based, as editors count), or ``FILE`` when the error has no mark."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def yaml_error_what(e: yaml.YAMLError) -> str:
    """What a YAML error says went wrong (its problem and context, without the quoted source lines)."""
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    return ": ".join(p for p in parts if p) or str(e).splitlines()[0]


def config_hash(cfg: TrainConfig) -> str:
    """Short hash of the fields that define the trained function (model, data, optimisation), not run control."""
    volatile = {
        "out",
        "data_dir",
        "download",
        "max_minutes",
        "log_every",
        "tensorboard",
        "device",
        "compile",
        "workers",
        "memory",
        "dist_timeout",
        "allocator",
    }
    d = {k: v for k, v in cfg.to_dict().items() if k not in volatile}
    if d.get("lm_weight_decay") == "k":  # the only behaviour before the option existed: keep those runs' hashes
        del d["lm_weight_decay"]
    if d.get("lm_init") == "global":  # likewise the only LM init before paired init
        del d["lm_init"]
    if d.get("ema_decay") is None:  # runs without an EMA (all runs before it) keep their hashes
        d.pop("ema_decay", None)
    if not d.get("refine_at"):  # single-level runs (all runs before multi-level training) keep their hashes
        d.pop("refine_at", None)
        d.pop("refine_factor", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
