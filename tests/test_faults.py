"""Fault injection on the run directory (issue 15): kills and full disks between each pair of checkpoint writes,
corrupted bytes, concurrent writers, runs written by the previous (format-1) checkpoint writer. Tiny runs only."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import needs_cifar, weights
from datapaths import CIFAR_ROOT, REPO
from odearch.cli import main
from odearch.train import TrainConfig, fit, generations, load_weights, loop, save_state, save_weights
from odearch.train import state as train_state
from odearch.train.rundir import RunDir, RunExistsError, RunLockedError

pytestmark = needs_cifar
ROOT = REPO
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
BASE = {
    "model": "resnet20",
    "subset": 128,
    "batch_size": 64,
    "epochs": 2,
    "eval_subset": 100,
    "data_dir": str(CIFAR_ROOT),
    "download": False,
    "tensorboard": False,
    "device": "cpu",
}


def cfg_for(out: Path, **kw: Any) -> TrainConfig:
    return TrainConfig.from_dict({**BASE, "out": str(out), **kw})


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def rows(run: Path, drop: tuple[str, ...] = ("seconds", "images_per_s", "peak_rss_mib")) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run (2 steps per epoch)."""
    out = tmp_path_factory.mktemp("faults") / "ref"
    fit(cfg_for(out))
    return out


def restore_step(run: Path) -> int:
    """Loads the run's checkpoint as a resume does (checksums, step agreement); returns its step."""
    rd = RunDir(run)
    cfg = rd.read_config()
    model = train_state.build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    return train_state.restore_checkpoint(rd, cfg, model, opt, None)[0].step


# ------------------------------------------------------------------------------------ format 1 (older runs)
def _format1_save_last(
    run: RunDir,
    cfg: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    progress: Any,
    *,
    best: bool = False,
    row: Any = None,
    step: Any = None,
) -> None:
    """The checkpoint writer of dbe7c8e (format 1), verbatim but for the `best` and `step` (an EMA's state, none
    here) arguments: best.safetensors, then
    last.state.pt, then last.safetensors, each atomic on its own, no manifest."""
    if best:
        save_weights(run.best_weights, model, train_state.checkpoint_metadata(cfg, progress))
    state = {
        "format": "odearch-train-state/1",
        "model": cfg.model,
        "config_hash": train_state.config_hash(cfg),
        "step": progress.step,
        "epoch": progress.epoch,
        "batch": progress.batch,
        "partial": progress.partial,
        "best": progress.best,
        "wall_seconds": progress.wall_seconds,
        "optimizer": optimizer.state_dict(),
        "scheduler": {"schedule": cfg.schedule, "step": progress.step},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": train_state.capture_rng(),
    }
    save_state(run.last_state, state)
    save_weights(run.last_weights, model, train_state.checkpoint_metadata(cfg, progress))


@pytest.mark.slow
def test_format1_run_resumes_bitwise_and_is_rewritten_as_format2(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run checkpointed by the old writer mid-epoch 2 (the campaign's runs) resumes with the new code exactly."""
    out = tmp_path / "old"
    with monkeypatch.context() as m:
        m.setattr(loop, "save_checkpoint", _format1_save_last)
        fit(cfg_for(out, epochs=1))  # epoch 1 complete, old layout
        assert fit(cfg_for(out, max_minutes=1e-5), resume=True)["step"] == 3  # one step into epoch 2, old layout
    ck = out / "checkpoints"
    assert not (ck / "current").exists() and not (ck / "last.state.pt").is_symlink()
    result = fit(cfg_for(out), resume=True)
    assert result["status"] == "complete" and same(weights(out), weights(ref))
    assert rows(out) == [
        {k: v for k, v in r.items() if k not in ("git_commit", "git_dirty")}
        | {k: r[k] for k in ("git_commit", "git_dirty")}
        for r in rows(ref)
    ]
    assert (ck / "current").is_symlink() and all((ck / n).is_symlink() for n in generations.FILES)
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith("gen-")) == [os.readlink(ck / "current")]
    assert same(load_weights(ck / "best.safetensors")[0], load_weights(ref / "checkpoints" / "best.safetensors")[0])


# ------------------------------------------------------------------------- kills and full disks in a save
class _Ops:
    """Wraps every file-system operation of a checkpoint commit; calls `before(i, name)` ahead of operation i."""

    NAMES = ("write_fsync", "fsync_dir")
    OS = ("replace", "symlink", "link", "rename")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, before: Any) -> None:
        self.count = 0
        for name in self.NAMES:
            monkeypatch.setattr(generations, name, self._wrap(getattr(generations, name), name, before))
        fake_os = types.SimpleNamespace(**{n: getattr(os, n) for n in dir(os) if not n.startswith("__")})
        for name in self.OS:  # only generations' own calls: a proxy module, not the global one
            setattr(fake_os, name, self._wrap(getattr(os, name), name, before))
        monkeypatch.setattr(generations, "os", fake_os)
        fake_shutil = types.SimpleNamespace(rmtree=self._wrap(shutil.rmtree, "rmtree", before))
        monkeypatch.setattr(generations, "shutil", fake_shutil)

    def _wrap(self, fn: Any, name: str, before: Any) -> Any:
        def wrapped(*a: Any, **kw: Any) -> Any:
            before(self.count, name)
            self.count += 1
            return fn(*a, **kw)

        return wrapped


