"""Run a training campaign in resumable stretches: resume the first unfinished run of a queue, then the next.

    python scripts/campaign.py --max-minutes 140                  # results/campaign/queue.yaml, runs beside it
    python scripts/campaign.py --max-minutes 140 --dry-run        # say what would run
    python scripts/campaign.py --save-log campaign.log            # after a stretch: each run's part -> stretchN.log

The queue (YAML) lists runs in order, each ``name`` (its directory under ``--runs-dir``), ``config`` (a YAML of
``configs/``), ``seed`` and optionally ``amp`` (``off``, the default: fp32; or ``bf16``), ``requires`` (a
`TrainConfig` field that must exist before the run may start, e.g. an option another issue adds) and ``args`` (extra
``odearch train`` flags). A finished run (``result.json`` status ``complete``) is skipped; a started one is resumed
with ``odearch train --resume`` (in the precision it started in); a new one is started. Every ``odearch train`` gets
what is left of ``--max-minutes``, so the whole call stops cleanly, with a resumable checkpoint, by then. Each
epoch's row in ``metrics.jsonl`` records the commit (and dirty flag) that trained it.

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
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MIN_MINUTES = 3.0  # not worth starting a stretch shorter than this (model build, data load, one epoch's eval)


def run_state(run_dir: Path) -> str:
    """``new`` (no run yet), ``started`` (resumable) or ``complete``."""
    result = run_dir / "result.json"
    if result.is_file():
        try:
            if json.loads(result.read_text()).get("status") == "complete":
                return "complete"
        except (OSError, ValueError):
            pass
    return "started" if (run_dir / "config.yaml").is_file() else "new"


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def fast_bf16() -> bool:
    """Whether bf16 autocast runs natively here: a CUDA device, or a CPU with AVX512-BF16 or AMX (torch's checks)."""
    import torch

    from odearch.train.numerics import cpu_has_native_bf16

    return torch.cuda.is_available() or cpu_has_native_bf16()


def run_amp(entry: dict[str, Any], run_dir: Path, state: str) -> str:
    """The precision of a queue entry: a started run's own (its config.yaml), else the entry's ``amp`` (fp32)."""
    if state != "new":
        try:
            return str((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("amp", "off"))
        except (OSError, yaml.YAMLError):
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


STEP_LINE = re.compile(r"^epoch +\d+ step \d+/\d+ ")  # per-step progress of `odearch train`
START_LINE = re.compile(r"^campaign: (\S+) \((?:new|started)\): ")


def save_stretch_logs(log: Path, runs_dir: Path) -> list[Path]:
    """Files each run's part of the campaign log ``log`` as ``runs_dir/NAME/stretchN.log``; the paths written."""
    parts: dict[str, list[str]] = {}
    name = None
    for line in log.read_text(errors="replace").splitlines():
        if m := START_LINE.match(line):
            name = m.group(1)
            parts.setdefault(name, [])
        if name is not None and not STEP_LINE.match(line):
            parts[name].append(line)
    written = []
    for name, lines in parts.items():
        old = {int(n): f for f in (runs_dir / name).glob("stretch*.log")
               if (n := f.stem.removeprefix("stretch")).isdigit()}  # fmt: skip
        text = "\n".join(lines) + "\n"
        if old and old[max(old)].read_text() == text:
            continue
        path = runs_dir / name / f"stretch{max(old, default=0) + 1}.log"
        path.write_text(text)
        written.append(path)
    return written


def train_command(entry: dict[str, Any], run_dir: Path, state: str, minutes: float, data_dir: str | None) -> list[str]:
    """The ``odearch train`` command line that starts or resumes `entry` for `minutes`."""
    cmd = [sys.executable, "-m", "odearch", "train"]
    if state == "started":
        cmd += ["--resume", str(run_dir)]
    else:
        cmd += ["--config", str(REPO / entry["config"]), "--seed", str(entry.get("seed", 0)), "--out", str(run_dir),
                "--amp", str(entry.get("amp", "off")), *map(str, entry.get("args", []))]  # fmt: skip
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return [*cmd, "--max-minutes", f"{minutes:.1f}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queue", type=Path, default=REPO / "results" / "campaign" / "queue.yaml")
    p.add_argument("--runs-dir", type=Path, help="where the run directories live (default: beside the queue)")
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this many minutes in all (required to run)")
    p.add_argument("--data-dir", help="overrides $ODEARCH_DATA and the queue's data_dir")
    p.add_argument("--dry-run", action="store_true", help="print the command that would run, run nothing")
    p.add_argument("--save-log", type=Path, metavar="LOG", help="file a stretch's log with its runs; run nothing")
    args = p.parse_args(argv)
    runs_dir = args.runs_dir or args.queue.parent
    if args.save_log:
        for path in save_stretch_logs(args.save_log, runs_dir):
            print(f"campaign: wrote {path}")
        return 0
    if args.max_minutes is None:
        p.error("--max-minutes is required to run the queue")

    from odearch.train import TrainConfig

    queue = yaml.safe_load(args.queue.read_text())
    data_dir = resolve_data_dir(args.data_dir, queue.get("data_dir"))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bf16_ok = fast_bf16()
    deadline = time.monotonic() + 60 * args.max_minutes
    for entry in queue["runs"]:
        run_dir = runs_dir / entry["name"]
        state = run_state(run_dir)
        if state == "complete":
            print(f"campaign: {entry['name']}: complete", flush=True)
            continue
        if state == "new" and entry.get("requires") and entry["requires"] not in fields:
            print(f"campaign: {entry['name']}: waits for TrainConfig.{entry['requires']}; next run", flush=True)
            continue
        if run_amp(entry, run_dir, state) == "bf16" and not bf16_ok:
            print(f"campaign: {entry['name']}: bf16, but this CPU has none of {', '.join(BF16_CPU_FLAGS)} and there "
                  "is no CUDA device (bf16 would be emulated, slower than fp32); next run", flush=True)  # fmt: skip
            continue
        minutes = (deadline - time.monotonic()) / 60
        if minutes < MIN_MINUTES:
            print(f"campaign: {minutes:.1f} min left, stopping before {entry['name']}", flush=True)
            return 0
        cmd = train_command(entry, run_dir, state, minutes, data_dir)
        print(f"campaign: {entry['name']} ({state}): {' '.join(cmd)}", flush=True)
        if args.dry_run:
            return 0
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"campaign: {entry['name']} exited with {rc}; stopping", flush=True)
            return rc
        if run_state(run_dir) != "complete":
            return 0  # stopped by --max-minutes: the next stretch resumes it
    print("campaign: every run of the queue is complete", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
