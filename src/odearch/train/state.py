"""The training state (nanoGPT's handful of globals as one object) and the checkpoint that records it.

:func:`build_state` builds a :class:`TrainState` once per run: the model (:func:`build_model`; bare, and wrapped
for DDP / compile), the loaders (:func:`build_data`, from the data set table), the optimizer, the fp16 scaler, the
autocast precision, the learning-rate schedule and the step rule (:class:`odearch.train.epoch.TrainStep`), the run
directory, the :class:`RunControl` of this session (deadline, signals) and the :class:`Progress` (where training
stands, best epoch included), restored from ``checkpoints/last.*`` on a resume. :func:`save_checkpoint` writes the
progress, optimizer, scaler and RNG states with the weights as one generation (:mod:`odearch.train.generations`);
:func:`restore_checkpoint` reads them back, so that a resumed run repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import DatasetError, Splits, get_dataset
from ..models import create_model
from ..nn import get_memory, lm_k_draw, set_memory
from . import generations
from .allocator import apply_policy, policy_for
from .checkpoint import (
    CheckpointError,
    capture_rng,
    check_state,
    load_state,
    load_weights,
    state_bytes,
    weights_bytes,
    weights_into,
)
from .config import ConfigError, TrainConfig, config_hash
from .distributed import DistEnv, barrier, convert_sync_batchnorm
from .ema import EmaStep
from .epoch import NonFiniteLossError, TrainStep
from .multilevel import mesh_level, refine_times
from .numerics import DTYPE_NAMES, amp_dtype, autocast, dtype_from_name, dtype_name, seed_everything
from .optim import build_optimizer
from .peakmem import PeakMemory
from .rundir import RunDir
from .schedule import lr_schedule
from .signals import StopSignals
from .tensorboard import TensorBoard

__all__ = [
    "Progress",
    "RunControl",
    "TrainState",
    "build_data",
    "build_model",
    "build_state",
    "checkpoint_metadata",
    "make_optimizer",
    "restore_checkpoint",
    "save_checkpoint",
    "wrap_model",
]


@dataclass
class Progress:
    """Where training stands; what ``last.state.pt`` records besides optimizer and RNG."""

    step: int = 0
    epoch: int = 0  # finished epochs
    batch: int = 0  # batches done in the unfinished epoch `epoch` (0 at an epoch boundary)
    partial: dict[str, Any] = field(default_factory=dict)  # loss_sum, correct, n, seconds of that partial epoch
    best: dict[str, Any] = field(default_factory=lambda: {"acc": None, "epoch": None, "on": None})
    wall_seconds: float = 0.0  # over all sessions of the run
    amp_dtype: str | None = None  # the precision the run trains in (None: a checkpoint from before it was recorded)


@dataclass
class RunControl:
    """How this session runs, not what it computes: when it stops, whether it draws progress bars, its command.

    ``deadline`` and ``wall_start`` are ``time.monotonic`` times: the ``max_minutes`` stop (inf: none) and the
    start of the wall time not yet added to the run's total.
    """

    stop: StopSignals
    deadline: float
    wall_start: float
    use_bar: bool
    command: str | None = None

    def past_deadline(self) -> bool:
        """``max_minutes`` is up, or SIGTERM/SIGINT was received (this process only)."""
        return time.monotonic() > self.deadline or self.stop.received is not None


@dataclass
class TrainState:
    """Everything a run's epochs read and update, built once by :func:`build_state`.

    ``raw`` is the bare model (checkpoints, evaluation); ``model`` is what trains (``raw``, DDP-wrapped when
    distributed, compiled with ``compile``); ``eval_model`` is ``raw``, compiled or not. ``select`` is the metric
    that picks the best epoch ("val" or "test"); ``prog.best`` tracks it.
    """

    cfg: TrainConfig
    run: RunDir
    env: DistEnv
    device: torch.device
    ctl: RunControl
    raw: nn.Module
    model: nn.Module
    eval_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp: torch.dtype | None
    train_step: TrainStep
    data: Splits
    prog: Progress
    select: str
    rng: dict[str, Any] | None = None  # RNG states of the checkpoint resumed from, restored before the first step
    saved_row: dict[str, Any] | None = None  # the metrics row of that checkpoint's epoch
    writer: TensorBoard | None = None
    prov: dict[str, Any] = field(default_factory=dict)  # code and machine of this session (provenance)
    peak: PeakMemory | None = None  # the process's peak memory over the current epoch

    def autocast(self) -> Any:
        """The forward pass's autocast context (float32 when the run's precision is)."""
        return autocast(self.device, self.amp)

    def lr(self, step: int) -> float:
        """The learning rate of global step ``step``."""
        return self.train_step.lr_fn(step)

    def add_wall_time(self) -> None:
        """Adds the time since ``ctl.wall_start`` to the run's wall seconds and restarts the count."""
        now = time.monotonic()
        self.prog.wall_seconds += now - self.ctl.wall_start
        self.ctl.wall_start = now


