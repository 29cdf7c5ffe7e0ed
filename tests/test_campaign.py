"""``scripts/campaign.py``: which run of the queue goes next, with which command, and filing a stretch's log."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from datapaths import REPO

spec = importlib.util.spec_from_file_location("campaign", REPO / "scripts" / "campaign.py")
campaign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(campaign)


def _queue(tmp_path: Path, runs: list[dict]) -> Path:
    queue = tmp_path / "campaign" / "queue.yaml"
    queue.parent.mkdir(parents=True)
    queue.write_text(yaml.safe_dump({"data_dir": "/data", "runs": runs}))
    return queue


def _run(queue: Path, name: str, status: str | None) -> None:
    d = queue.parent / name
    d.mkdir()
    (d / "config.yaml").write_text("model: resnet20\n")
    if status:
        (d / "result.json").write_text(json.dumps({"status": status}))


def test_next_run_skips_complete_and_waiting_runs_and_resumes_a_started_one(tmp_path: Path, capsys,
                                                                            monkeypatch) -> None:  # fmt: skip
    monkeypatch.delenv("ODEARCH_DATA", raising=False)
    queue = _queue(tmp_path, [
        {"name": "done", "config": "configs/cifar10/resnet20.yaml"},
        {"name": "waits", "config": "configs/cifar10/lm_resnet20.yaml", "requires": "no_such_option"},
        {"name": "stopped", "config": "configs/cifar10/resnet20.yaml"},
        {"name": "later", "config": "configs/cifar10/resnet20.yaml"}])  # fmt: skip
    _run(queue, "done", "complete")
    _run(queue, "stopped", "stopped")
    assert campaign.main(["--queue", str(queue), "--max-minutes", "60", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "campaign: done: complete"
    assert lines[1] == "campaign: waits: waits for TrainConfig.no_such_option; next run"
    cmd = lines[2].split(": ", 2)[2].split()
    assert lines[2].startswith("campaign: stopped (started): ") and len(lines) == 3
    assert cmd[:4] == [sys.executable, "-m", "odearch", "train"]
    assert cmd[4:6] == ["--resume", str(queue.parent / "stopped")]
    assert cmd[6:] == ["--data-dir", "/data", "--max-minutes", "60.0"]


def test_a_new_run_starts_from_its_config_seed_and_extra_args_in_fp32(tmp_path: Path) -> None:
    entry = {"name": "x", "config": "configs/cifar10/lm_resnet20.yaml", "seed": 1, "args": ["--lm-weight-decay", "k"]}
    cmd = campaign.train_command(entry, tmp_path / "x", "new", 12.34, None)
    config = str(REPO / "configs/cifar10/lm_resnet20.yaml")
    assert cmd[4:] == ["--config", config, "--seed", "1", "--out", str(tmp_path / "x"), "--amp", "off",
                       "--lm-weight-decay", "k", "--max-minutes", "12.3"]  # fmt: skip


def test_a_bf16_run_is_passed_over_without_native_bf16_and_the_next_fp32_run_taken(tmp_path: Path, capsys,
                                                                                 monkeypatch) -> None:  # fmt: skip
    queue = _queue(tmp_path, [
        {"name": "fast", "config": "configs/cifar10/resnet20.yaml", "amp": "bf16"},
        {"name": "was_bf16", "config": "configs/cifar10/resnet20.yaml"},
        {"name": "fp32", "config": "configs/cifar10/resnet20.yaml", "seed": 4}])  # fmt: skip
    _run(queue, "was_bf16", "stopped")
    (queue.parent / "was_bf16" / "config.yaml").write_text("model: resnet20\namp: bf16\n")  # its own precision
    monkeypatch.setattr(campaign, "fast_bf16", lambda: False)
    assert campaign.main(["--queue", str(queue), "--max-minutes", "60", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("campaign: fast: bf16, but this CPU has none of avx512_bf16, amx_bf16")
    assert lines[1].startswith("campaign: was_bf16: bf16, but")
    assert lines[2].startswith("campaign: fp32 (new): ") and "--amp off" in lines[2] and len(lines) == 3
    monkeypatch.setattr(campaign, "fast_bf16", lambda: True)
    assert campaign.main(["--queue", str(queue), "--max-minutes", "60", "--dry-run"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("campaign: fast (new): ") and "--amp bf16" in line


def test_data_dir_resolution(monkeypatch) -> None:
    monkeypatch.delenv("ODEARCH_DATA", raising=False)
    assert campaign.resolve_data_dir(None, "data") == str(REPO / "data")  # relative to the repository
    assert campaign.resolve_data_dir(None, "/abs") == "/abs"
    assert campaign.resolve_data_dir(None, None) is None
    monkeypatch.setenv("ODEARCH_DATA", "/env")
    assert campaign.resolve_data_dir(None, "data") == "/env"
    assert campaign.resolve_data_dir("/flag", "data") == "/flag"


def test_the_queue_runs_from_a_fresh_clone(monkeypatch) -> None:
    """The committed queue names no machine's path, and every config it names exists."""
    queue = yaml.safe_load((REPO / "results" / "campaign" / "queue.yaml").read_text())
    assert not Path(queue["data_dir"]).is_absolute()
    for entry in queue["runs"]:
        assert (REPO / entry["config"]).is_file(), entry
        assert entry.get("amp", "off") in ("off", "bf16")


