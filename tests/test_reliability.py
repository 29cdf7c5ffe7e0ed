"""One-line errors instead of tracebacks, numerical faults, signals, runs that work from anywhere (issues 15, 16)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import error_line, needs_cifar
from datapaths import CIFAR_ROOT, HAS_CIFAR, REPO, SKIP_REASON
from odearch.cli import main
from odearch.train import ConfigError, NonFiniteLossError, TrainConfig, fit
from odearch.train import state as train_state
from odearch.train.checkpoint import atomic_write
from odearch.train.rundir import RunDir, resolve_data_dir

ROOT = REPO
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
BASE = {
    "model": "resnet20",
    "subset": 128,
    "batch_size": 64,
    "epochs": 1,
    "eval_subset": 100,
    "data_dir": str(CIFAR_ROOT),
    "download": False,
    "tensorboard": False,
    "device": "cpu",
}
FLAGS = [
    "--model",
    "resnet20",
    "--subset",
    "128",
    "--batch-size",
    "64",
    "--eval-subset",
    "100",
    "--device",
    "cpu",
    "--data-dir",
    str(CIFAR_ROOT),
    "--no-download",
    "--no-tensorboard",
]


@pytest.fixture(scope="module")
def run1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_CIFAR:
        pytest.skip(SKIP_REASON)
    out = tmp_path_factory.mktemp("rel") / "run"
    fit(TrainConfig.from_dict({**BASE, "out": str(out)}))
    return out


def copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst, symlinks=True)
    return dst


# --------------------------------------------------------------------------------------------- untrusted files
class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


def test_malicious_data_pickle_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": _Payload()}))
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "train",
            "--model",
            "resnet20",
            "--data-dir",
            str(tmp_path / "data"),
            "--no-download",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ]
    )
    line = error_line(capsys)
    assert code == 1 and "refusing to unpickle global" in line and "data_batch_1" in line
    assert not (tmp_path / "pwned").exists()


@needs_cifar
@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.pop("optimizer"),
        lambda s: s.update(epoch="2"),
        lambda s: s.update(rng={"torch": 1}),
        lambda s: s.update(best=[]),
        lambda s: s.update(partial=None),
        lambda s: s["optimizer"].update(param_groups=7),
        lambda s: s.update(batch=1, partial={}),
    ],
)
def test_crafted_training_state_is_one_line(
    damage: Any, run1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy(run1, tmp_path)
    path = Path(os.path.realpath(run / "checkpoints" / "last.state.pt"))
    state = torch.load(path, weights_only=True)
    damage(state)
    path.unlink()
    torch.save(state, path)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 1
    assert "last.state.pt" in error_line(capsys)


@needs_cifar
@pytest.mark.parametrize("line", ['{"step": 2}\n', "garbage\n", "[1, 2]\n"])
def test_bad_metrics_line_names_file_and_line(
    line: str, run1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy(run1, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(line)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 1
    assert "metrics.jsonl:2" in error_line(capsys)


def test_analyze_ignores_an_unterminated_last_line_like_training(tmp_path: Path) -> None:
    from odearch.analysis.command import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "lm_k": []}\n{"epoch": 2, "lm')
    assert read_metrics(path) == [{"epoch": 1, "lm_k": []}]
    assert RunDir(tmp_path).read_metrics() == [{"epoch": 1, "lm_k": []}]


def test_one_metrics_reader_for_training_and_analysis(tmp_path: Path) -> None:
    """Training (RunDir) and ``odearch analyze`` read metrics.jsonl alike: an unterminated last line is a torn append
    even when it parses, and a corrupt complete line is an error naming file:line."""
    from odearch.analysis.command import AnalyzeError, read_metrics
    from odearch.runfiles import read_metrics as read_rows

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "lm_k": []}\n\n{"epoch": 2, "lm_k": []}')  # the newline of row 2 never came
    assert read_metrics(path) == RunDir(tmp_path).read_metrics() == read_rows(path) == [{"epoch": 1, "lm_k": []}]
    path.write_text('{"epoch": 1}\n{"epoch": 2, "lm\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON line"):
        RunDir(tmp_path).read_metrics()
    with pytest.raises(AnalyzeError, match=r"metrics\.jsonl:2: not a JSON line"):
        read_metrics(path)
    path.write_text('{"epoch": 1}\n{"step": 2}\n')
    with pytest.raises(AnalyzeError, match=r"metrics\.jsonl:2: a metrics row needs an integer 'epoch'"):
        read_metrics(path)


def test_enospc_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write .*result\.json: No space left on device"):
        atomic_write(tmp_path / "result.json", b"{}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@needs_cifar
def test_tensorboard_on_a_full_disk_is_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    def full(self: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "flush", full)
    result = fit(TrainConfig.from_dict({**BASE, "tensorboard": True, "out": str(tmp_path / "run")}))
    err = capsys.readouterr().err
    assert result["status"] == "complete" and "Traceback" not in err
    assert err.count("TensorBoard events disabled") == 1 and "No space left on device" in err


def test_tensorboard_thread_errors_are_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    from odearch.train.tensorboard import _quiet_writer_thread_errors

    _quiet_writer_thread_errors()

    class _AsyncWriterThread(threading.Thread):
        def run(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    t = _AsyncWriterThread()
    t.start()
    t.join()
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- numerical faults
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_lr_is_refused(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "resnet20", f"--lr={value}", "--epochs", "1"]) == 2
    assert "lr must be a finite number" in error_line(capsys)
    yaml_value = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[value]
    (tmp_path / "c.yaml").write_text(f"model: resnet20\nlr: {yaml_value}\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "lr must be a finite number" in error_line(capsys)


@needs_cifar
def test_divergence_before_any_checkpoint_says_so_and_how_to_lower_lr(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError) as e:
        fit(TrainConfig.from_dict({**BASE, "lr": 1e30, "out": str(tmp_path / "run")}))
    msg = str(e.value)
    assert "no checkpoint was saved yet" in msg and "epoch 0" not in msg
    assert "start a new run" in msg and "--lr 1e+29" in msg


@needs_cifar
def test_non_finite_buffer_is_never_saved_as_good(run1: Path, tmp_path: Path) -> None:
    run = RunDir(copy(run1, tmp_path))
    cfg = run.read_config()
    model = train_state.build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    prog = train_state.restore_checkpoint(run, cfg, model, opt, None)[0]
    before = os.readlink(run.checkpoints / "current")
    next(b for n, b in model.named_buffers() if n.endswith("running_var")).fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite values \(NaN/inf\) in .*running_var .* NOT saved"):
        train_state.save_checkpoint(run, cfg, model, opt, None, prog)
    assert os.readlink(run.checkpoints / "current") == before


# ------------------------------------------------------------------------------------------------ small ones
@needs_cifar
def test_subset_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--subset 60000 exceeds the 50000 training images"):
        fit(TrainConfig.from_dict({**BASE, "subset": 60000, "out": str(tmp_path / "run")}))


def test_huge_seed_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "resnet20", "--seed", str(2**64)]) == 2
    assert "--seed" in error_line(capsys)


@needs_cifar
def test_resume_before_the_first_checkpoint_says_start_again(
    run1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy(run1, tmp_path)  # as a kill during the first epoch leaves it: no checkpoint, no metrics, no result
    for name in ("checkpoints", "metrics.jsonl", "result.json"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    (run / "checkpoints").mkdir()
    assert main(["train", "--resume", str(run)]) == 1
    line = error_line(capsys)
    assert "no checkpoint yet" in line and "--overwrite" in line
    assert RunDir(run).never_trained()
    RunDir(run).check_new(overwrite=True)  # the advice is taken: nothing to lose


# ------------------------------------------------------------------- issue 30: finished runs are never lost
def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _finished(run1: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the finished run1: as it is, without its checkpoints, or shipped and pruned."""
    run = copy(run1, tmp_path)
    if how != "as is":
        shutil.rmtree(run / "checkpoints")
    if how == "shipped":
        (run / "shipped.json").write_text(json.dumps({"weights": "resnet20.cifar10_s9", "sha256": "0" * 64}))
    return run