def build_state(
    cfg: TrainConfig, run: RunDir, env: DistEnv, device: torch.device, ctl: RunControl, *, resume: bool
) -> TrainState:
    """Seeds, builds the model and the loaders, then the optimizer, scaler and precision (restored from the run's
    checkpoint on ``resume``), the DDP and compile wrappers, and the step rule. The order is the RNG's: model
    initialisation draws from the seeded global RNG first; a resume restores the RNG states before the first step."""
    seed_everything(cfg.seed)
    level = _saved_mesh_level(run, cfg) if resume else 0
    raw = build_model(cfg, level).to(device, memory_format=torch.channels_last if cfg.channels_last else None)
    if device.type == "cpu":  # the allocator policy of the memory mode the model resolved to (allocator.policy_for)
        apply_policy(policy_for(cfg.allocator, get_memory(raw)))
    data = build_data(cfg, device, env)
    if env.enabled and cfg.sync_bn:
        raw = convert_sync_batchnorm(raw, device)
    optimizer = make_optimizer(raw, cfg)
    amp = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    prog, rng, saved_row = Progress(), None, None
    if resume:
        prog, rng, saved_row = restore_checkpoint(run, cfg, raw, optimizer, scaler)
        if prog.amp_dtype is not None:  # keep the precision the run started in (auto may resolve otherwise now)
            amp = dtype_from_name(prog.amp_dtype)
    prog.amp_dtype = dtype_name(amp)
    model, eval_model = wrap_model(raw, cfg, env, device)
    step = make_train_step(
        cfg, optimizer, lr_schedule(cfg, len(data.train)), lambda: autocast(device, amp), scaler, raw
    )
    if resume:
        step.load_state_dict(load_state(run.last_state).get("train_step") or {})
    select = "val" if cfg.select_on == "val" or (cfg.select_on == "auto" and cfg.val_split) else "test"
    return TrainState(
        cfg,
        run,
        env,
        device,
        ctl,
        raw,
        model,
        eval_model,
        optimizer,
        scaler,
        amp,
        step,
        data,
        prog,
        select,
        rng,
        saved_row,
        peak=PeakMemory(device),
    )


def make_train_step(
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    lr_fn: Any,
    autocast_fn: Any,
    scaler: torch.amp.GradScaler | None,
    raw: nn.Module,
) -> TrainStep:
    """The run's step rule: :class:`TrainStep`, or :class:`odearch.train.ema.EmaStep` with ``ema_decay``."""
    if cfg.ema_decay is not None:
        return EmaStep(optimizer, lr_fn, autocast_fn, scaler, cfg.label_smoothing, model=raw, decay=cfg.ema_decay)
    return TrainStep(optimizer, lr_fn, autocast_fn, scaler, cfg.label_smoothing)


