"""``scripts/campaign.py``: which run of the queue goes next, with which command, and filing a stretch's log."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def _run(queue: Path, name: str, status: str | None, checkpoint: bool = True) -> None:
    """A fake run directory: config.yaml, a checkpoint (unless not ``checkpoint``), result.json of ``status``."""
    d = queue.parent / name
    d.mkdir()
    (d / "config.yaml").write_text("model: resnet20\n")
    if checkpoint:
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "last.state.pt").write_bytes(b"state")
    if status:
        (d / "result.json").write_text(json.dumps({"status": status}))


def test_next_run_skips_complete_and_waiting_runs_and_resumes_a_started_one(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("ODEARCH_DATA", raising=False)
    queue = _queue(
        tmp_path,
        [
            {"name": "done", "config": "configs/cifar10/resnet20.yaml"},
            {"name": "waits", "config": "configs/cifar10/lm_resnet20.yaml", "requires": "no_such_option"},
            {"name": "stopped", "config": "configs/cifar10/resnet20.yaml"},
            {"name": "later", "config": "configs/cifar10/resnet20.yaml"},
        ],
    )
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
    assert cmd[4:] == [
        "--config",
        config,
        "--seed",
        "1",
        "--out",
        str(tmp_path / "x"),
        "--amp",
        "off",
        "--lm-weight-decay",
        "k",
        "--max-minutes",
        "12.3",
    ]


def test_a_bf16_run_is_passed_over_without_native_bf16_and_the_next_fp32_run_taken(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    queue = _queue(
        tmp_path,
        [
            {"name": "fast", "config": "configs/cifar10/resnet20.yaml", "amp": "bf16"},
            {"name": "was_bf16", "config": "configs/cifar10/resnet20.yaml"},
            {"name": "fp32", "config": "configs/cifar10/resnet20.yaml", "seed": 4},
        ],
    )
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


# ------------------------------------------------------------------------------- issue 30: a queue it cannot run
CONFIG = "configs/cifar10/resnet20.yaml"


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any ``odearch train`` the campaign would start fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a training process was started: {args}")

    monkeypatch.setattr(campaign.subprocess, "Popen", refuse)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("campaign: error: ")
    return captured.err


BAD_QUEUES = {
    "malformed": ("runs: [\n", "not valid YAML"),
    "empty": ("", "got nothing"),
    "list": ("- name: a\n  config: x\n", "a queue is a mapping"),
    "no runs": ("data_dir: data\n", "no 'runs' key"),
    "runs 5": ("runs: 5\n", "'runs' is int 5"),
    "entry a string": ("runs: [preact_s0]\n", "runs[0] must be a mapping"),
    "no name": (f"runs: [{{config: {CONFIG}}}]\n", "runs[0] needs a 'name'"),
    "no config": ("runs: [{name: a}]\n", "runs[0] needs a 'config'"),
    "args a string": (f"runs: [{{name: a, config: {CONFIG}, args: '--lr 0.05'}}]\n", "split into characters"),
    "duplicate": (
        "runs: [" + ", ".join(f"{{name: {n}, config: {CONFIG}}}" for n in "aba") + "]\n",
        "runs[0] and runs[2] are both named 'a'",
    ),
    "typo": (f"runs: [{{name: a, config: {CONFIG}, reqiures: lm_init}}]\n", "unknown key(s) reqiures"),
    "missing config": ("runs: [{name: a, config: configs/none.yaml}]\n", "config configs/none.yaml does not exist"),
    "bad name": (f"runs: [{{name: ../a, config: {CONFIG}}}]\n", "plain directory name"),
    "bad amp": (f"runs: [{{name: a, config: {CONFIG}, amp: fp16}}]\n", "amp must be one of off, bf16"),
    "campaign flag": (f"runs: [{{name: a, config: {CONFIG}, args: [--out, x]}}]\n", "args may not give --out"),
}


@pytest.mark.parametrize("case", list(BAD_QUEUES))
def test_a_queue_it_cannot_run_is_one_error_line_and_nothing_runs(
    case: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    text, expected = BAD_QUEUES[case]
    queue = tmp_path / "queue.yaml"
    queue.write_text(text)
    _no_training(monkeypatch)
    assert campaign.main(["--queue", str(queue), "--max-minutes", "60"]) == 2
    assert expected in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["queue.yaml"]  # nothing written


def test_a_missing_queue_is_one_error_line(tmp_path: Path, capsys) -> None:
    assert campaign.main(["--queue", str(tmp_path / "none.yaml"), "--max-minutes", "60"]) == 2
    assert "cannot read the queue" in _one_error_line(capsys)


def test_the_committed_queue_passes_the_check() -> None:
    campaign.load_queue(REPO / "results" / "campaign" / "queue.yaml")


def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``folder`` read-only: its mode, and for root (whom modes do not stop) the probe meets a read-only file system."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = tempfile.TemporaryFile

        def probe(*args: Any, dir: Any = None, **kwargs: Any) -> Any:
            if dir is not None and Path(dir) == folder:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(campaign.tempfile, "TemporaryFile", probe)


def test_a_read_only_runs_dir_is_refused_before_anything_runs(tmp_path: Path, capsys, monkeypatch) -> None:
    queue = _queue(tmp_path, [{"name": "a", "config": CONFIG}])
    _read_only(queue.parent, monkeypatch)
    _no_training(monkeypatch)
    try:
        assert campaign.main(["--queue", str(queue), "--max-minutes", "60"]) == 2
        assert f"cannot write in {queue.parent}" in _one_error_line(capsys)
    finally:
        queue.parent.chmod(0o755)


def test_save_log_of_a_missing_log_or_into_a_read_only_run_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    queue = _queue(tmp_path, [])
    assert campaign.main(["--queue", str(queue), "--save-log", str(tmp_path / "none.log")]) == 2
    assert "cannot read the log" in _one_error_line(capsys)
    log = tmp_path / "campaign.log"
    log.write_text(LOG)
    for name in ("b", "c"):
        _run(queue, name, None)
    _read_only(queue.parent / "c", monkeypatch)
    try:
        assert campaign.main(["--queue", str(queue), "--save-log", str(log)]) == 2
        assert f"cannot write in {queue.parent / 'c'}" in _one_error_line(capsys)
    finally:
        (queue.parent / "c").chmod(0o755)
    assert not list(queue.parent.glob("*/stretch*.log"))  # not even b's, whose directory is writable


def test_a_log_part_of_a_run_without_directory_is_left_out(tmp_path: Path, capsys) -> None:
    queue = _queue(tmp_path, [])
    log = tmp_path / "campaign.log"
    log.write_text(LOG)
    _run(queue, "b", None)  # c failed before it made its directory
    assert campaign.main(["--queue", str(queue), "--save-log", str(log)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"campaign: wrote {queue.parent / 'b' / 'stretch1.log'}"]
    assert "c: no run directory" in err and not (queue.parent / "c").exists()


# ------------------------------------------------------------------- issue 30: what is done, what is waiting
def test_the_end_names_waiting_runs_instead_of_claiming_all_complete(tmp_path: Path, capsys, monkeypatch) -> None:
    queue = _queue(
        tmp_path,
        [
            {"name": "done", "config": CONFIG},
            {"name": "waits", "config": "configs/cifar10/lm_resnet20.yaml", "requires": "no_such_option"},
        ],
    )
    _run(queue, "done", "complete")
    _no_training(monkeypatch)
    assert campaign.main(["--queue", str(queue), "--max-minutes", "60"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "campaign: no other run can train here; not done: waits"
    assert not any("every run of the queue is complete" in line for line in lines)
    (queue.parent / "waits").mkdir()
    (queue.parent / "waits" / "result.json").write_text(json.dumps({"status": "complete"}))
    assert campaign.main(["--queue", str(queue), "--max-minutes", "60"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "campaign: every run of the queue is complete"


# ----------------------------------------------------------- issue 30: killed before a new run's first checkpoint
def _never_trained(queue: Path, name: str) -> Path:
    """What a campaign killed during a new run's first epoch leaves: config.yaml, lm_k_init.json, tb/, checkpoints/."""
    _run(queue, name, None, checkpoint=False)
    d = queue.parent / name
    (d / "lm_k_init.json").write_text("{}\n")
    (d / "tb").mkdir()
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "gen-000000000-abcd").mkdir()  # a first save that was killed before `current`
    return d


