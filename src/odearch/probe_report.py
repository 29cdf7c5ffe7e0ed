"""The probes of trained nets in the report (issue 31): tables generated from ``results/probes/*.json``.

``scripts/probe_lm.py`` writes one JSON per net (:mod:`odearch.analysis.probes`): for an LM net the force balance of
each k_n over one augmented training epoch (the mean loss gradient dL/dk against the weight-decay term, both as SGD
sees them: it moves k by -lr (dL/dk + decay)), the test error with each k_n and all of them set to 0 (BatchNorm
recalibrated), and for every net its test error in fp32 and under bf16 autocast. :func:`probe_section` turns the
folder into Markdown; a file that is not such a record is left out with a warning naming it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["probe_section", "read_probes"]


def read_probes(folder: str | Path) -> list[dict[str, Any]]:
    """The probe records of ``folder`` (``*.json`` with a ``net`` mapping), sorted by file name."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            problem = _problem(record)
            if problem:
                raise ValueError(problem)
        except (OSError, ValueError) as e:
            print(f"odearch: warning: ignoring probe file {path}: {e}", file=sys.stderr)
            continue
        records.append(record | {"_file": path})
    return records


def _numbers(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _per_stage(x: Any, like: Any = None) -> bool:
    """``x`` maps stage names to lists of numbers (with the stages and lengths of ``like``, when given)."""
    if not isinstance(x, dict) or not all(isinstance(v, list) and all(map(_numbers, v)) for v in x.values()):
        return False
    return like is None or {k: len(v) for k, v in x.items()} == {k: len(v) for k, v in like.items()}


def _problem(record: Any) -> str | None:
    """Why ``record`` is not a probe record the tables can show (None: it is)."""
    if not isinstance(record, dict) or not isinstance(record.get("net"), dict):
        return "no 'net' mapping"
    ab, f, pr = record.get("ablation"), record.get("forces"), record.get("precision")
    if ab is not None and not (
        isinstance(ab, dict)
        and all(_numbers(ab.get(k)) for k in ("trained", "recalibrated", "all_zero"))
        and _per_stage(ab.get("k_zero"))
        and any(ab["k_zero"].values())
    ):
        return "'ablation' needs the numbers trained, recalibrated, all_zero and k_zero: {stage: [error, ...]}"
    if f is not None and not (
        isinstance(f, dict)
        and _per_stage(f.get("k"))
        and _per_stage(f.get("grad"), f["k"])
        and _per_stage(f.get("decay"), f["k"])
    ):
        return "'forces' needs k, grad and decay as {stage: [number, ...]} of the same shape"
    if ab is not None and f is not None and not _per_stage(ab["k_zero"], f["k"]):
        return "'ablation' and 'forces' hold different k_n (stages or blocks)"
    if pr is not None and not (isinstance(pr, dict) and _numbers(pr.get("fp32")) and _numbers(pr.get("bf16"))):
        return "'precision' needs the numbers fp32 and bf16"
    return None


def _name(record: dict[str, Any]) -> str:
    return Path(str(record["net"].get("source", record["_file"].stem))).name


def _link(record: dict[str, Any], base: Path) -> str:
    rel = Path(os.path.relpath(record["_file"].resolve(), base.resolve())).as_posix()
    return f"[{_name(record)}]({rel})"


def _blocks(per_stage: dict[str, list[float]]) -> list[tuple[str, int, float]]:
    """(stage, index, value) of every k_n, in stage order."""
    return [(stage, i, v) for stage, values in per_stage.items() for i, v in enumerate(values)]


def _ablation_row(record: dict[str, Any], base: Path) -> list[str]:
    ab, k = record["ablation"], record.get("forces", {}).get("k", {})
    singles = _blocks(ab["k_zero"])
    worst = max(singles, key=lambda b: b[2])
    cells = []
    for stage, i, err in singles:
        kv = k.get(stage, [None] * (i + 1))[i]
        cell = f"{stage}[{i}]" + (f" (k {kv:+.2f})" if kv is not None else "") + f": {err:.2f}"
        cells.append(f"**{cell}**" if (stage, i) == worst[:2] else cell)
    return [
        _link(record, base),
        f"{ab['trained']:.2f}",
        f"{ab['recalibrated']:.2f}",
        f"{ab['all_zero']:.2f}",
        f"{worst[2] - ab['recalibrated']:+.2f}",
        "; ".join(cells),
    ]


def _force_rows(record: dict[str, Any], base: Path) -> list[list[str]]:
    f = record["forces"]
    rows = []
    for stage, i, k in _blocks(f["k"]):
        grad, decay = f["grad"][stage][i], f["decay"][stage][i]
        larger = "loss" if abs(grad) > abs(decay) else "decay"
        ratio = max(abs(grad), abs(decay)) / max(min(abs(grad), abs(decay)), 1e-12)
        verdict = "loss (no decay on k)" if decay == 0 and grad != 0 else f"{larger} ({ratio:.1f}x)"
        rows.append(
            [
                _link(record, base) if not rows else "",
                f"{stage}[{i}]",
                f"{k:+.3f}",
                f"{grad:+.2e}",
                f"{decay:+.2e}",
                f"{grad + decay:+.2e}",
                verdict,
            ]
        )
    return rows


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def probe_section(folder: str | Path, base: Path) -> list[str]:
    """Markdown lines of the probes in ``folder`` (links relative to ``base``); no lines when there are none."""
    records = read_probes(folder)
    if not records:
        return []
    lines = [
        "",
        "## Probes of the trained nets (why)",
        "",
        f"Generated from `{Path(os.path.relpath(Path(folder).resolve(), base.resolve())).as_posix()}/` "
        "(`scripts/probe_lm.py`: each file holds its command, commit, CPU and wall time); no training.",
    ]
    ablated = [r for r in records if isinstance(r.get("ablation"), dict)]
    if ablated:
        calib = sorted({str(r["ablation"].get("calib_images", "?")) for r in ablated})
        lines += [
            "",
            "What the LM coupling is worth: test error (%) of each trained LM net with its k_n set to 0, BatchNorm "
            f"recalibrated on {' / '.join(calib)} training images (the largest single-k loss in bold; its column: "
            "that error minus the recalibrated net's).",
            "",
        ]
        header = ("net", "as trained", "recalibrated", "all k_n = 0", "largest single k_n = 0", "each k_n = 0")
        lines += _table(header, [_ablation_row(r, base) for r in ablated])
    forced = [r for r in records if isinstance(r.get("forces"), dict)]
    if forced:
        lines += [
            "",
            "Which force holds each k_n where it ended: the mean loss gradient dL/dk over one augmented training "
            "epoch (train-mode BatchNorm, as the optimizer sees it) against the weight-decay term on k (the "
            "official decay on kappa = 1 - k pulls k toward 1); SGD moves k by -lr times their sum.",
            "",
        ]
        header = ("net", "k_n", "k", "mean dL/dk", "decay term", "sum", "larger")
        lines += _table(header, [row for r in forced for row in _force_rows(r, base)])
    evaluated = [r for r in records if isinstance(r.get("precision"), dict)]
    if evaluated:
        lines += ["", "The same weights evaluated in fp32 and under bf16 autocast (test error %, 10,000 images):", ""]
        rows = [
            [
                _link(r, base),
                str(r["net"].get("amp") or "off").replace("off", "fp32"),
                f"{r['precision']['fp32']:.2f}",
                f"{r['precision']['bf16']:.2f}",
                f"{r['precision']['bf16'] - r['precision']['fp32']:+.2f}",
            ]
            for r in evaluated
        ]
        lines += _table(("net", "trained in", "fp32", "bf16 autocast", "bf16 - fp32"), rows)
    return lines
