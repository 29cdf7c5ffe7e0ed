"""What a run prints: progress bars (a terminal) or progress lines (a file or pipe), and the per-epoch line.

Only rank 0 prints. The per-step hook reads the running loss every ``log_every`` steps (one device sync each time)
and fails fast on a non-finite loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .distributed import DistEnv
from .epoch import NonFiniteLossError
from .peakmem import peak_rss_mib

__all__ = ["Eta", "epoch_line", "eval_progress", "hms", "log", "make_bar", "outcome", "pct", "progress_hook"]


def log(env: DistEnv, msg: str) -> None:
    """Prints ``msg`` on rank 0."""
    if env.is_main:
        print(msg, flush=True)


def pct(x: float | None) -> str:
    """A fraction as a fixed-width percentage (``  n/a `` for None)."""
    return "  n/a " if x is None else f"{100 * x:6.2f}%"


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def make_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar, or None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, unit="batch")


@dataclass
class Eta:
    """Estimated time to the end of the run from this epoch's step rate: (total steps - step) / (steps / s).
    Training steps only: each epoch's evaluation comes on top (a few % of an epoch for CIFAR)."""

    first_step: int
    steps_per_epoch: int
    epochs: int

    def __call__(self, step: int, elapsed: float, epoch: int) -> tuple[float, float]:
        """(seconds left in 0-based ``epoch``, seconds left in the run) at global ``step``."""
        rate = max((step - self.first_step) / max(elapsed, 1e-9), 1e-9)
        epoch_left = (epoch + 1) * self.steps_per_epoch - step
        run_left = self.epochs * self.steps_per_epoch - step
        return epoch_left / rate, run_left / rate


def progress_hook(
    bar: Any, log_every: int, epoch: int, t0: float, env: DistEnv, eta: Eta | None = None, start_n: int = 0
) -> Callable[[int, dict[str, Any]], None]:
    """Per-step hook: advances the progress bar; every ``log_every`` steps reads the running loss (one sync),
    shows it, and fails fast on a non-finite loss. Without a bar (stdout/stderr a file or pipe: a cluster job,
    ``nohup``) rank 0 prints the same as a line, with the time left in the epoch and in the run. ``start_n``: the
    images per rank already in the sums at ``t0`` (a resumed partial epoch); the img/s rate counts only the others,
    like the ETA."""

    def hook(step: int, sums: dict[str, Any]) -> None:
        if bar is not None:
            bar.update(1)
        if log_every and step % log_every == 0:
            loss = sums["loss_sum"].item() / max(1, sums["n"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"training loss became non-finite in epoch {epoch + 1} (step {step}); "
                    "stopped, keeping the last good checkpoint; try a lower --lr"
                )
            acc = sums["correct"].item() / max(1, sums["n"])
            elapsed = time.perf_counter() - t0
            rate = (sums["n"] - start_n) * env.world_size / max(1e-9, elapsed)
            epoch_left, run_left = eta(step, elapsed, epoch) if eta is not None else (math.nan, math.nan)
            peak = peak_rss_mib()  # the process's peak resident size this epoch (reset at its start)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{loss:.4f}",
                    acc=f"{100 * acc:.2f}%",
                    img_s=f"{rate:.0f}",
                    run_eta=hms(run_left) if math.isfinite(run_left) else "?",
                    **({"peak": f"{peak:.0f}MiB"} if peak is not None else {}),
                )
            elif env.is_main:
                where = f"{step - epoch * eta.steps_per_epoch}/{eta.steps_per_epoch}" if eta else f"{step}"
                left = f"  epoch left {hms(epoch_left)}  run ETA {hms(run_left)}" if eta else ""
                left += f"  peak {peak:.0f} MiB" if peak is not None else ""
                print(
                    f"epoch {epoch + 1} step {where}  loss {loss:.4f} acc {100 * acc:.2f}%  {rate:.0f} img/s{left}",
                    flush=True,
                )

    return hook


def outcome(result: dict[str, Any], select: str) -> str:
    """The results in a run's last line: final test accuracy and best checkpoint, or that no epoch was evaluated."""
    if result["final_test_acc"] is None and result["best_epoch"] is None:
        return "stopped before the first evaluation: no accuracy yet"
    acc = result["final_test_acc"]
    final = "no final test acc" if acc is None else f"final test acc {pct(acc)}"
    if result["best_epoch"] is None:
        return final
    return f"{final}, best {pct(result['best_acc'])} ({select}, epoch {result['best_epoch']})"


def eval_progress(loader: Any, name: str, use_bar: bool, env: DistEnv) -> Iterable[Any]:
    """``loader``'s batches, showing evaluation progress: a tqdm bar on a terminal, else a line when the
    evaluation starts (rank 0)."""
    if not env.is_main:
        yield from loader
        return
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = make_bar(use_bar, total or 0, 0, f"eval {name}")
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


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The line printed after an epoch: train, val and test loss and accuracy, lr, speed, time, run ETA."""
    epoch, seconds = row["epoch"], row["seconds"]
    evals = "".join(
        f"{k} loss {row[f'{k}_loss']:.4f} acc {pct(row[f'{k}_acc'])}  " for k in ("val", "test") if f"{k}_acc" in row
    )
    return (
        f"epoch {epoch:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {pct(row['train_acc'])}  {evals}"
        f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {seconds:.1f}s{_peak(row)}"
        + (f"  run ETA {hms(seconds * (epochs - epoch))}" if epoch < epochs else "")
    )


def _peak(row: dict[str, Any]) -> str:
    """``  peak 412 MiB`` (the process's peak RSS over the epoch; CUDA: peak allocated), or nothing."""
    if "cuda_peak_allocated_mib" in row:
        return f"  peak {row['cuda_peak_allocated_mib']:.0f} MiB GPU"
    return f"  peak {row['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in row else ""