def test_a_run_killed_before_its_first_checkpoint_starts_again_as_new(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("ODEARCH_DATA", raising=False)
    queue = _queue(tmp_path, [{"name": "a", "config": CONFIG, "seed": 2}])
    d = _never_trained(queue, "a")
    assert campaign.run_state(d) == "restart"
    assert campaign.main(["--queue", str(queue), "--max-minutes", "60", "--dry-run"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("campaign: a (restart): ") and "--resume" not in line
    assert f"--config {REPO / CONFIG} --seed 2 --out {d} --amp off --overwrite --data-dir /data" in line
    from odearch.train.rundir import RunDir

    log = tmp_path / "campaign.log"  # filing the killed stretch's log would put a foreign file in the directory
    log.write_text(line + "\nepoch   1 step 20/390  loss 2.1 acc 20.00%  600 img/s\n")
    assert campaign.main(["--queue", str(queue), "--save-log", str(log)]) == 0
    assert "a: it stopped before its first checkpoint" in capsys.readouterr().err and not list(d.glob("stretch*"))
    RunDir(d).check_new(overwrite=True)  # `odearch train --overwrite` accepts it: nothing would be lost


@pytest.mark.parametrize("trace", ["checkpoint", "metrics row", "complete", "shipped", "bad metrics line"])
def test_a_run_with_anything_to_lose_is_never_restarted(trace: str, tmp_path: Path) -> None:
    queue = _queue(tmp_path, [])
    d = _never_trained(queue, "a")
    if trace == "checkpoint":
        (d / "checkpoints" / "current").symlink_to("gen-000000000-abcd")
    elif trace == "metrics row":
        (d / "metrics.jsonl").write_text('{"epoch": 1}\n')
    elif trace == "complete":
        (d / "result.json").write_text(json.dumps({"status": "complete"}))
    elif trace == "shipped":
        (d / "shipped.json").write_text(json.dumps({"weights": "resnet20.cifar10_s0"}))
    else:
        (d / "metrics.jsonl").write_text("not json\n")
    assert campaign.run_state(d) == ("complete" if trace == "complete" else "started")


# -------------------------------------------------------------------- issue 30: signals reach the training run
CHILD = """
import os, signal, sys, time
from pathlib import Path
run = Path(sys.argv[1])
run.mkdir(parents=True, exist_ok=True)
got = []
def stop(signum, frame):
    got.append(signal.Signals(signum).name)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
(run / "child.pid").write_text(str(os.getpid()))
while not got:
    time.sleep(0.02)
time.sleep(0.5)  # a checkpoint takes a while: a second signal now would abort it
(run / "signals").write_text(" ".join(got))
sys.exit(128 + signal.Signals[got[0]])
"""

DRIVER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("campaign", sys.argv[1])
campaign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(campaign)
campaign.fast_bf16 = lambda: True
campaign.train_command = lambda entry, run_dir, *rest: [sys.executable, "-c", sys.argv[2], str(run_dir)]
sys.exit(campaign.main(["--queue", sys.argv[3], "--max-minutes", "60"]))
"""


def _start_campaign(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """A campaign (its own session, as a shell's job) whose ``odearch train`` is a stand-in that records the
    signals it receives; returns it once the stand-in runs, and the run directory."""
    queue = _queue(tmp_path, [{"name": "a", "config": CONFIG}, {"name": "b", "config": CONFIG}])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(REPO / "scripts" / "campaign.py"), CHILD, str(queue)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    run = queue.parent / "a"
    deadline = time.monotonic() + 300  # the campaign imports torch first: seconds, more on a busy machine
    while not (run / "child.pid").is_file() or not (run / "child.pid").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the stand-in did not start: {proc.communicate()}")
        time.sleep(0.05)
    return proc, run


def _end(proc: subprocess.Popen[str], run: Path) -> None:
    """Kills what a failed test left running: the stand-in, then the campaign."""
    pid = int((run / "child.pid").read_text())
    if Path(f"/proc/{pid}").exists() and not (run / "signals").exists():
        os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["Ctrl-C", "kill"])
def test_ctrl_c_or_sigterm_stops_the_run_gracefully_without_traceback(how: str, tmp_path: Path) -> None:
    proc, run = _start_campaign(tmp_path)
    try:
        if how == "Ctrl-C":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        _end(proc, run)
    sig = signal.SIGINT if how == "Ctrl-C" else signal.SIGTERM
    assert (run / "signals").read_text() == sig.name  # exactly one signal: it stopped with its checkpoint
    assert proc.returncode == 128 + sig and "Traceback" not in err, err
    assert f"campaign: stopped by {sig.name}; a exited with {128 + sig}" in out
    assert not (run.parent / "b").exists()  # no further run started


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_a_killed_campaign_takes_its_run_down_with_sigterm(tmp_path: Path) -> None:
    proc, run = _start_campaign(tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)  # as `kill -9` of a nohup'ed campaign
        proc.communicate(timeout=60)
        deadline = time.monotonic() + 60
        while not (run / "signals").exists():
            assert time.monotonic() < deadline, "the training process outlived the campaign"
            time.sleep(0.05)
    finally:
        _end(proc, run)
    assert (run / "signals").read_text() == "SIGTERM"  # the signal that makes `odearch train` checkpoint and stop
