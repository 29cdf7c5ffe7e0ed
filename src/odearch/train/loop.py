"""The training loop (airbench's shape, timm's return values): ``lr_at``, ``train_one_epoch``, ``evaluate``, ``fit``.

Speed: the data set lives on the training device and is augmented there per batch (``odearch.data.CifarLoader``);
the loss and correct-count are summed on the device and read once per epoch (plus once every ``log_every`` steps
for the progress bar), since every ``.item()`` is a host-device sync; batches and weights are channels_last;
autocast is bf16 on CUDA by default. The same code runs on the CPU. ImageNet (``dataset="imagenet"``) streams from
an ImageFolder through DataLoader workers instead (:mod:`odearch.train.imagenet`); the loop is the same.

Resumption is exact: the schedule is a pure function of the step, the data order and augmentation a pure function
of (seed, epoch), and a checkpoint holds weights, optimizer, step, partial-epoch sums and RNG states, so a resumed
run repeats the uninterrupted one bit for bit on the same device. ``max_minutes`` stops at an iteration boundary,
mid-epoch if need be; the resumed run skips the batches already done. On ImageNet the order is exact too, and so
are the random crops with ``workers=0``; with workers they are drawn in the worker processes, whose RNG is not
checkpointed, so a resumed run is correct (same images per step, same schedule) but not bitwise equal.

Distributed (torchrun, see :mod:`odearch.train.distributed`): ``batch_size`` is the global batch, split evenly over
the ranks (a ConfigError if it does not divide); a global batch holds the same images for any number of ranks, so a
run checkpointed at an epoch boundary resumes with another number of processes. Checkpoints hold the bare model
(no DDP ``module.`` prefix) and only rank 0 writes files or logs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import CifarLoader, ImageNetLoader, dataset_info, load_cifar, take_first, train_val_split
from ..models import create_model
from ..nn import lm_coefficients, set_memory
from . import generations
from .checkpoint import (
    CheckpointError,
    atomic_write,
    capture_rng,
    check_state,
    load_state,
    load_weights,
    restore_rng,
    state_bytes,
    weights_bytes,
    weights_into,
)
from .config import ConfigError, TrainConfig, config_hash
from .distributed import (
    DistEnv,
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_buffers,
    broadcast_object,
    convert_sync_batchnorm,
    init_distributed,
    shutdown,
    world_size_from_env,
)
from .imagenet import imagenet_loaders
from .optim import build_optimizer
from .provenance import provenance
from .rundir import RunDir, RunExistsError, default_out
from .signals import StopSignals
from .tensorboard import TensorBoard

__all__ = ["NonFiniteLossError", "build_model", "evaluate", "fit", "lr_at", "resolve_device", "train_one_epoch"]

VAL_SPLIT_SEED = 0  # the 45k/5k split is fixed across training seeds, so runs of different seeds are comparable
EVAL_BATCH = 1024  # evaluation batch (no gradients: larger is faster, results do not depend on it)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint on disk is the last good one."""