def make_optimizer(raw: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The run's SGD over the bare model's parameters (:func:`odearch.train.optim.build_optimizer`)."""
    return build_optimizer(
        raw,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        lm_weight_decay=cfg.lm_weight_decay,
    )


def wrap_model(raw: nn.Module, cfg: TrainConfig, env: DistEnv, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(the model that trains: ``raw``, DDP-wrapped when distributed, compiled with ``compile``; the model that
    evaluates: ``raw``, compiled or not)."""
    model: nn.Module = raw
    if env.enabled:
        model = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        return torch.compile(model), torch.compile(raw)
    return model, raw


def _saved_mesh_level(run: RunDir, cfg: TrainConfig) -> int:
    """The mesh level of the checkpoint a multi-level run resumes from (0 for a single-level run)."""
    if not cfg.refine_at or not run.last_state.is_file():
        return 0
    state = load_state(run.last_state)
    return mesh_level(cfg, int(state.get("epoch", 0)), int(state.get("batch", 0)))


def build_model(cfg: TrainConfig, level: int = 0) -> nn.Module:
    """``create_model`` from the config, refined ``level`` times by ``cfg.refine_factor`` (multi-level
    training); options the constructor rejects become a ConfigError naming them."""
    kwargs = {"scheme": cfg.scheme, **cfg.model_kwargs}
    try:
        with lm_k_draw(cfg.lm_init):
            model = refine_times(
                create_model(cfg.model, num_classes=cfg.num_classes, **kwargs), cfg.refine_factor, level
            )
        return model if cfg.memory == "auto" else set_memory(model, cfg.memory)
    except (TypeError, ValueError) as e:
        given = {k: v for k, v in kwargs.items() if v is not None}
        raise ConfigError(f"model {cfg.model!r} rejected its options {given}: {e}") from None


def build_data(cfg: TrainConfig, device: torch.device, env: DistEnv) -> Splits:
    """The loaders of ``cfg.dataset`` from the data set table (train: augmented, sharded by rank). Where the table
    says so (CIFAR), rank 0 reads and, if it must, downloads the files before the other ranks read them."""
    first = get_dataset(cfg.dataset).files_on_rank0_first
    if first and not env.is_main:
        barrier(env)
    try:
        return get_dataset(cfg.dataset).splits(cfg, device, env.rank, env.world_size)
    except DatasetError as e:
        raise ConfigError(str(e)) from None
    finally:
        if first and env.is_main:
            barrier(env)


# -------------------------------------------------------------------------------------------------- checkpoint
def checkpoint_metadata(cfg: TrainConfig, progress: Progress) -> dict[str, Any]:
    """The safetensors metadata of a run's weights (what ``odearch eval`` rebuilds the model from)."""
    meta = {
        "model": cfg.model,
        "num_classes": cfg.num_classes,
        "dataset": cfg.dataset,
        "scheme": cfg.scheme,
        "model_kwargs": cfg.model_kwargs,
        "step": progress.step,
        "epoch": progress.epoch,
        "config_hash": config_hash(cfg),
        "format": "odearch/1",
    }
    if cfg.refine_at:  # a multi-level run: the model is cfg.model refined this many times
        meta |= {"mesh_level": mesh_level(cfg, progress.epoch, progress.batch), "refine_factor": cfg.refine_factor}
    return meta


def save_checkpoint(
    run: RunDir,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: Progress,
    *,
    best: bool = False,
    row: dict[str, Any] | None = None,
    step: dict[str, Any] | None = None,
) -> None:
    """Writes the checkpoint as one generation (:func:`odearch.train.generations.commit`): last weights, state
    (with the epoch's metrics ``row``, so a resume can repair a log cut by a kill) and, if ``best``, the best weights.

    Raises:
        NonFiniteLossError: a weight, buffer or optimizer tensor is NaN/inf (the previous checkpoint is kept).
    """
    _check_finite(model, optimizer, progress)
    state = {
        "format": "odearch-train-state/1",
        "model": cfg.model,
        "config_hash": config_hash(cfg),
        "step": progress.step,
        "epoch": progress.epoch,
        "batch": progress.batch,
        "partial": progress.partial,
        "best": progress.best,
        "wall_seconds": progress.wall_seconds,
        "amp_dtype": progress.amp_dtype,
        "optimizer": optimizer.state_dict(),
        "scheduler": {"schedule": cfg.schedule, "step": progress.step},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": capture_rng(),
        "row": row,
        "train_step": step or {},  # TrainStep.state_dict(): an EMA's weights
    }
    weights = weights_bytes(model, checkpoint_metadata(cfg, progress))
    files = {
        "last.safetensors": weights,
        "last.state.pt": state_bytes(state),
        "best.safetensors": weights if best else None,
    }
    generations.commit(
        run.checkpoints, files, {"step": progress.step, "epoch": progress.epoch, "batch": progress.batch}
    )


def _check_finite(model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress) -> None:
    """Every floating tensor to be saved (weights, BatchNorm statistics, momentum buffers) must be finite."""
    named = list(model.state_dict().items())
    named += [(f"optimizer state {i}.{k}", v) for i, st in enumerate(optimizer.state.values()) for k, v in st.items()]
    for name, t in named:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteLossError(
                f"non-finite values (NaN/inf) in {name} after step {progress.step} (epoch "
                f"{progress.epoch}): the checkpoint was NOT saved"
            )


def restore_checkpoint(
    run: RunDir,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> tuple[Progress, dict[str, Any], dict[str, Any] | None]:
    """Loads the last checkpoint of ``run`` into model and optimizer (checksums verified); returns the progress,
    the RNG states and the metrics row of the checkpoint's epoch (None in checkpoints older than the row)."""
    if not run.last_state.is_file() and not run.last_weights.is_file():
        raise CheckpointError(run.no_checkpoint_message())
    state = load_state(run.last_state)
    check_state(state, run.last_state)
    if state.get("model") != cfg.model:
        raise CheckpointError(
            f"{run.last_state} was saved from model {state.get('model')!r}, but {run.config} says {cfg.model!r}"
        )
    tensors, meta = load_weights(run.last_weights)
    weights_into(model, tensors, meta, run.last_weights, cfg.model)
    generations.read_verified(run.last_weights)
    generations.read_verified(run.last_state)
    if meta.get("step") != state["step"]:
        raise CheckpointError(
            f"{run.last_weights} (step {meta.get('step')}) and {run.last_state} (step "
            f"{state['step']}) differ: the run was killed while saving"
        )
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
        raise CheckpointError(f"{run.last_state}: optimizer state does not fit {cfg.model!r}: {e}") from None
    keys = ("step", "epoch", "batch", "partial", "best", "wall_seconds")
    row = state.get("row") if isinstance(state.get("row"), dict) else None
    if state.get("amp_dtype") is not None and state["amp_dtype"] not in DTYPE_NAMES.values():
        raise CheckpointError(
            f"{run.last_state}: training state key 'amp_dtype' is {state['amp_dtype']!r}, expected "
            f"one of {sorted(DTYPE_NAMES.values())}"
        )
    return Progress(**{k: state[k] for k in keys}, amp_dtype=state.get("amp_dtype")), state["rng"], row
