"""Run a training campaign in resumable stretches: resume the first unfinished run of a queue, then the next.

    python scripts/campaign.py --max-minutes 140                  # results/campaign/queue.yaml, runs beside it
    python scripts/campaign.py --max-minutes 140 --dry-run        # say what would run
    python scripts/campaign.py --save-log campaign.log            # after a stretch: each run's part -> stretchN.log

The queue (YAML) lists runs in order, each ``name`` (its directory under ``--runs-dir``, unique in the queue),
``config`` (a YAML of ``configs/``), ``seed`` and optionally ``amp`` (``off``, the default: fp32; or ``bf16``),
``requires`` (a ``TrainConfig`` field that must exist before the run may start, e.g. an option another issue adds) and
``args`` (a list of extra ``odearch train`` flags). The whole queue is checked before anything runs; a queue, log or
runs directory the campaign cannot use is one line, ``campaign: error: ...``, with exit code 2.

A finished run (``result.json`` status ``complete``) is skipped; a started one is resumed with ``odearch train
--resume`` (in the precision it started in); a new one is started. A run stopped before its first checkpoint (a
config.yaml, but no checkpoint, no metrics row, no complete result.json: nothing to lose) is started again as new,
with ``--overwrite``. Every ``odearch train`` gets what is left of ``--max-minutes``, so the whole call stops cleanly,
with a resumable checkpoint, by then. Each epoch's row in ``metrics.jsonl`` records the commit (and dirty flag) that
trained it. At the end the campaign says which runs are not done (waiting for an option, or passed over).

Signals: SIGINT (Ctrl-C) and SIGTERM (``kill``) to the campaign are forwarded to the training process (once: it runs
in its own process group), which stops at its next step with a resumable checkpoint; the campaign then exits with
128 + the signal's number and starts no other run. A second Ctrl-C aborts the training at once. Should the campaign
itself die (SIGKILL), the kernel sends its training process SIGTERM (``PR_SET_PDEATHSIG``, Linux), so that it
checkpoints and releases its run's lock instead of training on alone.

Precision: a bf16 run (new, or started in bf16) is passed over on a machine without CUDA whose CPU lacks
``avx512_bf16`` and ``amx_bf16`` (there bf16 autocast is emulated, several times slower than fp32); the campaign says
so and takes the next fp32 run, if any.

Data: ``--data-dir``, else ``$ODEARCH_DATA``, else the queue's ``data_dir`` (relative to the repository), else
``odearch train``'s own default.

``--save-log LOG`` files a stretch's console log (what the campaign printed, redirected to LOG) with its runs: each
run's part, from the ``campaign: NAME (...)`` line that started it, without the per-step progress lines, becomes
``RUN/stretchN.log`` (N one past the run's last); a part identical to the run's last stretch log is not filed again.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MIN_MINUTES = 3.0  # not worth starting a stretch shorter than this (model build, data load, one epoch's eval)
QUEUE_KEYS = ("data_dir", "runs")
ENTRY_KEYS = ("name", "config", "seed", "amp", "requires", "args")
AMPS = ("off", "bf16")
CAMPAIGN_FLAGS = ("--config", "--seed", "--out", "--amp", "--resume", "--overwrite", "--data-dir", "--max-minutes")


class CampaignError(Exception):
    """A queue, log or runs directory the campaign cannot use (reported in one line, exit code 2)."""


# ---------------------------------------------------------------------------------------------------- the queue
def _kind(value: Any) -> str:
    """``value`` for an error message: its type and a short repr."""
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def load_queue(path: Path) -> dict[str, Any]:
    """The queue file, parsed and checked whole (every entry by :func:`check_entry`, names unique).

    Raises:
        CampaignError: unreadable, not YAML, not a mapping with a ``runs`` list, a bad entry, or a name twice.
    """
    try:
        queue = yaml.safe_load(path.read_text())
    except OSError as e:
        raise CampaignError(f"cannot read the queue {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise CampaignError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(queue, dict):
        raise CampaignError(f"{path}: a queue is a mapping with a 'runs' list, got {_kind(queue)}")
    if unknown := sorted(map(str, set(queue) - set(QUEUE_KEYS))):
        raise CampaignError(f"{path}: unknown key(s) {', '.join(unknown)}; a queue has {', '.join(QUEUE_KEYS)}")
    if not isinstance(queue.get("runs"), list):
        got = "no 'runs' key" if "runs" not in queue else f"'runs' is {_kind(queue['runs'])}"
        raise CampaignError(f"{path}: 'runs' must be a list of runs (name, config, ...); {got}")
    if not isinstance(queue.get("data_dir", ""), str):
        raise CampaignError(f"{path}: 'data_dir' must be a path, got {_kind(queue['data_dir'])}")
    seen: dict[str, int] = {}
    for i, entry in enumerate(queue["runs"]):
        check_entry(entry, f"{path}: runs[{i}]")
        if entry["name"] in seen:
            raise CampaignError(
                f"{path}: runs[{seen[entry['name']]}] and runs[{i}] are both named "
                f"{entry['name']!r}; each run needs a name (its directory) of its own"
            )
        seen[entry["name"]] = i
    return queue


def check_entry(entry: Any, where: str) -> None:
    """Raises CampaignError naming ``where`` unless ``entry`` is a mapping of the known keys, with a plain directory
    ``name``, an existing ``config``, an integer ``seed``, an ``amp`` of ``off`` / ``bf16``, a field name
    ``requires`` and a list ``args`` without the flags the campaign sets itself."""
    if not isinstance(entry, dict):
        raise CampaignError(f"{where} must be a mapping with 'name' and 'config', got {_kind(entry)}")
    if unknown := sorted(map(str, set(entry) - set(ENTRY_KEYS))):
        raise CampaignError(f"{where}: unknown key(s) {', '.join(unknown)}; a run has {', '.join(ENTRY_KEYS)}")
    for key in ("name", "config"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise CampaignError(f"{where} needs a '{key}' (a string), got {_kind(entry.get(key))}")
    name = entry["name"]
    if "/" in name or "\\" in name or name in (".", "..") or name != name.strip():
        raise CampaignError(f"{where}: name {name!r} must be a plain directory name")
    if not (REPO / entry["config"]).is_file():
        raise CampaignError(f"{where} ({name}): config {entry['config']} does not exist (relative to {REPO})")
    if "seed" in entry and (not isinstance(entry["seed"], int) or isinstance(entry["seed"], bool)):
        raise CampaignError(f"{where} ({name}): seed must be an integer, got {_kind(entry['seed'])}")
    if entry.get("amp", "off") not in AMPS:
        raise CampaignError(f"{where} ({name}): amp must be one of {', '.join(AMPS)}, got {_kind(entry['amp'])}")
    if "requires" in entry and not (isinstance(entry["requires"], str) and entry["requires"].isidentifier()):
        raise CampaignError(f"{where} ({name}): requires must name a TrainConfig field, got {_kind(entry['requires'])}")
    _check_args(entry.get("args", []), f"{where} ({name})")


def _check_args(args: Any, where: str) -> None:
    """``args`` must be a list of flags and values (strings or numbers), none of :data:`CAMPAIGN_FLAGS`."""
    if not isinstance(args, list):
        why = " (a string would be split into characters)" if isinstance(args, str) else ""
        raise CampaignError(
            f"{where}: args must be a list of flags, e.g. [--lm-weight-decay, none], got {_kind(args)}{why}"
        )
    for a in args:
        if not isinstance(a, str | int | float) or isinstance(a, bool):
            raise CampaignError(f"{where}: every item of args must be a flag or a value, got {_kind(a)}")
        if str(a).split("=")[0] in CAMPAIGN_FLAGS:
            raise CampaignError(f"{where}: args may not give {a}: the campaign sets {', '.join(CAMPAIGN_FLAGS)}")


def check_writable(folder: Path) -> None:
    """Raises CampaignError unless a file can be made in ``folder`` (created if missing). A probe, not the mode
    bits: a read-only file system refuses root too."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise CampaignError(f"cannot write in {folder}: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------------------ the runs