@pytest.mark.slow
def test_a_kill_before_any_write_of_a_save_leaves_a_resumable_checkpoint(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots the checkpoint directory before each operation of the epoch-2 save (what a SIGKILL there leaves)
    and checks each: it resumes from step 2 (old) or 4 (new), never a mix; two of them are resumed to the end."""
    run = tmp_path / "run"
    fit(cfg_for(run, epochs=1))
    snaps: list[Path] = []

    def before(i: int, name: str) -> None:
        snap = tmp_path / f"snap{i:02d}"
        shutil.copytree(run, snap, symlinks=True)
        snaps.append(snap)

    with monkeypatch.context() as m:
        _Ops(m, before)
        fit(cfg_for(run), resume=True)
    assert len(snaps) >= 8
    steps = [restore_step(s) for s in snaps]
    assert set(steps) == {2, 4}, steps
    switch = steps.index(4)
    assert steps == [2] * switch + [4] * (len(steps) - switch)  # old until the one atomic switch, new after
    for s in (snaps[switch - 1], snaps[-1]):  # killed just before / after the switch: both finish exactly
        assert fit(cfg_for(s), resume=True)["status"] == "complete"
        assert same(weights(s), weights(ref)) and len(rows(s)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("at", [1, 4, 7, 10])
def test_enospc_during_a_save_names_the_file_and_keeps_the_run(
    at: int, ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    fit(cfg_for(run, epochs=1))

    def before(i: int, name: str) -> None:
        if i == at:
            raise OSError(errno.ENOSPC, f"cannot write {run}/checkpoints/x: No space left on device")

    with monkeypatch.context() as m:
        _Ops(m, before)
        try:
            fit(cfg_for(run), resume=True)
            failed = False
        except OSError as e:
            failed = True
            assert e.errno == errno.ENOSPC and str(run) in str(e)
    assert restore_step(run) in (2, 4)
    if failed:  # nothing half-written remains, and the run resumes to the reference result
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
        fit(cfg_for(run), resume=True)
        assert same(weights(run), weights(ref))


@pytest.mark.slow
def test_a_real_sigkill_at_the_checkpoint_switch_then_resume(ref: Path, tmp_path: Path) -> None:
    """A subprocess SIGKILLs itself (os._exit) right before the ``current`` switch of epoch 2, then resumes."""
    run = tmp_path / "run"
    fit(cfg_for(run, epochs=1))
    code = (
        "import os, sys; from odearch.train import generations as g; from odearch.cli import main\n"
        "def kill(*a):\n    os._exit(9)\n"
        "g._point_current = kill\n"
        f"sys.exit(main(['train', '--resume', {str(run)!r}, '--epochs', '2']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr
    assert restore_step(run) == 2
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert same(weights(run), weights(ref)) and rows(run) == rows(ref)


# ------------------------------------------------------------------------------------- corrupted bytes
@pytest.mark.slow
@pytest.mark.parametrize("name", ["last.safetensors", "last.state.pt", "best.safetensors"])
def test_flipped_bytes_are_refused_naming_the_file(
    name: str, ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """24 random 8-byte flips per file (each on a fresh copy): every one is refused by resume or eval."""
    gen = torch.Generator().manual_seed(1)
    accepted = []
    for trial in range(24 if name == "last.safetensors" else 6):
        run = tmp_path / f"r{trial}"
        shutil.copytree(ref, run, symlinks=True)
        path = run / "checkpoints" / name
        data = bytearray(path.read_bytes())
        at = int(torch.randint(0, len(data) - 8, (1,), generator=gen))
        data[at : at + 8] = bytes((b ^ 0xA5) for b in data[at : at + 8])
        os.chmod(os.path.realpath(path), 0o644)
        Path(os.path.realpath(path)).write_bytes(bytes(data))
        argv = (
            ["eval", str(run), "--checkpoint", "best", "--subset", "10"]
            if name.startswith("best")
            else ["train", "--resume", str(run), "--epochs", "3"]
        )
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        if code == 0:
            accepted.append(at)
        else:
            assert len(err) == 1 and err[0].startswith("odearch: error: ") and name in err[0], err
    assert not accepted


# ---------------------------------------------------------------------------------- concurrent writers
@pytest.mark.slow
def test_second_writer_is_refused_and_a_dead_holders_lock_is_reclaimed(ref: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(ref, run, symlinks=True)
    (run / "result.json").unlink()  # unfinished, so that --overwrite would be allowed but for the lock
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(run)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = (run / "metrics.jsonl").read_bytes()
        for resume, overwrite in ((True, False), (False, True)):
            with pytest.raises(RunLockedError, match="another odearch process"):
                fit(cfg_for(run, epochs=3), resume=resume, overwrite=overwrite)
        assert (run / "metrics.jsonl").read_bytes() == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert fit(cfg_for(run, epochs=3), resume=True)["epochs_done"] == 3  # the dead process's lock is gone


@pytest.mark.slow
def test_two_concurrent_resumes_one_refused(ref: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(ref, run, symlinks=True)
    cmd = [sys.executable, "-m", "odearch", "train", "--resume", str(run), "--epochs", "4"]
    procs = [
        subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    assert any("another odearch process" in err for _, err in outs)
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------- overwrite
@pytest.mark.slow
def test_overwrite_refuses_a_directory_with_foreign_files(ref: Path, tmp_path: Path) -> None:
    d = tmp_path / "project"
    d.mkdir()
    (d / "config.yaml").write_text("model: resnet20\n")
    (d / "setup.py").write_text("print('precious')\n")
    (d / "src").mkdir()
    with pytest.raises(RunExistsError, match=r"setup\.py, src"):
        fit(cfg_for(d), overwrite=True)
    assert (d / "setup.py").is_file() and (d / "src").is_dir()
    flags = [
        x for k, v in BASE.items() if k not in ("download", "tensorboard") for x in ("--" + k.replace("_", "-"), str(v))
    ]
    assert main(["train", *flags, "--out", str(d), "--overwrite"]) == 1
    run = tmp_path / "run"  # a genuine unfinished run (plus eval output) is replaced; a finished one never
    shutil.copytree(ref, run, symlinks=True)
    (run / "eval_last.json").write_text("{}")
    with pytest.raises(RunExistsError, match=r"finished run; replacing it would delete result\.json \(complete"):
        fit(cfg_for(run, epochs=1), overwrite=True)
    assert (run / "result.json").is_file() and len(rows(run)) == 2
    result = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**result, "status": "stopped"}))
    fit(cfg_for(run, epochs=1), overwrite=True)
    assert [r["epoch"] for r in rows(run)] == [1] and not (run / "eval_last.json").exists()


# --------------------------------------------------------------------- kill between checkpoint and log
def test_resume_repairs_a_lost_metrics_row_and_writes_result(ref: Path, tmp_path: Path) -> None:
    """A kill after the last epoch's checkpoint but before its metrics row and result.json."""
    run = tmp_path / "run"
    shutil.copytree(ref, run, symlinks=True)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0] + lines[1][:20])  # the row being appended, cut
    (run / "result.json").unlink()
    config = (run / "config.yaml").read_bytes()
    result = fit(cfg_for(run, epochs=1), resume=True)  # fewer epochs asked: nothing to do, config kept
    assert (run / "config.yaml").read_bytes() == config
    assert rows(run) == rows(ref)
    assert result["status"] == "complete" and json.loads((run / "result.json").read_text())["epochs_done"] == 2
