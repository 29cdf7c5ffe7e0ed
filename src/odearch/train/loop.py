"""The trainer: ``fit(cfg)`` opens the run, builds a :class:`~odearch.train.state.TrainState` once, then repeats the
named steps of an epoch (train it, evaluate and log a row, checkpoint) and summarises the run in result.json.

Speed: the data set lives on the training device and is augmented there per batch (``odearch.data.CifarLoader``);
the loss and correct-count are summed on the device and read once per epoch (plus once every ``log_every`` steps
for the progress bar), since every ``.item()`` is a host-device sync; batches and weights are channels_last;
autocast is bf16 on CUDA by default. The same code runs on the CPU. ImageNet (``dataset="imagenet"``) streams from
an ImageFolder through DataLoader workers instead (:mod:`odearch.data.splits`); the loop is the same.

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

Where to extend: the optimizer step (gradient clipping, an EMA, another update rule) is
:class:`odearch.train.epoch.TrainStep`, one short override; the optimizer is
:func:`odearch.train.optim.build_optimizer`; a data set is a row of :data:`odearch.data.DATASETS`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn import lm_coefficients
from ..runfiles import INITIAL_K_FILE
from . import generations
from .checkpoint import CheckpointError, atomic_write, restore_rng
from .config import ConfigError, TrainConfig, config_hash
from .console import Eta, epoch_line, eval_progress, log, make_bar, outcome, progress_hook
from .distributed import (
    DistEnv,
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_buffers,
    broadcast_object,
    init_distributed,
    shutdown,
    world_size_from_env,
)
from .epoch import NonFiniteLossError, batches_from, evaluate, train_one_epoch
from .kforces import KFORCE_SUMS, KForces
from .multilevel import carry_momentum, mesh_level, refined_model
from .numerics import configure_numerics, cpu_has_native_bf16, resolve_device
from .provenance import provenance
from .rundir import RunDir, RunExistsError, default_out
from .schedule import late_milestones
from .signals import StopSignals
from .state import RunControl, TrainState, build_state, make_optimizer, save_checkpoint, wrap_model
from .tensorboard import TensorBoard

__all__ = ["INITIAL_K_FILE", "fit", "write_initial_k"]


# ---------------------------------------------------------------------------------------------------------- fit
def fit(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    progress_bar: bool | None = None,
) -> dict[str, Any]:
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
    cfg = cfg if cfg.out is not None else cfg.replace(out=default_out(cfg))
    wall_start = time.monotonic()
    deadline = wall_start + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
    device = resolve_device(cfg.device)
    _check_global_batch(cfg.batch_size, world_size_from_env())
    env = init_distributed(device, timeout_s=cfg.dist_timeout)
    try:
        with contextlib.ExitStack() as stack:
            cfg, device, run, stop = _open_run(stack, cfg, env, device, resume, overwrite)
            use_bar = progress_bar if progress_bar is not None else sys.stderr.isatty()
            ctl = RunControl(stop, deadline, wall_start, use_bar, command)
            try:
                return _train(build_state(cfg, run, env, device, ctl, resume=resume), resume, overwrite)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e}; {_recovery_hint(run, cfg)}") from None
    finally:
        shutdown(env)


def _train(s: TrainState, resume: bool, overwrite: bool) -> dict[str, Any]:
    """The epochs from where the run stands (train, evaluate and log, checkpoint), then the summary."""
    if not _begin(s, resume, overwrite):
        return _nothing_to_do(s)
    if s.env.is_main and not resume:
        write_initial_k(s.run.root, s.raw)  # k_n before the first epoch (epoch 0 of the analysis plots)
    if s.env.is_main and s.cfg.tensorboard:
        s.writer = TensorBoard(s.run.tb, s.prog.epoch + 1 if resume else None)
    _start(s)
    if not resume and (note := late_milestones(s.cfg)):  # `--epochs 4` of a 160-epoch recipe, say
        log(s.env, f"odearch: warning: {note}")
    if resume:  # where this process starts (its progress lines' rates count only the steps it runs)
        where = f"epoch {s.prog.epoch + 1} step {s.prog.batch}/{len(s.data.train)} (global step {s.prog.step})"
        log(s.env, f"odearch: resuming at {where}")
    stopped = False
    for epoch in range(s.prog.epoch, s.cfg.epochs):
        if s.prog.batch == 0 and epoch in s.cfg.refine_at:
            _refine(s, epoch)
        out = _train_epoch(s, epoch)
        if out["stopped"]:  # --max-minutes or a signal hit mid-epoch: save the partial epoch exactly and stop
            _save_partial_epoch(s, out)
            stopped = True
            break
        _end_epoch(s, _evaluate_row(s, epoch, out))
        if epoch + 1 < s.cfg.epochs and any_rank(s.ctl.past_deadline(), s.env, s.device):
            stopped = True
            break
    else:
        s.add_wall_time()
    if s.writer is not None:
        s.writer.close()
    return _summarise(s, stopped, (s.ctl.stop.received or "max_minutes") if stopped else None)


# ------------------------------------------------------------------------------------------- the epoch's steps
def _refine(s: TrainState, epoch: int) -> None:
    """Multi-level training, after epoch ``epoch``: the model refined (:mod:`odearch.train.multilevel`), the
    optimizer rebuilt over it with the momentum buffers carried through the parameter map, the wrappers renewed."""
    raw, maps = refined_model(s.raw, s.cfg.refine_factor)
    optimizer = make_optimizer(raw, s.cfg)
    carry_momentum(s.optimizer.state, optimizer.state, maps)
    s.raw, s.optimizer, s.train_step.optimizer = raw, optimizer, optimizer
    s.model, s.eval_model = wrap_model(raw, s.cfg, s.env, s.device)
    level = mesh_level(s.cfg, epoch, 1)
    log(
        s.env,
        f"odearch: refined by {s.cfg.refine_factor} after epoch {epoch} (mesh level {level}): "
        f"{sum(p.numel() for p in raw.parameters()) / 1e6:.3f}M params",
    )


def _train_epoch(s: TrainState, epoch: int) -> dict[str, Any]:
    """Trains epoch ``epoch`` from the batch where the run stands (its sums continued); returns ``train_one_epoch``'s
    dict with ``totals`` (loss sum, correct, n over all ranks, on the CPU), ``seconds`` and ``stopped`` (ended before
    the epoch's last batch)."""
    s.data.train.set_epoch(epoch)
    if s.peak is not None:
        s.peak.reset()  # the epoch's peak memory: training and its evaluation
    steps = len(s.data.train)
    bar = make_bar(s.ctl.use_bar and s.env.is_main, steps, s.prog.batch, f"epoch {epoch + 1}/{s.cfg.epochs}")
    sums, prev_seconds = None, 0.0
    if s.prog.batch:
        p = s.prog.partial
        sums = {"loss_sum": p["loss_sum"].to(s.device), "correct": p["correct"].to(s.device), "n": p["n"]}
        sums |= {k: p[k] for k in KFORCE_SUMS if k in p}  # the LM force sums of a partial epoch (on the CPU)
        prev_seconds = p.get("seconds", 0.0)
    t0 = time.perf_counter()
    eta = Eta(s.prog.step, steps, s.cfg.epochs)
    show = progress_hook(bar, s.cfg.log_every, epoch, t0, s.env, eta, start_n=int(sums["n"]) if sums else 0)
    should_stop = _stopper(s)
    forces = KForces(s.raw, s.optimizer)
    out = train_one_epoch(
        s.model,
        batches_from(s.data.train, s.prog.batch),
        s.train_step,
        step=s.prog.step,
        sums=sums,
        on_step=lambda step, sums: show(step, sums) or should_stop(),
        kforces=forces,
    )
    out["lm_forces"] = forces.row(out)
    totals = all_reduce_sum(
        torch.stack(
            [out["loss_sum"].double(), out["correct"].double(), torch.tensor(float(out["n"]), device=s.device)]
        ),
        s.env,
    ).cpu()
    seconds = prev_seconds + time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if not math.isfinite(totals[0].item()):
        raise NonFiniteLossError(f"training loss became non-finite in epoch {epoch + 1} (by step {out['step']})")
    s.prog.step = out["step"]
    stopped = out["stopped"] and s.prog.batch + out["batches"] < steps
    return out | {"totals": totals, "seconds": seconds, "stopped": stopped}


def _save_partial_epoch(s: TrainState, out: dict[str, Any]) -> None:
    """Records the unfinished epoch exactly (batches done, running sums, seconds) and checkpoints it (rank 0)."""
    s.prog.batch += out["batches"]
    s.prog.partial = {
        "loss_sum": out["loss_sum"].cpu(),
        "correct": out["correct"].cpu(),
        "n": out["n"],
        "seconds": out["seconds"],
    }
    s.prog.partial |= {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items() if k in KFORCE_SUMS}
    s.add_wall_time()
    if s.env.is_main:
        save_checkpoint(s.run, s.cfg, s.raw, s.optimizer, s.scaler, s.prog, step=s.train_step.state_dict())


def _evaluate_row(s: TrainState, epoch: int, out: dict[str, Any]) -> dict[str, Any]:
    """Evaluates on "val" (if split) and "test"; returns the epoch's metrics row, with the code and the machine that
    ran it (runs span commits and machines)."""
    broadcast_buffers(s.raw, s.env)
    evals = {  # prefix + split: "test", "val", and with an EMA "ema_test", "ema_val"
        prefix + k: evaluate(m, eval_progress(v, prefix + k, s.ctl.use_bar, s.env), autocast=s.autocast, env=s.env)
        for prefix, m in s.train_step.eval_models(s.eval_model).items()
        for k, v in s.data.evals.items()
    }
    totals, seconds = out["totals"], out["seconds"]
    row = {
        "epoch": epoch + 1,
        "step": s.prog.step,
        "train_loss": (totals[0] / totals[2]).item(),
        "train_acc": (totals[1] / totals[2]).item(),
    }
    for k in ("test", "val", "ema_test", "ema_val"):
        if k in evals:
            row[f"{k}_loss"], row[f"{k}_acc"] = evals[k]["loss"], evals[k]["acc"]
    prov = s.prov
    return row | {
        "lr": s.lr(s.prog.step - 1),
        "seconds": seconds,
        "images_per_s": totals[2].item() / seconds,
        "lm_k": lm_coefficients(s.raw),
        **out["lm_forces"],
        "amp_dtype": s.prog.amp_dtype,
        **_mesh_row(s, epoch),
        **(s.peak.read() if s.peak is not None else {}),
        "git_commit": prov["git_commit"],
        "git_dirty": prov["git_dirty"],
        "device_name": prov["device_name"],
    }


def _mesh_row(s: TrainState, epoch: int) -> dict[str, Any]:
    """A multi-level run's row records the mesh level the epoch trained at and the parameter count (else nothing)."""
    if not s.cfg.refine_at:
        return {}
    return {"mesh_level": mesh_level(s.cfg, epoch, 1), "params": sum(p.numel() for p in s.raw.parameters())}


def _end_epoch(s: TrainState, row: dict[str, Any]) -> None:
    """Records the finished epoch: progress and best epoch, the checkpoint, then (after it, so that a resume can
    restore a row a kill lost) the metrics row and TensorBoard (rank 0); prints the epoch's line."""
    s.prog.epoch, s.prog.batch, s.prog.partial = row["epoch"], 0, {}
    on = f"ema_{s.select}" if f"ema_{s.select}_acc" in row else s.select  # with an EMA, the best EMA epoch
    acc = row[f"{on}_acc"]
    improved = s.prog.best["acc"] is None or acc > s.prog.best["acc"]
    if improved:
        s.prog.best = {"acc": acc, "epoch": row["epoch"], "on": on}
    s.add_wall_time()
    if s.env.is_main:
        save_checkpoint(
            s.run, s.cfg, s.raw, s.optimizer, s.scaler, s.prog, best=improved, row=row, step=s.train_step.state_dict()
        )
        s.run.append_metrics(row)
        if s.writer is not None:
            s.writer.log(row, row["epoch"])
    log(s.env, epoch_line(row, s.cfg.epochs))


def _stopper(s: TrainState, every: int = 10) -> Callable[[], bool]:
    """The stop test after each step: past the deadline, or a SIGTERM/SIGINT received. Distributed ranks decide
    together (each reads its own clock and signals), every ``every`` steps to spare a collective per step."""
    if not s.env.enabled:
        return s.ctl.past_deadline
    calls = itertools.count(1)
    return lambda: next(calls) % every == 0 and any_rank(s.ctl.past_deadline(), s.env, s.device)


# ------------------------------------------------------------------------------------------ opening and closing
def _check_global_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ConfigError(
            f"batch_size {batch_size} is the global batch and must split evenly over the "
            f"{world_size} processes: use a multiple of {world_size}"
        )


def _open_run(
    stack: contextlib.ExitStack, cfg: TrainConfig, env: DistEnv, device: torch.device, resume: bool, overwrite: bool
) -> tuple[TrainConfig, torch.device, RunDir, StopSignals]:
    """Device of this rank, numerics, the run directory (rank 0's name, checked, then locked for the whole run) and
    the signal handlers; returns (config, device, run, signals)."""
    if env.enabled and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    configure_numerics(cfg, device)
    out = broadcast_object(cfg.out, env)  # a default out holds the time: rank 0's names the run
    if out != cfg.out:
        cfg = cfg.replace(out=out)
    run = RunDir(Path(cfg.out))
    _check_target(run, resume, overwrite)  # refuse before any work, so a mistake costs nothing
    stack.enter_context(_locked(run, env, resume, overwrite))
    barrier(env)  # every rank has checked before rank 0 creates the run
    return cfg, device, run, stack.enter_context(StopSignals())


def _check_target(run: RunDir, resume: bool, overwrite: bool) -> None:
    """A resume needs a run with a checkpoint; a new run needs a free directory (or ``overwrite`` of an unfinished
    run)."""
    if resume:
        if not run.is_run():
            raise CheckpointError(f"nothing to resume in {run.root}: not an odearch run")
        if not run.last_state.is_file() and not run.last_weights.is_file():
            raise CheckpointError(run.no_checkpoint_message())  # before any work (a pruned run: no model, no data)
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


def _begin(s: TrainState, resume: bool, overwrite: bool) -> bool:
    """Prepares the run directory (rank 0); returns False when a resumed run has nothing left to do.

    A resume repairs metrics.jsonl (drops rows newer than the checkpoint, restores the checkpoint epoch's row if a
    kill lost it) and rewrites config.yaml only when there is work to do (a finished run keeps its config).
    """
    todo = not resume or s.prog.epoch < s.cfg.epochs or s.prog.batch > 0
    if s.env.is_main:
        if resume:
            s.run.repair_metrics(s.prog.epoch, s.saved_row)
            if todo:
                s.run.write_config(s.cfg)  # records allowed changes (more epochs, another data_dir)
        else:
            s.run.create(s.cfg, overwrite)
    barrier(s.env)
    return todo


def _nothing_to_do(s: TrainState) -> dict[str, Any]:
    """The result of a resumed run with no epoch left to train. A run at the last epoch of its own config.yaml is
    finished: a result.json that a kill after the last checkpoint left missing or ``stopped`` is rewritten as
    ``complete``. A run that only reached a lower ``--epochs`` keeps its result."""
    own_epochs = s.run.read_config().epochs
    old = s.run.complete_result()
    if old is not None:
        log(s.env, f"odearch: {s.run.root} already finished its {old.get('epochs', own_epochs)} epochs; nothing to do")
        return old
    if s.prog.epoch >= own_epochs:
        log(
            s.env,
            f"odearch: {s.run.root} trained its {own_epochs} epochs but was stopped before it recorded that "
            "(result.json missing or 'stopped'): writing its result as complete",
        )
        s.cfg = s.cfg.replace(epochs=own_epochs)
        return _summarise(s, False)
    log(
        s.env,
        f"odearch: {s.run.root} has {s.prog.epoch} of its {own_epochs} epochs, at least the {s.cfg.epochs} "
        "asked; nothing to do",
    )
    return s.run.read_result() if s.run.result.is_file() else _summarise(s, False)


def _start(s: TrainState) -> None:
    """Records provenance, prints the run's header, and restores the RNG states of the checkpoint resumed from."""
    n_params = sum(p.numel() for p in s.raw.parameters())
    s.prov = provenance(s.device)
    log(
        s.env,
        f"odearch: {s.cfg.model} ({n_params / 1e6:.3f}M params) on {s.cfg.dataset} ({s.data.num_train} train "
        f"images), {s.prov['device_name']}, {s.env.world_size} process(es), run dir {s.run.root}",
    )
    if s.device.type == "cpu" and s.amp == torch.bfloat16 and not cpu_has_native_bf16():
        log(
            s.env,
            "odearch: note: bf16 autocast on a CPU without AVX512-BF16 / AMX is emulated and usually slower "
            "than float32 (--amp off)",
        )
    if s.rng is not None:
        try:
            restore_rng(s.rng)
        except (TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{s.run.last_state}: unusable RNG state: {e}") from None


def _summarise(s: TrainState, stopped: bool, reason: str | None = None) -> dict[str, Any]:
    """Builds result.json from the progress and the last metrics row, writes it (rank 0) and logs the outcome."""
    cfg, prog, run = s.cfg, s.prog, s.run
    rows = run.read_metrics() if s.env.is_main else []
    last = rows[-1] if rows else {}
    result = {
        "status": "stopped" if stopped else "complete",
        "stop_reason": reason,
        "resume_with": f"odearch train --resume {run.root}" if stopped else None,
        "command": s.ctl.command or "odearch.train.fit (Python API)",
        "model": cfg.model,
        "dataset": cfg.dataset,
        "num_classes": cfg.num_classes,
        "model_kwargs": cfg.model_kwargs,
        "weight_decay": cfg.weight_decay,
        "lm_weight_decay": cfg.lm_weight_decay,
        **({"refine_at": list(cfg.refine_at), "refine_factor": cfg.refine_factor} if cfg.refine_at else {}),
        "params": sum(p.numel() for p in s.raw.parameters()),
        "amp": cfg.amp,
        "amp_dtype": prog.amp_dtype,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "epochs_done": prog.epoch,
        "step": prog.step,
        "final_test_acc": last.get("test_acc"),
        "final_test_error_pct": None if last.get("test_acc") is None else 100 * (1 - last["test_acc"]),
        "final_val_acc": last.get("val_acc"),
        "best_acc": prog.best["acc"],
        "best_epoch": prog.best["epoch"],
        "best_selected_on": prog.best["on"],
        "best_note": None
        if s.select == "val"
        else (
            "no validation split: best epoch chosen on the TEST set, an optimistic estimate; report final_test_acc "
            "or use --val-split 5000"
            if cfg.select_on == "auto"
            else "selected on the test set (--select-on test)"
        ),
        "test_images": s.data.evals["test"].num_images,
        "train_images": s.data.num_train,
        "wall_seconds": prog.wall_seconds,
        "world_size": s.env.world_size,
        **provenance(s.device),
        "peak_rss_mib": max((r["peak_rss_mib"] for r in rows if "peak_rss_mib" in r), default=None),
        "metrics": str(run.metrics),
        "config_hash": config_hash(cfg),
    }
    if s.env.is_main:
        run.write_result(result)
        why = f"after {cfg.max_minutes} min" if reason == "max_minutes" else f"by {reason}"
        how = f"stopped {why}; resume with: {result['resume_with']}" if stopped else "done"
        log(s.env, f"odearch: {how}; {outcome(result, s.select)}; {run.result}")
    return result


def _recovery_hint(run: RunDir, cfg: TrainConfig) -> str:
    """What is kept after a numerical failure, and how to retry with a lower learning rate."""
    kept = "no checkpoint was saved yet"
    found = generations.manifest_for(run.last_state) if run.last_state.is_file() else None
    if run.last_state.is_file():
        epoch = found[1].get("epoch", "?") if found else "?"
        kept = f"the last good checkpoint ({run.checkpoints}, epoch {epoch}) is kept"
    return (
        f"stopped; {kept}. --resume cannot change the learning rate: start a new run with a lower one, e.g. "
        f"odearch train --config {run.config} --lr {cfg.lr / 10:g} --warmup-epochs 1 --out NEW_DIR"
    )


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
