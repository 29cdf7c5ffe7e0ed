"""The run directory's plain files that both the trainer and the analysis read, defined once (no torch here).

``metrics.jsonl`` holds one JSON object per finished epoch, each with an integer ``epoch``, appended as one write of
the line and its newline; ``lm_k_init.json`` holds the LM coefficients before the first epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["INITIAL_K_FILE", "METRICS_FILE", "SHIPPED_FILE", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
INITIAL_K_FILE = "lm_k_init.json"
SHIPPED_FILE = "shipped.json"  # a run whose checkpoints were deleted once its final weights shipped


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; blank lines are skipped, and so is an unterminated last line (a torn append:
    the run was killed while writing it, or is writing it now).

    Raises:
        ValueError: naming ``file:line``, for a complete line that is not a JSON object with an integer ``epoch``.
    """
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(keepends=True), 1):
        if not line.endswith("\n") or not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: not a JSON line ({e}); remove or repair that line") from None
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"{path}:{number}: a metrics row needs an integer 'epoch'; remove or repair that line")
        rows.append(row)
    return rows
