"""`odearch report` over damaged run directories (issue 30, item 14): each damaged run is left out with one warning
naming it and what is wrong, the rest of the report is written, and no NaN is ever printed as a result.

The runs are synthetic files (no training), made with the helpers of ``test_report``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from odearch.cli import main
from odearch.report import RunFileError, find_runs, summarize
from test_report import _err, _make_run, _row

Damage = Callable[[Path], None]


def _rows(n: int = 160) -> list[dict[str, object]]:
    return [_row(e, 1 - _err(e) / 100, git_commit="a" * 40, device_name="cpu") for e in range(1, n + 1)]


def _done(epochs: int = 160) -> dict[str, object]:
    return {"status": "complete", "epochs_done": epochs, "params": 272474, "wall_seconds": 100.0, "device": "cpu"}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A folder of two good runs at the paper's recipe and one more to damage, ``damaged``: twins, one plot, where
    the damaged run's curve comes first (a NaN there used to make the axis NaN and abort the report)."""
    root = tmp_path / "campaign"
    _make_run(root, "resnet20_s0", {"model": "resnet20"}, _rows(), _done())
    _make_run(root, "lm_resnet20_s0", {"model": "lm_resnet20", "lm_weight_decay": "kappa"}, _rows(), _done())
    _make_run(root, "damaged", {"model": "preact_resnet20"}, _rows(), _done())
    return root


def _write(name: str, text: str) -> Damage:
    return lambda run: (run / name).write_text(text)


def _metrics(epoch: int = 7, **change: object) -> Damage:
    """Sets ``change`` in the row of ``epoch`` (JSON as Python writes it: NaN as ``NaN``)."""

    def damage(run: Path) -> None:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows[epoch - 1].update(change)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    return damage


DAMAGES: dict[str, tuple[Damage, str]] = {
    "result not JSON": (_write("result.json", '{"status": "compl'), "result.json is not JSON"),
    "result a list": (_write("result.json", "[1, 2]"), "result.json holds a list, not an object"),
    "result wall NaN": (
        _write("result.json", json.dumps(_done() | {"wall_seconds": math.nan})),
        "result.json: wall_seconds must be a number in [0, 1e+12], got nan",
    ),
    "config invalid YAML": (_write("config.yaml", "model: [resnet20\n"), "config.yaml is not readable YAML"),
    "config a list": (_write("config.yaml", "- model\n- resnet20\n"), "config.yaml holds a list, not a mapping"),
    "config seed a string": (
        _write("config.yaml", "model: resnet20\nseed: one\n"),
        "config.yaml: seed must be an integer >= 0, got 'one'",
    ),
    "test_acc a string": (_metrics(test_acc="0.9"), "metrics.jsonl, epoch 7: test_acc must be a number in [0, 1]"),
    "first test_acc NaN": (
        _metrics(1, test_acc=math.nan),
        "metrics.jsonl, epoch 1: test_acc must be a number in [0, 1], got nan",
    ),
    "last test_acc NaN": (
        _metrics(160, test_acc=math.nan),
        "metrics.jsonl, epoch 160: test_acc must be a number in [0, 1], got nan",
    ),
    "test_acc above 1": (_metrics(test_acc=91.5), "test_acc must be a number in [0, 1], got 91.5"),
    "seconds a string": (_metrics(seconds="75"), "metrics.jsonl, epoch 7: seconds must be a number in [0, 1e+12]"),
    "lm_k a list": (
        _metrics(160, lm_k=[0.1, 0.2]),
        "metrics.jsonl, epoch 160: lm_k must map each stage to a list of finite numbers, got [0.1, 0.2]",
    ),
    "metrics not JSON": (
        _write("metrics.jsonl", '{"epoch": 1}\n{"epoch": 2, "test_acc": \n'),
        "metrics.jsonl:2: not a JSON line",
    ),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_run_is_skipped_with_a_warning_naming_it(
    damage: str, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    do, message = DAMAGES[damage]
    do(root / "damaged")
    with pytest.raises(RunFileError) as e:
        summarize(root / "damaged")
    assert message in str(e.value)
    out = tmp_path / "docs" / "results.md"
    assert main(["report", str(root), "--out", str(out)]) == 0  # with the plots: a NaN curve used to abort them
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"odearch: warning: skipping run {root / 'damaged'}: "), err
    assert message in err[0] and "Traceback" not in err[0]
    text = out.read_text()
    assert "[damaged]" not in text and "[resnet20_s0]" in text and "[lm_resnet20_s0]" in text
    assert not re.search(r"\bnan\b", text, re.IGNORECASE) and text.count("| 160/160 |") == 2
    assert (out.parent / "curves_cifar10_resnet20.png").is_file()


@pytest.mark.parametrize("queue", ["runs: [name: x\n", "- a\n- b\n", "runs:\n  - config: c.yaml\n", "runs: 3\n"])
def test_a_malformed_queue_is_ignored_with_a_warning(
    queue: str, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (root / "queue.yaml").write_text(queue)
    assert [p.name for p in find_runs([root])] == ["damaged", "lm_resnet20_s0", "resnet20_s0"]  # by name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"odearch: warning: ignoring {root / 'queue.yaml'} "), err


def test_a_good_queue_still_orders_the_runs(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "queue.yaml").write_text(yaml.safe_dump({"runs": [{"name": "resnet20_s0"}, {"name": "damaged"}]}))
    assert [p.name for p in find_runs([root])] == ["resnet20_s0", "damaged", "lm_resnet20_s0"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_results_path_that_is_no_folder_is_one_line_exit_2(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results"
    if kind == "a file":
        path.write_text("not a folder\n")
    assert main(["report", str(path), "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"odearch: error: {path}: "), err
    assert not (tmp_path / "r.md").exists()
