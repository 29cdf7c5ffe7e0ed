"""scripts/mesh_accuracy.py's table and plot read the sweep records of their folder, and only those."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("mesh_accuracy", REPO / "scripts" / "mesh_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_and_plot_skip_json_that_is_not_a_sweep(tmp_path: Path) -> None:
    rows = [
        {"kind": "trained", "factor": 1, "steps_per_stage": [3, 3, 3], "error": 8.53, "error_recalibrated": 8.56},
        {"kind": "refine", "factor": 2, "steps_per_stage": [5, 5, 5], "error": 40.04, "error_recalibrated": 16.68},
    ]
    sweep = {"net": {"name": "lm_resnet20.cifar10_bf16_s1"}, "rows": rows, "device_name": "cpu X"}
    (tmp_path / "lm.json").write_text(json.dumps(sweep))
    (tmp_path / "convergence-and-cli.json").write_text(json.dumps({"convergence": {"euler": [0.48, 0.21]}}))
    script = _script()
    assert script.table(tmp_path).splitlines()[:3] == [
        "| net | as trained (3 steps) | refined x2 (5 steps) |",
        "|---|--:|--:|",
        "| lm_resnet20.cifar10_bf16_s1 | 8.53 (8.56) | 40.04 (16.68) |",
    ]
    script.plot(tmp_path, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