def test_run_state(tmp_path: Path) -> None:
    queue = _queue(tmp_path, [])
    assert campaign.run_state(queue.parent / "none") == "new"
    _run(queue, "torn", None)
    (queue.parent / "torn" / "result.json").write_text("{not json")
    assert campaign.run_state(queue.parent / "torn") == "started"
    _run(queue, "done", "complete")
    assert campaign.run_state(queue.parent / "done") == "complete"


def test_running_needs_max_minutes(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        campaign.main(["--queue", str(_queue(tmp_path, []))])


LOG = """campaign: a: complete
campaign: b (started): python -m odearch train --resume b --max-minutes 100.0
odearch: lm_resnet20 (0.272M params) on cifar10
epoch 159 step 20/390  loss 0.0324 acc 99.10%  603 img/s
epoch 159/160  train loss 0.0249 acc  99.28%  test loss 0.3786 acc  91.13%
epoch 160 step 370/390  loss 0.0324 acc 99.10%  603 img/s
epoch 160/160  train loss 0.0228 acc  99.38%  test loss 0.3868 acc  91.00%
campaign: c (new): python -m odearch train --config c.yaml --max-minutes 20.0
epoch   1 step 20/390  loss 2.1 acc 20.00%  600 img/s
odearch: stopped by --max-minutes after epoch 0; resume with --resume c
"""


def test_save_log_files_each_runs_part_once_without_step_lines(tmp_path: Path, capsys) -> None:
    queue = _queue(tmp_path, [])
    log = tmp_path / "campaign.log"
    log.write_text(LOG)
    for name in ("b", "c"):
        _run(queue, name, None)
    (queue.parent / "b" / "stretch1.log").write_text("earlier\n")
    (queue.parent / "b" / "stretch3.log").write_text("earlier\n")
    assert campaign.main(["--queue", str(queue), "--save-log", str(log)]) == 0
    b, c = queue.parent / "b" / "stretch4.log", queue.parent / "c" / "stretch1.log"
    assert capsys.readouterr().out.splitlines() == [f"campaign: wrote {b}", f"campaign: wrote {c}"]
    assert b.read_text().splitlines() == [LOG.splitlines()[i] for i in (1, 2, 4, 6)]
    assert c.read_text().splitlines() == [LOG.splitlines()[i] for i in (7, 9)]
    assert campaign.save_stretch_logs(log, queue.parent) == []  # filed already: nothing written twice
    assert not (queue.parent / "a").exists()
