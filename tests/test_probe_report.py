"""The report's probe tables are generated from the probe records (odearch.probe_report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odearch.probe_report import probe_section, read_probes
from odearch.report import ReportInputError, write_report

LM = {
    "net": {"source": "lm_resnet20.cifar10_s0", "model": "lm_resnet20", "amp": "off"},
    "forces": {
        "k": {"stages.0": [-0.09, 0.01], "stages.1": [0.8, 0.02]},
        "grad": {"stages.0": [-4.6e-4, -5.9e-5], "stages.1": [9.2e-3, 3.2e-4]},
        "decay": {"stages.0": [-1.1e-4, -9.9e-5], "stages.1": [-2.0e-5, -9.8e-5]},
    },
    "ablation": {
        "trained": 9.0,
        "recalibrated": 9.03,
        "calib_images": 2000,
        "k_zero": {"stages.0": [9.02, 9.01], "stages.1": [11.95, 9.04]},
        "all_zero": 12.74,
    },
    "precision": {"fp32": 9.0, "bf16": 8.95},
}
PLAIN = {"net": {"source": "results/campaign/preact_resnet20_bf16_s1", "amp": "bf16"}, "precision": {"fp32": 8.6}}


def _write(folder: Path, name: str, record: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(record))


def _rows(lines: list[str], first_header_cell: str, header_has: str) -> list[list[str]]:
    """The body rows of the table whose header has ``header_has``."""
    start = next(
        i for i, line in enumerate(lines) if line.startswith(f"| {first_header_cell} |") and header_has in line
    )
    body = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip("|").split("|")])
    return body


def test_probe_tables_say_what_each_record_holds(tmp_path: Path, capsys) -> None:
    probes = tmp_path / "results" / "probes"
    _write(probes, "lm_resnet20.cifar10_s0.json", LM)
    _write(probes, "preact.json", PLAIN | {"precision": {"fp32": 8.61, "bf16": 8.71}})
    _write(probes, "broken.json", [1, 2])
    lines = probe_section(probes, tmp_path / "docs")
    assert "ignoring probe file" in capsys.readouterr().err and "broken.json" not in "\n".join(lines)
    link = "[lm_resnet20.cifar10_s0](../results/probes/lm_resnet20.cifar10_s0.json)"
    (ablation,) = _rows(lines, "net", "all k_n = 0")
    assert ablation[:5] == [link, "9.00", "9.03", "12.74", "+2.92"]  # 11.95 - 9.03: stages.1[0], k = 0.8
    assert ablation[5].split("; ")[2] == "**stages.1[0] (k +0.80): 11.95**" and ablation[5].count("**") == 2
    forces = _rows(lines, "net", "mean dL/dk")
    assert [r[1] for r in forces] == ["stages.0[0]", "stages.0[1]", "stages.1[0]", "stages.1[1]"]
    assert [r[0] for r in forces] == [link, "", "", ""]  # the net named once
    assert forces[2][3:] == ["+9.20e-03", "-2.00e-05", "+9.18e-03", "loss (460.0x)"]
    assert forces[1][6] == "decay (1.7x)" and forces[3][6] == "loss (3.3x)"
    assert forces[0][6] == "loss (4.2x)"
    precision = _rows(lines, "net", "bf16 autocast")
    assert precision == [
        [link, "fp32", "9.00", "8.95", "-0.05"],
        ["[preact_resnet20_bf16_s1](../results/probes/preact.json)", "bf16", "8.61", "8.71", "+0.10"],
    ]


def test_the_decay_wins_where_it_is_larger(tmp_path: Path) -> None:
    record = json.loads(json.dumps(LM))
    record["forces"]["grad"]["stages.1"][1] = -1.0e-5  # |decay| 9.8e-5 is 9.8x larger, the same sign
    _write(tmp_path, "lm.json", record)
    forces = _rows(probe_section(tmp_path, tmp_path), "net", "mean dL/dk")
    assert forces[3][3:] == ["-1.00e-05", "-9.80e-05", "-1.08e-04", "decay (9.8x)"]


def test_a_net_trained_without_decay_on_k_says_so_instead_of_a_ratio(tmp_path: Path) -> None:
    record = json.loads(json.dumps(LM))
    record["forces"]["decay"] = {"stages.0": [0.0, 0.0], "stages.1": [0.0, 0.0]}
    _write(tmp_path, "lm.json", record)
    forces = _rows(probe_section(tmp_path, tmp_path), "net", "mean dL/dk")
    assert [r[6] for r in forces] == ["loss (no decay on k)"] * 4 and forces[2][4] == "+0.00e+00"


def test_no_probe_records_no_section(tmp_path: Path) -> None:
    assert probe_section(tmp_path, tmp_path) == []
    assert read_probes(tmp_path / "absent") == []


def test_report_tabulates_the_probes_folder_it_is_given(tmp_path: Path) -> None:
    _write(tmp_path / "probes", "lm.json", LM)
    runs = tmp_path / "runs"
    runs.mkdir()
    out, _ = write_report([runs], tmp_path / "docs" / "results.md", "odearch report", plots=False)
    assert "## Probes" not in out.read_text()
    write_report([runs], out, "odearch report", plots=False, probes=tmp_path / "probes")
    assert "## Probes of the trained nets (why)" in out.read_text()
    with pytest.raises(ReportInputError, match=r"--probes .*nothere: not a folder"):
        write_report([runs], out, "odearch report", plots=False, probes=tmp_path / "nothere")


@pytest.mark.parametrize(
    ("section", "value", "says"),
    [
        ("ablation", {"trained": 9.0, "k_zero": {"stages.0": [9.0]}}, "'ablation' needs"),
        ("ablation", LM["ablation"] | {"k_zero": {"stages.0": [9.02, 9.01]}}, "different k_n"),
        ("forces", LM["forces"] | {"grad": {"stages.0": [1e-4], "stages.1": [1e-4, 1e-4]}}, "'forces' needs"),
        ("forces", LM["forces"] | {"decay": None}, "'forces' needs"),
        ("precision", {"fp32": 9.0, "bf16": "8.95"}, "'precision' needs"),
    ],
)
def test_a_malformed_section_leaves_out_its_file_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, value: object, says: str
) -> None:
    """A record whose tables would raise (a missing number, grad and k of other shapes) is named and left out; the
    other records still make their tables."""
    _write(tmp_path, "bad.json", LM | {section: value})
    _write(tmp_path, "plain.json", PLAIN | {"precision": {"fp32": 8.61, "bf16": 8.71}})
    lines = probe_section(tmp_path, tmp_path)
    err = capsys.readouterr().err
    assert "ignoring probe file" in err and "bad.json" in err and says in err
    assert [r[0] for r in _rows(lines, "net", "bf16 autocast")] == ["[preact_resnet20_bf16_s1](plain.json)"]
    assert "mean dL/dk" not in "\n".join(lines)
