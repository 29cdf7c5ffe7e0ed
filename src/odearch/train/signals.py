"""Graceful stops: SIGTERM (a cluster's preemption notice) and SIGINT (Ctrl-C) end training at the next step with a
resumable checkpoint and result.json, like ``--max-minutes``; a second SIGINT interrupts at once.

Also the guards that keep processes from outliving the one that started them (Linux): :func:`die_with_parent` asks
the kernel to send a signal when the parent process dies (``prctl(PR_SET_PDEATHSIG)``), so the workers of a
SIGKILLed torchrun agent stop instead of training on as orphans.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

__all__ = ["StopSignals", "die_with_parent"]

PR_SET_PDEATHSIG = 1


class StopSignals:
    """Context manager: while active, SIGTERM and SIGINT set :attr:`received` (the first signal's name) instead of
    killing the process; a second SIGINT raises KeyboardInterrupt. A no-op outside the main thread."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signal.Signals(signum).name
            print(
                f"odearch: {self.received} received: stopping after this step with a resumable checkpoint "
                "(Ctrl-C again to abort at once)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: deliver ``sig`` to this process when its parent dies (a no-op elsewhere). If the parent died before the
    call took effect (this process was re-parented meanwhile), the signal is raised now."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