@needs_cifar
@pytest.mark.parametrize("how", ["shipped", "no checkpoints"])
def test_resume_of_a_finished_run_without_checkpoints_says_what_it_is(
    how: str, run1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _finished(run1, tmp_path, how)
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) == 1
    line = error_line(capsys)
    assert "is a finished run" in line and "nothing to resume" in line
    if how == "shipped":
        assert "shipped as resnet20.cifar10_s9" in line and "pruned" in line and f"odearch eval {run}" in line
    else:
        assert "result.json (complete, 1 epochs" in line
    assert "--overwrite" not in line and "no checkpoint yet" not in line  # no destructive advice
    assert snapshot(run) == before


@needs_cifar
@pytest.mark.parametrize("how", ["as is", "shipped"])
def test_overwrite_refuses_a_finished_run_naming_what_would_be_lost(
    how: str, run1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _finished(run1, tmp_path, how)
    before = snapshot(run)
    assert main(["train", *FLAGS, "--out", str(run), "--overwrite"]) == 1
    line = error_line(capsys)
    assert "--overwrite refused" in line and "is a finished run" in line
    assert "result.json (complete, 1 epochs, final test acc" in line and "metrics.jsonl (1 epochs)" in line
    assert ("shipped as resnet20.cifar10_s9" in line) == (how == "shipped")
    assert main(["train", *FLAGS, "--out", str(run)]) == 1  # without --overwrite: not suggested
    assert "--overwrite" not in error_line(capsys)
    assert snapshot(run) == before


@needs_cifar
def test_resume_of_a_run_killed_after_its_last_checkpoint_finishes_it(
    run1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGKILL right after the final generation became current leaves the result.json of an earlier stop."""
    run = copy(run1, tmp_path)
    done = json.loads((run / "result.json").read_text())
    stale = {
        **done,
        "status": "stopped",
        "stop_reason": "SIGTERM",
        "epochs_done": 0,
        "final_test_acc": None,
        "resume_with": f"odearch train --resume {run}",
    }
    (run / "result.json").write_text(json.dumps(stale))
    metrics, config = (run / "metrics.jsonl").read_bytes(), (run / "config.yaml").read_bytes()
    assert main(["train", "--resume", str(run)]) == 0  # was: "nothing to do", exit 143
    assert "writing its result as complete" in capsys.readouterr().out
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "complete" and result["stop_reason"] is None and result["resume_with"] is None
    assert result["epochs_done"] == 1 and result["final_test_acc"] == done["final_test_acc"]
    assert result["config_hash"] == done["config_hash"]
    assert (run / "metrics.jsonl").read_bytes() == metrics and (run / "config.yaml").read_bytes() == config
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished its 1 epochs; nothing to do" in capsys.readouterr().out


def test_dist_timeout_reaches_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from odearch.train import distributed, signals

    seen = {}
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, timeout: seen.update(t=timeout))
    monkeypatch.setattr(signals, "die_with_parent", lambda: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    distributed.init_distributed(torch.device("cpu"), timeout_s=TrainConfig(model="resnet20").dist_timeout)
    assert seen["t"].total_seconds() == 600
    with pytest.raises(ConfigError, match="dist_timeout"):
        TrainConfig(model="resnet20", dist_timeout=0)


# ------------------------------------------------------------------------------------- runs from anywhere
def test_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "runs" / "a"
    (run / "data").mkdir(parents=True)
    monkeypatch.delenv("ODEARCH_DATA", raising=False)
    assert resolve_data_dir("data", run) == str((run / "data").resolve())  # relative to the run
    assert resolve_data_dir("/abs/data", run) == "/abs/data"
    monkeypatch.setenv("ODEARCH_DATA", "/env/data")
    assert resolve_data_dir("/abs/data", run) == "/env/data"
    assert resolve_data_dir("/abs/data", run, "/flag") == "/flag"


@needs_cifar
def test_run_records_an_absolute_data_dir_and_evaluates_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "here").mkdir()
    os.symlink(CIFAR_ROOT, tmp_path / "here" / "data")
    monkeypatch.chdir(tmp_path / "here")
    flags = [f for f in FLAGS if f != str(CIFAR_ROOT)]
    flags[flags.index("--data-dir") + 1 : flags.index("--data-dir") + 1] = ["data"]
    assert main(["train", *flags, "--epochs", "1", "--out", "run"]) == 0
    import yaml

    assert Path(yaml.safe_load((tmp_path / "here" / "run" / "config.yaml").read_text())["data_dir"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ODEARCH_DATA", raising=False)
    assert main(["eval", "here/run", "--subset", "10", "--json", "-"]) == 0


@needs_cifar
def test_eval_falls_back_to_best_and_takes_a_bare_file_with_model(
    run1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    run = copy(run1, tmp_path)
    for name in ("last.safetensors", "last.state.pt"):
        (run / "checkpoints" / name).unlink()
    assert main(["eval", str(run), "--subset", "10", "--json", "-"]) == 0
    assert "best.safetensors" in capsys.readouterr().out
    bare = tmp_path / "bare.safetensors"
    tensors = {k: v.contiguous() for k, v in train_state.build_model(RunDir(run).read_config()).state_dict().items()}
    save_file(tensors, str(bare))
    assert main(["eval", str(bare), "--subset", "10", "--json", "-"]) == 1
    assert "--model" in error_line(capsys)
    assert (
        main(["eval", str(bare), "--model", "resnet20", "--data-dir", str(CIFAR_ROOT), "--subset", "10", "--json", "-"])
        == 0
    )
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{\n") :])["model"] == "resnet20"


@needs_cifar
def test_resume_with_nothing_to_do_keeps_config(run1: Path, tmp_path: Path) -> None:
    run = copy(run1, tmp_path)
    before = (run / "config.yaml").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "1", "--max-minutes", "5"]) == 0
    assert (run / "config.yaml").read_bytes() == before


@needs_cifar
def test_files_follow_the_umask(run1: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    for p in [
        run1 / "config.yaml",
        run1 / "result.json",
        run1 / "metrics.jsonl",
        *(run1 / "checkpoints" / "current").iterdir(),
    ]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p


@pytest.mark.slow
@needs_cifar
def test_sigterm_saves_a_resumable_checkpoint_and_result(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "odearch", "train", *FLAGS, "--subset", "2048", "--epochs", "50", "--out", str(run)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "stopped" and result["stop_reason"] == "SIGTERM" and result["resume_with"]
    assert "Traceback" not in err
    state = torch.load(run / "checkpoints" / "last.state.pt", weights_only=True)
    assert state["epoch"] >= 1 and (state["batch"] > 0 or state["epoch"] >= 1)


# ---------------------------------------------------------------------------------- launcher and orphans
@pytest.mark.slow
def test_launcher_forwards_sigterm_and_waits(tmp_path: Path) -> None:
    marker = tmp_path / "child_got_term"
    child = (
        f"import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(7)))\n"
        "print('ready', flush=True); time.sleep(60)"
    )
    parent = (
        "import subprocess, sys\nfrom odearch.train.distributed import wait_forwarding\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}])\nsys.exit(wait_forwarding(p))"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], env=ENV)
    deadline = time.monotonic() + 60
    time.sleep(0.5)
    while not any(p for p in Path("/proc").glob("[0-9]*") if _is_child_of(p, proc.pid)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 7 and marker.exists()


def _is_child_of(p: Path, pid: int) -> bool:
    try:
        return (p / "stat").read_text().split(")")[-1].split()[1] == str(pid)
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_workers_die_with_their_agent(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    child = (
        "import os, time\nfrom odearch.train.signals import die_with_parent\ndie_with_parent()\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    )
    agent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(120)",
        ],
        env=ENV,
    )
    deadline = time.monotonic() + 60
    while not pidfile.is_file() or not pidfile.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pid = int(pidfile.read_text())
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in (Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]):
        assert time.monotonic() < deadline, "the orphan kept running"
        time.sleep(0.1)


def test_analyze_finds_the_run_of_a_linked_checkpoint(tmp_path: Path) -> None:
    from odearch.analysis.command import resolve_checkpoint
    from odearch.train import generations

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: lm_resnet20\n")
    generations.commit(run / "checkpoints", {"last.safetensors": b"x", "best.safetensors": b"y"}, {"step": 1})
    for name in ("last.safetensors", "best.safetensors"):
        assert resolve_checkpoint(run / "checkpoints" / name)[1] == run
    assert resolve_checkpoint(run)[0] == run / "checkpoints" / "best.safetensors"