def run_state(run_dir: Path) -> str:
    """``new`` (no run yet), ``restart`` (a config.yaml, but stopped before its first checkpoint: nothing to lose,
    :meth:`odearch.train.RunDir.never_trained`), ``started`` (resumable) or ``complete``."""
    from odearch.train.rundir import RunDir

    run = RunDir(run_dir)
    if run.complete_result() is not None:
        return "complete"
    if not run.config.is_file():
        return "new"
    return "restart" if run.never_trained() else "started"


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def fast_bf16() -> bool:
    """Whether bf16 autocast runs natively here: a CUDA device, or a CPU with AVX512-BF16 or AMX (torch's checks)."""
    import torch

    from odearch.train.numerics import cpu_has_native_bf16

    return torch.cuda.is_available() or cpu_has_native_bf16()


def run_amp(entry: dict[str, Any], run_dir: Path, state: str) -> str:
    """The precision of a queue entry: a started run's own (its config.yaml), else the entry's ``amp`` (fp32)."""
    if state == "started":
        try:
            return str((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("amp", "off"))
        except (OSError, yaml.YAMLError, AttributeError):
            pass
    return str(entry.get("amp", "off"))


def resolve_data_dir(flag: str | None, queue_value: str | None) -> str | None:
    """``--data-dir``, else ``$ODEARCH_DATA``, else the queue's ``data_dir`` (a relative one from the repository)."""
    if flag:
        return flag
    if os.environ.get("ODEARCH_DATA"):
        return os.environ["ODEARCH_DATA"]
    if queue_value:
        return str(REPO / queue_value) if not Path(queue_value).is_absolute() else queue_value
    return None


def train_command(entry: dict[str, Any], run_dir: Path, state: str, minutes: float, data_dir: str | None) -> list[str]:
    """The ``odearch train`` command line that starts (``restart``: again, ``--overwrite``) or resumes ``entry``
    for ``minutes``."""
    cmd = [sys.executable, "-m", "odearch", "train"]
    if state == "started":
        cmd += ["--resume", str(run_dir)]
    else:
        cmd += [
            "--config",
            str(REPO / entry["config"]),
            "--seed",
            str(entry.get("seed", 0)),
            "--out",
            str(run_dir),
            "--amp",
            str(entry.get("amp", "off")),
            *map(str, entry.get("args", [])),
        ]
        cmd += ["--overwrite"] if state == "restart" else []
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return [*cmd, "--max-minutes", f"{minutes:.1f}"]


def pass_over(entry: dict[str, Any], run_dir: Path, state: str, fields: set[str], bf16_ok: bool) -> str | None:
    """Why the run of ``entry`` cannot train here now (it waits for an option, or needs native bf16), else None."""
    if state in ("new", "restart") and entry.get("requires") and entry["requires"] not in fields:
        return f"waits for TrainConfig.{entry['requires']}"
    if run_amp(entry, run_dir, state) == "bf16" and not bf16_ok:
        return (
            f"bf16, but this CPU has none of {', '.join(BF16_CPU_FLAGS)} and there is no CUDA device (bf16 would "
            "be emulated, slower than fp32)"
        )
    return None


# --------------------------------------------------------------------------------------------------- signals
def _child_setup(die_with_parent: Callable[[int], None]) -> None:
    """In the training process before it starts: its own process group (a terminal's Ctrl-C reaches the campaign
    alone, which forwards it once: two SIGINTs would abort the run without a checkpoint), and SIGTERM when the
    campaign dies, even by SIGKILL (it then checkpoints and releases its run's lock; ``die_with_parent`` is
    :func:`odearch.train.signals.die_with_parent`, imported before the fork)."""
    os.setpgid(0, 0)
    die_with_parent(signal.SIGTERM)


class Stop:
    """While active (``with``), SIGINT and SIGTERM to the campaign are recorded (:attr:`received`, the first one's
    number) instead of raising; :meth:`run` forwards them to the training process it waits for."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def record(self, signum: int, frame: FrameType | None = None) -> None:
        if self.received is None:
            self.received = signum
            print(
                f"campaign: {signal.Signals(signum).name} received: no further run; the running one stops with a "
                "resumable checkpoint (Ctrl-C again to abort it at once)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self.record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def run(self, cmd: list[str]) -> int:
        """Runs ``cmd`` (``odearch train``) to its end, forwarding SIGINT / SIGTERM to it; its exit code."""
        from odearch.train.distributed import wait_forwarding
        from odearch.train.signals import die_with_parent

        proc = subprocess.Popen(cmd, preexec_fn=lambda: _child_setup(die_with_parent))
        if self.received is not None:  # arrived while it was being started
            proc.send_signal(self.received)
        return wait_forwarding(proc, on_signal=self.record)


# ----------------------------------------------------------------------------------------------------- the log
STEP_LINE = re.compile(r"^epoch +\d+ step \d+/\d+ ")  # per-step progress of `odearch train`
START_LINE = re.compile(r"^campaign: (\S+) \((?:new|restart|started)\): ")


def _log_parts(text: str) -> dict[str, list[str]]:
    """Each run's lines of a campaign log, from its start line on, without the per-step lines."""
    parts: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        if m := START_LINE.match(line):
            name = m.group(1)
            parts.setdefault(name, [])
        if name is not None and not STEP_LINE.match(line):
            parts[name].append(line)
    return parts


def save_stretch_logs(log: Path, runs_dir: Path) -> list[Path]:
    """Files each run's part of the campaign log ``log`` as ``runs_dir/NAME/stretchN.log``; the paths written. Every
    folder is checked writable before the first file is written. Left out: the part of a run without a directory, and
    of one stopped before its first checkpoint (a file there would keep ``--overwrite`` from starting it again).

    Raises:
        CampaignError: ``log`` unreadable, or a run directory not writable (nothing is written then).
    """
    try:
        text = log.read_text(errors="replace")
    except OSError as e:
        raise CampaignError(f"cannot read the log {log}: {e.strerror or e}") from None
    plan = []
    for name, lines in _log_parts(text).items():
        why = None
        if not (runs_dir / name).is_dir():
            why = f"no run directory {runs_dir / name}"
        elif run_state(runs_dir / name) == "restart":
            why = "it stopped before its first checkpoint and starts again as new"
        if why:
            print(f"campaign: {name}: {why}; its part of the log is not filed", file=sys.stderr)
            continue
        old = {
            int(n): f for f in (runs_dir / name).glob("stretch*.log") if (n := f.stem.removeprefix("stretch")).isdigit()
        }
        part = "\n".join(lines) + "\n"
        if not old or old[max(old)].read_text(errors="replace") != part:
            plan.append((runs_dir / name / f"stretch{max(old, default=0) + 1}.log", part))
    for folder in {path.parent for path, _ in plan}:
        check_writable(folder)
    for path, part in plan:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(part)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return [path for path, _ in plan]


# ------------------------------------------------------------------------------------------------------- main
def run_queue(queue: dict[str, Any], runs_dir: Path, max_minutes: float, data_dir: str | None, dry_run: bool) -> int:
    """Trains the first run of ``queue`` that can train here, then the next, until ``max_minutes`` are spent, a run
    stops unfinished, or a signal asks to stop; the exit code."""
    from odearch.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bf16_ok = fast_bf16()
    deadline = time.monotonic() + 60 * max_minutes
    not_done: list[str] = []
    with Stop() as stop:
        for entry in queue["runs"]:
            name, run_dir = entry["name"], runs_dir / entry["name"]
            state = run_state(run_dir)
            if state == "complete":
                print(f"campaign: {name}: complete", flush=True)
                continue
            if why := pass_over(entry, run_dir, state, fields, bf16_ok):
                print(f"campaign: {name}: {why}; next run", flush=True)
                not_done.append(name)
                continue
            if stop.received is not None:  # arrived between two runs
                print(f"campaign: stopped by {signal.Signals(stop.received).name} before {name}", flush=True)
                return 128 + stop.received
            minutes = (deadline - time.monotonic()) / 60
            if minutes < MIN_MINUTES:
                print(f"campaign: {minutes:.1f} min left, stopping before {name}", flush=True)
                return 0
            cmd = train_command(entry, run_dir, state, minutes, data_dir)
            print(f"campaign: {name} ({state}): {' '.join(cmd)}", flush=True)
            if dry_run:
                return 0
            rc = stop.run(cmd)
            if stop.received is not None:
                now = "complete" if run_state(run_dir) == "complete" else "the next stretch resumes it"
                print(
                    f"campaign: stopped by {signal.Signals(stop.received).name}; {name} exited with {rc} ({now})",
                    flush=True,
                )
                return 128 + stop.received
            if rc != 0:
                print(f"campaign: {name} exited with {rc}; stopping", flush=True)
                return rc
            if run_state(run_dir) != "complete":
                return 0  # stopped by --max-minutes: the next stretch resumes it
    if not_done:
        print(f"campaign: no other run can train here; not done: {', '.join(not_done)}", flush=True)
    else:
        print("campaign: every run of the queue is complete", flush=True)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``--max-minutes`` required unless ``--save-log``)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--queue", type=Path, default=REPO / "results" / "campaign" / "queue.yaml")
    p.add_argument("--runs-dir", type=Path, help="where the run directories live (default: beside the queue)")
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this many minutes in all (required to run)")
    p.add_argument("--data-dir", help="overrides $ODEARCH_DATA and the queue's data_dir")
    p.add_argument("--dry-run", action="store_true", help="print the command that would run, run nothing")
    p.add_argument("--save-log", type=Path, metavar="LOG", help="file a stretch's log with its runs; run nothing")
    args = p.parse_args(argv)
    if args.max_minutes is None and not args.save_log:
        p.error("--max-minutes is required to run the queue")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the campaign (or files a log); the exit code: 0, 2 for an unusable queue, log or runs directory, that of
    a failed ``odearch train``, or 128 + a signal that stopped it."""
    args = parse_args(argv)
    runs_dir = args.runs_dir or args.queue.parent
    try:
        if args.save_log:
            for path in save_stretch_logs(args.save_log, runs_dir):
                print(f"campaign: wrote {path}")
            return 0
        queue = load_queue(args.queue)
        if not args.dry_run:
            check_writable(runs_dir)
        data_dir = resolve_data_dir(args.data_dir, queue.get("data_dir"))
        return run_queue(queue, runs_dir, args.max_minutes, data_dir, args.dry_run)
    except CampaignError as e:
        print(f"campaign: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"campaign: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("campaign: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
