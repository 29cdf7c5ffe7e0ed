"""TensorBoard events, optional and never fatal: a full disk or a broken ``tb/`` directory turns the writer off with
one warning line instead of a traceback from TensorBoard's writer thread (metrics.jsonl keeps every number)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["TensorBoard", "replay"]

_HOOK_LOCK = threading.Lock()
_hook_installed = False


def _quiet_writer_thread_errors() -> None:
    """TensorBoard's writer thread re-raises an OSError that it also hands to the next main-thread call; the thread's
    own traceback is dropped (the main thread reports it as one line)."""
    global _hook_installed
    with _HOOK_LOCK:
        if _hook_installed:
            return
        previous = threading.excepthook

        def hook(args: Any) -> None:
            if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
                return
            previous(args)

        threading.excepthook = hook
        _hook_installed = True


def _scalars(row: dict[str, Any]) -> list[tuple[str, float]]:
    """The scalars of a metrics row: its float values (losses, accuracies, lr, seconds, rates)."""
    return [(k, v) for k, v in row.items() if isinstance(v, float)]


class TensorBoard:
    """A SummaryWriter for ``logdir`` that disables itself (one warning) on the first error.

    Args:
        logdir: ``RUN/tb``.
        purge_step: on resume, the first epoch to rewrite (events at or after it are dropped by TensorBoard).
    """

    def __init__(self, logdir: Path, purge_step: int | None) -> None:
        self.logdir = logdir
        self._writer: Any = None
        _quiet_writer_thread_errors()
        try:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, only when used

            self._writer = SummaryWriter(str(logdir), purge_step=purge_step)
        except OSError as e:
            self._disable(e)

    def _disable(self, e: BaseException) -> None:
        why = getattr(e, "strerror", None) or e
        print(
            f"odearch: warning: TensorBoard events disabled, cannot write {self.logdir}: {why} (metrics.jsonl is "
            "unaffected)",
            file=sys.stderr,
            flush=True,
        )
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # the writer is already broken; closing it is best effort
                pass

    def log(self, row: dict[str, Any], step: int) -> None:
        """Adds every float of ``row`` as a scalar at ``step`` and flushes."""
        if self._writer is None:
            return
        try:
            for k, v in _scalars(row):
                self._writer.add_scalar(k, v, step)
            self._writer.flush()
        except OSError as e:
            self._disable(e)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as e:
                self._disable(e)


def replay(rows: list[dict[str, Any]], logdir: Path) -> None:
    """Writes the rows of a run's ``metrics.jsonl`` into ``logdir`` as TensorBoard events, as training logs them: every
    float of a row a scalar at step ``row["epoch"]``. Events an earlier replay left there at those steps are hidden
    (``purge_step``, as on resume), so replaying again shows each epoch once.

    Raises:
        OSError: ``logdir`` cannot be written.
    """
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only when used

    if not rows:
        return
    writer = SummaryWriter(str(logdir), purge_step=min(int(r["epoch"]) for r in rows))
    try:
        for row in rows:
            for k, v in _scalars(row):
                writer.add_scalar(k, v, int(row["epoch"]))
    finally:
        writer.close()