# ---------------------------------------------------------------------------------------------------- schedule
def lr_at(
    step: int, *, base_lr: float, steps_per_epoch: int, epochs: int, schedule: str = "step",
    milestones: Iterable[int] = (), gamma: float = 0.1, warmup_epochs: float = 0.0,
) -> float:  # fmt: skip
    """Learning rate of optimizer step ``step`` (0-based), a pure function.

    1. Warm-up: during the first ``round(warmup_epochs * steps_per_epoch)`` steps, lr rises linearly to
       ``base_lr`` (step s uses ``base_lr * (s + 1) / warmup_steps``).
    2. ``step``: ``base_lr * gamma ** (number of milestones <= epoch)``, epoch = ``step // steps_per_epoch``, so the
       paper's "divide by 10 at epoch 80" applies from the first step after 80 full epochs.
    3. ``cosine``: ``base_lr * (1 + cos(pi * t)) / 2``, t the fraction of the post-warm-up steps done.
    """
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "step":
        return base_lr * gamma ** sum(step // steps_per_epoch >= m for m in milestones)
    if schedule == "cosine":
        t = (step - warmup) / max(1, epochs * steps_per_epoch - warmup)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    raise ValueError(f"unknown schedule {schedule!r}; expected step or cosine")


def _lr_fn(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """``lr_at`` with the config's schedule bound."""
    return lambda step: lr_at(
        step, base_lr=cfg.lr, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, schedule=cfg.schedule,
        milestones=cfg.milestones, gamma=cfg.gamma, warmup_epochs=cfg.warmup_epochs,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ epoch, eval
def train_one_epoch(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], optimizer: torch.optim.Optimizer, *,
    lr_fn: Callable[[int], float], step: int, autocast: Callable[[], AbstractContextManager[Any]],
    label_smoothing: float = 0.0, scaler: torch.amp.GradScaler | None = None, start_batch: int = 0,
    sums: dict[str, Any] | None = None, should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Trains one epoch (or its rest, from ``start_batch``), setting the lr of each step from ``lr_fn(step)``.

    Returns:
        ``step`` (global step after the last batch), ``batches`` (batches of this epoch done), ``loss_sum`` and
        ``correct`` (device tensors, summed over samples: read them once), ``n`` (samples), ``stopped`` (True if
        ``should_stop`` ended the epoch early).
    """
    model.train()
    sums = sums or {"loss_sum": torch.zeros(()), "correct": torch.zeros((), dtype=torch.int64), "n": 0}
    batch, stopped = start_batch, False
    for x, y in _batches_from(loader, start_batch):
        for group in optimizer.param_groups:
            group["lr"] = lr_fn(step)
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16 only: scale the loss so small gradients survive the cast
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        step, batch = step + 1, batch + 1
        sums["loss_sum"] = sums["loss_sum"].to(loss.device) + loss.detach().float() * len(y)  # no sync
        sums["correct"] = sums["correct"].to(y.device) + (logits.argmax(1) == y).sum()
        sums["n"] += len(y)
        if on_step is not None:
            on_step(step, sums)
        if should_stop is not None and should_stop():
            stopped = batch < len(loader)  # type: ignore[arg-type]
            break
    return {"step": step, "batches": batch, "stopped": stopped, **sums}


def _batches_from(loader: Iterable[Any], start: int) -> Iterable[Any]:
    """The batches of ``loader`` from batch ``start`` on: its ``iter_from`` if it has one (ImageNetLoader: the skipped
    batches are not even read), else ``itertools.islice`` (CifarLoader: skipped batches are cheap)."""
    if start and hasattr(loader, "iter_from"):
        return loader.iter_from(start)
    return itertools.islice(loader, start, None)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext, num_classes: int | None = None,
    env: DistEnv | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Mean cross-entropy and accuracy of ``model`` over ``loader`` (summed across ranks when distributed).

    Returns:
        ``loss``, ``acc`` (fraction), ``n``; with ``num_classes`` also ``per_class_acc`` (list, NaN for an absent
        class) and ``per_class_n``.
    """
    model.eval()
    k = num_classes or 0
    totals = None  # [loss_sum, correct, n, per-class correct (k), per-class count (k)] on the device
    for x, y in loader:
        with autocast():
            logits = model(x)
        pred = logits.argmax(1)
        row = torch.cat([
            torch.stack([F.cross_entropy(logits.float(), y, reduction="sum"), (pred == y).sum().float(),
                         torch.tensor(float(len(y)), device=y.device)]),
            torch.bincount(y[pred == y], minlength=k).float()[:k], torch.bincount(y, minlength=k).float()[:k],
        ])  # fmt: skip
        totals = row if totals is None else totals + row
    if totals is None and env is not None and env.enabled:  # this rank's shard is empty; the others' are not
        dev = next(model.parameters()).device
        totals = torch.zeros(3 + 2 * k, device=dev)
    if totals is None:
        raise ValueError("evaluate: the loader yielded no batches")
    totals = all_reduce_sum(totals, env or DistEnv()).double().cpu()  # the one sync of the evaluation
    out = {"loss": (totals[0] / totals[2]).item(), "acc": (totals[1] / totals[2]).item(), "n": int(totals[2])}
    if k:
        correct, count = totals[3 : 3 + k], totals[3 + k :]
        out["per_class_acc"] = (correct / count).tolist()  # 0 / 0 = NaN for a class absent from the subset
        out["per_class_n"] = count.long().tolist()
    return out


# ---------------------------------------------------------------------------------------------------- set-up
def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU raises ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but CUDA is not available (use --device auto or cpu)")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 on CUDA (no loss scaling needed) and off (float32) on CPU.

    ``bf16`` on CPU is supported (autocast runs convolutions and matmuls in bf16 through oneDNN); it is fast only
    where the CPU computes bf16 natively (:func:`cpu_has_native_bf16`). ``auto`` stays float32 on CPU: runs of one
    campaign on CPUs of different kinds then train in one precision (see README, "Precision on CPU").
    """
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


_DTYPE_NAMES = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _dtype_name(dtype: torch.dtype | None) -> str:
    """The effective training precision recorded in checkpoints, metrics rows and result.json."""
    return _DTYPE_NAMES[dtype]


def _dtype_from_name(name: str) -> torch.dtype | None:
    return {v: k for k, v in _DTYPE_NAMES.items()}[name]


def cpu_has_native_bf16() -> bool:
    """True where this CPU computes bf16 natively (AVX512-BF16 or AMX), so that bf16 autocast can beat float32."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def _configure_numerics(cfg: TrainConfig, device: torch.device) -> None:
    """Deterministic switch, else let cuDNN pick the fastest kernels; TF32 matmuls on CUDA unless deterministic."""
    if cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def build_model(cfg: TrainConfig) -> nn.Module:
    """``create_model`` from the config; options the constructor rejects become a ConfigError naming them."""
    kwargs = {"scheme": cfg.scheme, **cfg.model_kwargs}
    try:
        model = create_model(cfg.model, num_classes=cfg.num_classes, **kwargs)
        return model if cfg.memory == "auto" else set_memory(model, cfg.memory)
    except (TypeError, ValueError) as e:
        given = {k: v for k, v in kwargs.items() if v is not None}
        raise ConfigError(f"model {cfg.model!r} rejected its options {given}: {e}") from None


@dataclass
class _Data:
    train: CifarLoader | ImageNetLoader
    evals: dict[str, CifarLoader | ImageNetLoader]  # "val" (if split) and "test"
    num_train: int


def _build_data(cfg: TrainConfig, device: torch.device, env: DistEnv) -> _Data:
    """The training loader (augmented, sharded by rank) and the evaluation loaders of ``cfg.dataset``."""
    if cfg.dataset == "imagenet":
        return _Data(*imagenet_loaders(cfg, device, env))
    if not env.is_main:
        barrier(env)  # rank 0 reads (and, if it must, downloads) CIFAR first; the others then read its files
    try:
        return _build_cifar(cfg, device, env)
    finally:
        if env.is_main:
            barrier(env)


def _build_cifar(cfg: TrainConfig, device: torch.device, env: DistEnv) -> _Data:
    """Loads the CIFAR splits onto ``device`` and wraps them in loaders (train: augmented, sharded by rank)."""
    info = dataset_info(cfg.dataset)
    images, labels = load_cifar(cfg.data_dir, cfg.dataset, train=True, download=cfg.download)
    evals_raw: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if cfg.val_split:
        (images, labels), evals_raw["val"] = train_val_split(images, labels, cfg.val_split, seed=VAL_SPLIT_SEED)
    if cfg.subset is not None:
        if cfg.subset > len(images):
            raise ConfigError(f"--subset {cfg.subset} exceeds the {len(images)} training images of {cfg.dataset}"
                              f"{' left after --val-split' if cfg.val_split else ''}; use at most {len(images)} "
                              "(or no --subset)")  # fmt: skip
        images, labels = take_first(images, labels, cfg.subset)
    test = load_cifar(cfg.data_dir, cfg.dataset, train=False, download=cfg.download)
    evals_raw["test"] = take_first(*test, min(cfg.eval_subset, len(test[0]))) if cfg.eval_subset else test
    common = {"mean": info["mean"], "std": info["std"], "device": device, "channels_last": cfg.channels_last,
              "rank": env.rank, "world_size": env.world_size}  # fmt: skip
    if len(images) < cfg.batch_size:
        raise ConfigError(f"{len(images)} training images make no full batch of {cfg.batch_size}")
    train = CifarLoader(images, labels, cfg.batch_size, train=True, seed=cfg.seed, augment=cfg.augment, **common)
    eval_bs = cfg.batch_size * max(1, EVAL_BATCH // cfg.batch_size)  # a multiple of the world size, like batch_size
    evals = {k: CifarLoader(*v, eval_bs, train=False, **common) for k, v in evals_raw.items()}
    return _Data(train=train, evals=evals, num_train=len(images))


# ---------------------------------------------------------------------------------------------------- fit
@dataclass
class _Progress:
    """Where training stands; what ``last.state.pt`` records besides optimizer and RNG."""

    step: int = 0
    epoch: int = 0  # finished epochs
    batch: int = 0  # batches done in the unfinished epoch `epoch` (0 at an epoch boundary)
    partial: dict[str, Any] = field(default_factory=dict)  # loss_sum, correct, n, seconds of that partial epoch
    best: dict[str, Any] = field(default_factory=lambda: {"acc": None, "epoch": None, "on": None})
    wall_seconds: float = 0.0  # over all sessions of the run
    amp_dtype: str | None = None  # the precision the run trains in (None: a checkpoint from before it was recorded)


def _metadata(cfg: TrainConfig, progress: _Progress) -> dict[str, Any]:
    return {"model": cfg.model, "num_classes": cfg.num_classes, "dataset": cfg.dataset, "scheme": cfg.scheme,
            "model_kwargs": cfg.model_kwargs, "step": progress.step, "epoch": progress.epoch,
            "config_hash": config_hash(cfg), "format": "odearch/1"}  # fmt: skip


def _save_last(run: RunDir, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None, progress: _Progress, *, best: bool = False,
               row: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Writes the checkpoint as one generation (:func:`odearch.train.generations.commit`): last weights, state
    (with the epoch's metrics ``row``, so a resume can repair a log cut by a kill) and, if ``best``, the best weights.

    Raises:
        NonFiniteLossError: a weight, buffer or optimizer tensor is NaN/inf (the previous checkpoint is kept).
    """
    _check_finite(model, optimizer, progress)
    state = {
        "format": "odearch-train-state/1", "model": cfg.model, "config_hash": config_hash(cfg),
        "step": progress.step, "epoch": progress.epoch, "batch": progress.batch, "partial": progress.partial,
        "best": progress.best, "wall_seconds": progress.wall_seconds, "amp_dtype": progress.amp_dtype,
        "optimizer": optimizer.state_dict(), "scheduler": {"schedule": cfg.schedule, "step": progress.step},
        "scaler": scaler.state_dict() if scaler is not None else {}, "rng": capture_rng(), "row": row,
    }  # fmt: skip
    weights = weights_bytes(model, _metadata(cfg, progress))
    files = {"last.safetensors": weights, "last.state.pt": state_bytes(state), "best.safetensors": weights if best
             else None}  # fmt: skip
    generations.commit(run.checkpoints, files, {"step": progress.step, "epoch": progress.epoch,
                                                "batch": progress.batch})  # fmt: skip


def _check_finite(model: nn.Module, optimizer: torch.optim.Optimizer, progress: _Progress) -> None:
    """Every floating tensor to be saved (weights, BatchNorm statistics, momentum buffers) must be finite."""
    named = list(model.state_dict().items())
    named += [(f"optimizer state {i}.{k}", v) for i, st in enumerate(optimizer.state.values()) for k, v in st.items()]
    for name, t in named:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteLossError(f"non-finite values (NaN/inf) in {name} after step {progress.step} (epoch "
                                     f"{progress.epoch}): the checkpoint was NOT saved")  # fmt: skip


def _restore(
    run: RunDir, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> tuple[_Progress, dict[str, Any], dict[str, Any] | None]:  # fmt: skip
    """Loads the last checkpoint of ``run`` into model and optimizer (checksums verified); returns the progress,
    the RNG states and the metrics row of the checkpoint's epoch (None in checkpoints older than the row)."""
    if not run.last_state.is_file() and not run.last_weights.is_file():
        raise CheckpointError(f"{run.root} has no checkpoint yet (it was stopped before its first one was saved); "
                              f"start it again with: odearch train --config {run.config} --out {run.root} "
                              "--overwrite")  # fmt: skip
    state = load_state(run.last_state)
    check_state(state, run.last_state)
    if state.get("model") != cfg.model:
        raise CheckpointError(f"{run.last_state} was saved from model {state.get('model')!r}, but {run.config} "
                              f"says {cfg.model!r}")  # fmt: skip
    tensors, meta = load_weights(run.last_weights)
    weights_into(model, tensors, meta, run.last_weights, cfg.model)
    generations.read_verified(run.last_weights)
    generations.read_verified(run.last_state)
    if meta.get("step") != state["step"]:
        raise CheckpointError(f"{run.last_weights} (step {meta.get('step')}) and {run.last_state} (step "
                              f"{state['step']}) differ: the run was killed while saving")  # fmt: skip
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
        raise CheckpointError(f"{run.last_state}: optimizer state does not fit {cfg.model!r}: {e}") from None
    keys = ("step", "epoch", "batch", "partial", "best", "wall_seconds")
    row = state.get("row") if isinstance(state.get("row"), dict) else None
    if state.get("amp_dtype") is not None and state["amp_dtype"] not in _DTYPE_NAMES.values():
        raise CheckpointError(f"{run.last_state}: training state key 'amp_dtype' is {state['amp_dtype']!r}, expected "
                              f"one of {sorted(_DTYPE_NAMES.values())}")  # fmt: skip
    return _Progress(**{k: state[k] for k in keys}, amp_dtype=state.get("amp_dtype")), state["rng"], row


def _log(env: DistEnv, msg: str) -> None:
    if env.is_main:
        print(msg, flush=True)


def _pct(x: float | None) -> str:
    return "  n/a " if x is None else f"{100 * x:6.2f}%"


def fit(
    cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, command: str | None = None,
    progress_bar: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Trains ``cfg.model`` on ``cfg.dataset`` into the run directory ``cfg.out`` and returns the result summary.

    The run directory is locked (``flock``) for the whole call: a second writer is refused. SIGTERM and SIGINT stop
    at the next step with a resumable checkpoint and result.json (``status: stopped``, ``stop_reason``).

    Args:
        cfg: the resolved configuration (``cfg.out`` None: a new ``runs/<model>_<dataset>_s<seed>_<time>``).
        resume: continue the run in ``cfg.out`` from ``checkpoints/last.*`` (config taken as given).
        overwrite: replace an existing run in ``cfg.out`` (ignored with ``resume``).
        command: the command line recorded in result.json.
        progress_bar: tqdm progress bar; default: when stderr is a TTY.

    Returns:
        The dict written to ``result.json``.

    Raises:
        ConfigError: options that cannot run (unknown model kwargs, no CUDA, too small a subset).
        RunExistsError: ``cfg.out`` holds a run and neither ``resume`` nor ``overwrite`` is set, or another process is
            writing it (RunLockedError).
        CheckpointError: a checkpoint to resume from is missing, damaged or of another model.
        FileNotFoundError: the data files are missing and could not be downloaded.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    if cfg.out is None:
        cfg = cfg.replace(out=default_out(cfg))
    wall_start = time.monotonic()
    deadline = wall_start + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
    device = resolve_device(cfg.device)
    world_size = world_size_from_env()
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is the global batch and must split evenly over the "
                          f"{world_size} processes: use a multiple of {world_size}")  # fmt: skip
    env = init_distributed(device, timeout_s=cfg.dist_timeout)
    try:
        with contextlib.ExitStack() as stack:
            if env.enabled and device.type == "cuda":
                device = torch.device("cuda", env.local_rank)
            _configure_numerics(cfg, device)
            out = broadcast_object(cfg.out, env)  # a default out holds the time: rank 0's names the run
            if out != cfg.out:
                cfg = cfg.replace(out=out)
            run = RunDir(Path(cfg.out))
            _check_target(run, resume, overwrite)  # refuse before any work, so a mistake costs nothing
            stack.enter_context(_locked(run, env, resume, overwrite))
            barrier(env)  # every rank has checked before rank 0 creates the run
            stop = stack.enter_context(StopSignals())
            _seed_everything(cfg.seed)
            raw = build_model(cfg).to(device, memory_format=torch.channels_last if cfg.channels_last else None)
            data = _build_data(cfg, device, env)
            try:
                return _fit(cfg, run, raw, data, device, env, resume, overwrite, command, progress_bar, wall_start,
                            deadline, stop)  # fmt: skip
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e}; {_recovery_hint(run, cfg)}") from None
    finally:
        shutdown(env)


def _check_target(run: RunDir, resume: bool, overwrite: bool) -> None:
    """A resume needs a run; a new run needs a free directory (or ``overwrite`` of a run)."""
    if resume:
        if not run.is_run():
            raise CheckpointError(f"nothing to resume in {run.root}: not an odearch run")
    else:
        run.check_new(overwrite)


@contextlib.contextmanager
def _locked(run: RunDir, env: DistEnv, resume: bool, overwrite: bool) -> Iterator[None]:
    """Rank 0 holds the run directory's lock for the whole run (and checks the target again under it, as another
    process may have created a run meanwhile); every rank raises rank 0's error."""
    with contextlib.ExitStack() as stack:
        error: Exception | None = None
        if env.is_main:
            try:
                stack.enter_context(run.locked(create=not resume))
                _check_target(run, resume, overwrite)
                run.remove_temporaries()  # of a killed writer; nobody else writes now
            except (RunExistsError, CheckpointError, OSError) as e:
                error = e
        error = broadcast_object(error, env)
        if error is not None:
            raise error
        yield


def _begin(run: RunDir, cfg: TrainConfig, env: DistEnv, resume: bool, overwrite: bool, prog: _Progress,
           row: dict[str, Any] | None) -> bool:  # fmt: skip
    """Prepares the run directory (rank 0); returns False when a resumed run has nothing left to do.

    A resume repairs metrics.jsonl (drops rows newer than the checkpoint, restores the checkpoint epoch's row if a
    kill lost it) and rewrites config.yaml only when there is work to do (a finished run keeps its config).
    """
    todo = not resume or prog.epoch < cfg.epochs or prog.batch > 0
    if env.is_main:
        if resume:
            run.repair_metrics(prog.epoch, row)
            if todo:
                run.write_config(cfg)  # records allowed changes (more epochs, another data_dir)
        else:
            run.create(cfg, overwrite)
    barrier(env)
    return todo


def _fit(cfg: TrainConfig, run: RunDir, raw: nn.Module, data: _Data, device: torch.device, env: DistEnv,
         resume: bool, overwrite: bool, command: str | None, progress_bar: bool | None, wall_start: float,
         deadline: float, stop: StopSignals) -> dict[str, Any]:  # fmt: skip
    """The body of :func:`fit` once the model and the data are in place."""
    if env.enabled and cfg.sync_bn:
        raw = convert_sync_batchnorm(raw, device)
    optimizer = build_optimizer(raw, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay, lm_weight_decay=cfg.lm_weight_decay)  # fmt: skip
    amp_dtype = _amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    prog, rng, saved_row = _Progress(), None, None
    if resume:
        prog, rng, saved_row = _restore(run, cfg, raw, optimizer, scaler)
        if prog.amp_dtype is not None:  # keep the precision the run started in (auto may resolve otherwise now)
            amp_dtype = _dtype_from_name(prog.amp_dtype)
    prog.amp_dtype = _dtype_name(amp_dtype)
    model: nn.Module = raw
    if env.enabled:
        model = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    eval_model = raw
    if cfg.compile:
        model, eval_model = torch.compile(model), torch.compile(raw)

    n_params = sum(p.numel() for p in raw.parameters())
    select = "val" if cfg.select_on == "val" or (cfg.select_on == "auto" and cfg.val_split) else "test"
    finish = lambda stopped, reason=None: _finish(run, cfg, env, prog, data, n_params, select, command,  # noqa: E731
                                                  provenance(device), stopped, reason)  # fmt: skip
    if not _begin(run, cfg, env, resume, overwrite, prog, saved_row):
        _log(env, f"odearch: {run.root} already finished its {cfg.epochs} epochs; nothing to do")
        if run.result.is_file():
            return run.read_result()
        return finish(False)  # killed after the last checkpoint, before result.json: write it now
    if env.is_main and not resume:
        write_initial_k(run.root, raw)  # k_n before the first epoch (epoch 0 of the analysis plots)

    writer = TensorBoard(run.tb, prog.epoch + 1 if resume else None) if env.is_main and cfg.tensorboard else None
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)  # noqa: E731
    lr_fn = _lr_fn(cfg, len(data.train))
    use_bar = progress_bar if progress_bar is not None else sys.stderr.isatty()
    prov = provenance(device)
    _log(env, f"odearch: {cfg.model} ({n_params / 1e6:.3f}M params) on {cfg.dataset} ({data.num_train} train "
              f"images), {prov['device_name']}, {env.world_size} process(es), run dir {run.root}")  # fmt: skip
    if device.type == "cpu" and amp_dtype == torch.bfloat16 and not cpu_has_native_bf16():
        _log(env, "odearch: note: bf16 autocast on a CPU without AVX512-BF16 / AMX is emulated and usually slower "
                  "than float32 (--amp off)")  # fmt: skip
    if rng is not None:
        try:
            restore_rng(rng)
        except (TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{run.last_state}: unusable RNG state: {e}") from None

    stopped = False
    for epoch in range(prog.epoch, cfg.epochs):
        data.train.set_epoch(epoch)
        bar = _bar(use_bar and env.is_main, len(data.train), prog.batch, f"epoch {epoch + 1}/{cfg.epochs}")
        sums = None
        if prog.batch:
            p = prog.partial
            sums = {"loss_sum": p["loss_sum"].to(device), "correct": p["correct"].to(device), "n": p["n"]}
        t0, prev_seconds = time.perf_counter(), prog.partial.get("seconds", 0.0) if prog.batch else 0.0
        out = train_one_epoch(
            model, data.train, optimizer, lr_fn=lr_fn, step=prog.step, autocast=autocast,
            label_smoothing=cfg.label_smoothing, scaler=scaler, start_batch=prog.batch, sums=sums,
            should_stop=_stopper(deadline, env, device, stop),
            on_step=_on_step(bar, cfg.log_every, epoch, t0, env, _Eta(prog.step, len(data.train), cfg)),
        )  # fmt: skip
        totals = all_reduce_sum(torch.stack([out["loss_sum"].double(), out["correct"].double(),
                                             torch.tensor(float(out["n"]), device=device)]), env).cpu()  # fmt: skip
        seconds = prev_seconds + time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if not math.isfinite(totals[0].item()):
            raise NonFiniteLossError(f"training loss became non-finite in epoch {epoch + 1} (by step "
                                     f"{out['step']})")  # fmt: skip
        prog.step = out["step"]
        if out["stopped"]:  # --max-minutes or a signal hit mid-epoch: save the partial epoch exactly and stop
            prog.batch = out["batches"]
            prog.partial = {"loss_sum": out["loss_sum"].cpu(), "correct": out["correct"].cpu(), "n": out["n"],
                            "seconds": seconds}  # fmt: skip
            prog.wall_seconds += time.monotonic() - wall_start
            if env.is_main:
                _save_last(run, cfg, raw, optimizer, scaler, prog)
            stopped = True
            break
        broadcast_buffers(raw, env)
        evals = {k: evaluate(eval_model, _eval_progress(v, k, use_bar, env), autocast=autocast, env=env)
                 for k, v in data.evals.items()}  # fmt: skip
        row = {"epoch": epoch + 1, "step": prog.step, "train_loss": (totals[0] / totals[2]).item(),
               "train_acc": (totals[1] / totals[2]).item()}  # fmt: skip
        for k in ("test", "val"):
            if k in evals:
                row[f"{k}_loss"], row[f"{k}_acc"] = evals[k]["loss"], evals[k]["acc"]
        row |= {"lr": lr_fn(prog.step - 1), "seconds": seconds, "images_per_s": totals[2].item() / seconds,
                "lm_k": lm_coefficients(raw), "amp_dtype": prog.amp_dtype, "git_commit": prov["git_commit"],
                "git_dirty": prov["git_dirty"], "device_name": prov["device_name"]}  # fmt: skip  (the code and
        # the machine that ran this epoch: runs span commits and machines)
        prog.epoch, prog.batch, prog.partial = epoch + 1, 0, {}
        improved = prog.best["acc"] is None or row[f"{select}_acc"] > prog.best["acc"]
        if improved:
            prog.best = {"acc": row[f"{select}_acc"], "epoch": epoch + 1, "on": select}
        prog.wall_seconds += time.monotonic() - wall_start
        wall_start = time.monotonic()
        if env.is_main:
            _save_last(run, cfg, raw, optimizer, scaler, prog, best=improved, row=row)
            run.append_metrics(row)  # after the checkpoint (which holds the row too, for a resume to repair)
            if writer is not None:
                writer.log(row, epoch + 1)
        _log(env, f"epoch {epoch + 1:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc "
                  f"{_pct(row['train_acc'])}  " + "".join(f"{k} loss {row[f'{k}_loss']:.4f} acc "
                  f"{_pct(row[f'{k}_acc'])}  " for k in ("val", "test") if k in evals) +
             f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {seconds:.1f}s" +
             (f"  run ETA {_hms(seconds * (cfg.epochs - epoch - 1))}" if epoch + 1 < cfg.epochs else ""))  # fmt: skip
        if epoch + 1 < cfg.epochs and any_rank(time.monotonic() > deadline or stop.received is not None, env,
                                               device):  # fmt: skip
            stopped = True
            break
    else:
        prog.wall_seconds += time.monotonic() - wall_start

    if writer is not None:
        writer.close()
    return finish(stopped, (stop.received or "max_minutes") if stopped else None)


def _recovery_hint(run: RunDir, cfg: TrainConfig) -> str:
    """What is kept after a numerical failure, and how to retry with a lower learning rate."""
    kept = "no checkpoint was saved yet"
    found = generations.manifest_for(run.last_state) if run.last_state.is_file() else None
    if run.last_state.is_file():
        epoch = found[1].get("epoch", "?") if found else "?"
        kept = f"the last good checkpoint ({run.checkpoints}, epoch {epoch}) is kept"
    return (f"stopped; {kept}. --resume cannot change the learning rate: start a new run with a lower one, e.g. "
            f"odearch train --config {run.config} --lr {cfg.lr / 10:g} --warmup-epochs 1 --out NEW_DIR")  # fmt: skip


def _finish(
    run: RunDir, cfg: TrainConfig, env: DistEnv, prog: _Progress, data: _Data, n_params: int, select: str,
    command: str | None, prov: dict[str, Any], stopped: bool, reason: str | None,
) -> dict[str, Any]:  # fmt: skip
    """Builds result.json from the progress and the last metrics row, writes it (rank 0) and logs the outcome."""
    rows = run.read_metrics() if env.is_main else []
    last = rows[-1] if rows else {}
    result = {
        "status": "stopped" if stopped else "complete", "stop_reason": reason,
        "resume_with": f"odearch train --resume {run.root}" if stopped else None,
        "command": command or "odearch.train.fit (Python API)",
        "model": cfg.model, "dataset": cfg.dataset, "num_classes": cfg.num_classes, "model_kwargs": cfg.model_kwargs,
        "weight_decay": cfg.weight_decay, "lm_weight_decay": cfg.lm_weight_decay,
        "params": n_params, "amp": cfg.amp, "amp_dtype": prog.amp_dtype,
        "seed": cfg.seed, "epochs": cfg.epochs, "epochs_done": prog.epoch, "step": prog.step,
        "final_test_acc": last.get("test_acc"),
        "final_test_error_pct": None if last.get("test_acc") is None else 100 * (1 - last["test_acc"]),
        "final_val_acc": last.get("val_acc"),
        "best_acc": prog.best["acc"], "best_epoch": prog.best["epoch"], "best_selected_on": prog.best["on"],
        "best_note": None if select == "val" else (
            "no validation split: best epoch chosen on the TEST set, an optimistic estimate; report final_test_acc "
            "or use --val-split 5000" if cfg.select_on == "auto" else "selected on the test set (--select-on test)"),
        "test_images": data.evals["test"].num_images, "train_images": data.num_train,
        "wall_seconds": prog.wall_seconds, "world_size": env.world_size, **prov,
        "metrics": str(run.metrics), "config_hash": config_hash(cfg),
    }  # fmt: skip
    if env.is_main:
        run.write_result(result)
        why = f"after {cfg.max_minutes} min" if reason == "max_minutes" else f"by {reason}"
        how = f"stopped {why}; resume with: {result['resume_with']}" if stopped else "done"
        _log(env, f"odearch: {how}; final test acc {_pct(result['final_test_acc'])}, best {_pct(result['best_acc'])}"
                  f" ({select}, epoch {result['best_epoch']}); {run.result}")  # fmt: skip
    return result


def _stopper(deadline: float, env: DistEnv, device: torch.device, stop: StopSignals,
             every: int = 10) -> Callable[[], bool]:  # fmt: skip
    """The ``should_stop`` of ``train_one_epoch``: past ``deadline``, or a SIGTERM/SIGINT received. Distributed ranks
    decide together (each reads its own clock and signals), every ``every`` steps to spare a collective per step."""
    local = lambda: time.monotonic() > deadline or stop.received is not None  # noqa: E731
    if not env.enabled:
        return local
    calls = itertools.count(1)
    return lambda: next(calls) % every == 0 and any_rank(local(), env, device)


def _bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, unit="batch")


def _hms(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class _Eta:
    """Estimated time to the end of the run from this epoch's step rate: (total steps - step) / (steps / s).
    Training steps only: each epoch's evaluation comes on top (a few % of an epoch for CIFAR)."""

    first_step: int
    steps_per_epoch: int
    cfg: TrainConfig

    def __call__(self, step: int, elapsed: float, epoch: int) -> tuple[float, float]:
        """(seconds left in 0-based ``epoch``, seconds left in the run) at global ``step``."""
        rate = max((step - self.first_step) / max(elapsed, 1e-9), 1e-9)
        epoch_left = (epoch + 1) * self.steps_per_epoch - step
        run_left = self.cfg.epochs * self.steps_per_epoch - step
        return epoch_left / rate, run_left / rate


def _on_step(bar: Any, log_every: int, epoch: int, t0: float, env: DistEnv,
             eta: _Eta | None = None) -> Callable[[int, dict[str, Any]], None]:  # fmt: skip
    """Per-step hook: advances the progress bar; every ``log_every`` steps reads the running loss (one sync),
    shows it, and fails fast on a non-finite loss. Without a bar (stdout/stderr a file or pipe: a cluster job,
    ``nohup``) rank 0 prints the same as a line, with the time left in the epoch and in the run."""

    def hook(step: int, sums: dict[str, Any]) -> None:
        if bar is not None:
            bar.update(1)
        if log_every and step % log_every == 0:
            loss = sums["loss_sum"].item() / max(1, sums["n"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"training loss became non-finite in epoch {epoch + 1} (step {step}); "
                                         "stopped, keeping the last good checkpoint; try a lower --lr")  # fmt: skip
            acc = sums["correct"].item() / max(1, sums["n"])
            elapsed = time.perf_counter() - t0
            rate = sums["n"] * env.world_size / max(1e-9, elapsed)
            epoch_left, run_left = eta(step, elapsed, epoch) if eta is not None else (math.nan, math.nan)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * acc:.2f}%", img_s=f"{rate:.0f}",
                                run_eta=_hms(run_left) if math.isfinite(run_left) else "?")  # fmt: skip
            elif env.is_main:
                where = f"{step - epoch * eta.steps_per_epoch}/{eta.steps_per_epoch}" if eta else f"{step}"
                left = f"  epoch left {_hms(epoch_left)}  run ETA {_hms(run_left)}" if eta else ""
                print(f"epoch {epoch + 1} step {where}  loss {loss:.4f} acc {100 * acc:.2f}%  {rate:.0f} img/s{left}",
                      flush=True)  # fmt: skip

    return hook


def _eval_progress(loader: Any, name: str, use_bar: bool, env: DistEnv) -> Iterable[Any]:
    """``loader``'s batches, showing evaluation progress: a tqdm bar on a terminal, else a line when the
    evaluation starts (rank 0)."""
    if not env.is_main:
        yield from loader
        return
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = _bar(use_bar, total or 0, 0, f"eval {name}")
    if bar is None:
        print(f"evaluating on {name} ({total if total is not None else '?'} batches) ...", flush=True)
    try:
        for batch in loader:
            yield batch
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def write_initial_k(root: Path, model: nn.Module) -> Path | None:
    """Write the LM coefficients before training, ``ROOT/lm_k_init.json`` = ``{"epoch": 0, "lm_k": {...}}``
    (the ``lm_k`` of metrics.jsonl rows, at epoch 0; ``odearch analyze`` plots it as the first point of k over
    epochs). None, and no file, for a model without LM coefficients."""
    k = lm_coefficients(model)
    if not k:
        return None
    path = Path(root) / INITIAL_K_FILE
    atomic_write(path, (json.dumps({"epoch": 0, "lm_k": k}) + "\n").encode())
    return path


INITIAL_K_FILE = "lm_k_init.json"
