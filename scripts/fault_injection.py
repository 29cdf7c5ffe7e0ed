"""A fault-injection pass on the ``odearch`` CLI (issues 15 and 30): kills, full disks, corrupted and malicious
files, concurrent writers, bad inputs; the campaign queue, ``odearch ship`` and ``--prune-checkpoints``, the shipped-
weights registry, ``odearch report``; each fault is classified and the totals written as JSON.

    PYTHONPATH=src python scripts/fault_injection.py --data-dir /work/shared/data --out results/bench/faults.json
    python scripts/fault_injection.py --data-dir D --surfaces issue30 --out results/bench/faults-issue30.json

Outcome of each fault: ``ok`` (the CLI did what it should: succeeded, or refused with a one-line ``odearch: error``
or ``campaign: error``), ``traceback`` (a Python traceback reached stderr), ``hang`` (no exit within the time limit),
``lost`` (the run could not be resumed afterwards, the resumed weights differ from an uninterrupted run's, or a file
that was there is gone or changed), ``stuck`` (a run or file left that a person must repair: a restart refused, a
half-written run directory, a command that works only once the damage is repaired), ``wrong`` (silently wrong: exit 0
where a refusal was due, a NaN printed, a damaged run reported without a warning), ``unclear`` (refused, but without
a one-line error), ``executed`` (code from an untrusted file ran: its marker file appeared). Tiny runs: resnet20, 128
images, 2 steps per epoch; the issue-30 group writes its finished runs with the trainer's own writers (no training),
except a few campaign runs of one to a few tiny epochs. Registries are copies in a temp folder, never the package's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300
KILL_AT_OP = """
import os, sys
from odearch.train import generations as g
from odearch.cli import main
AT, MODE, count = int(sys.argv[1]), sys.argv[2], [0]
def wrap(fn):
    def w(*a, **k):
        if count[0] == AT:
            if MODE == "kill":
                os._exit(9)
            raise OSError(28, "No space left on device")
        count[0] += 1
        return fn(*a, **k)
    return w
if MODE == "kill":  # before each write, link switch and directory sync of the checkpoint's save
    for name in ("write_fsync", "fsync_dir", "_replace_link"):
        setattr(g, name, wrap(getattr(g, name)))
else:  # the disk fills up: the AT-th fsync of the process fails (config, checkpoint files, metrics, result)
    os.fsync = wrap(os.fsync)
sys.exit(main(sys.argv[3:]))
"""


class Pass:
    """Runs faults and tallies outcomes."""

    def __init__(self, data_dir: str, work: Path) -> None:
        self.data_dir, self.work = data_dir, work
        self.env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
        self.records: list[dict[str, Any]] = []
        self.flags = [
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
            data_dir,
            "--no-download",
            "--no-tensorboard",
        ]

    def cli(
        self, *args: str, pre: list[str] | None = None, timeout: float = TIMEOUT, env: dict[str, str] | None = None
    ) -> tuple[int | None, str]:
        cmd = [sys.executable, *(pre or ["-m", "odearch"]), *args]
        try:
            r = subprocess.run(cmd, env=env or self.env, capture_output=True, text=True, timeout=timeout, cwd=self.work)
        except subprocess.TimeoutExpired:
            return None, ""
        return r.returncode, r.stderr

    def record(self, kind: str, name: str, outcome: str, detail: str = "") -> None:
        self.records.append({"kind": kind, "fault": name, "outcome": outcome, "detail": detail[-300:]})
        print(
            f"{kind:<12} {name:<40} {outcome:<10} {detail.strip().splitlines()[-1][:100] if detail else ''}", flush=True
        )

    def refused(self, kind: str, name: str, code: int | None, err: str, marker: Path | None = None) -> None:
        """Expects a one-line refusal."""
        if marker is not None and marker.exists():
            self.record(kind, name, "executed", err)
        elif code is None:
            self.record(kind, name, "hang")
        elif "Traceback" in err:
            self.record(kind, name, "traceback", err)
        elif code != 0 and err.strip().splitlines()[-1].startswith("odearch: error:"):
            self.record(kind, name, "ok", err)
        else:
            self.record(kind, name, "accepted", err)

    def train(self, out: Path, *extra: str) -> int | None:
        return self.cli("train", *self.flags, "--out", str(out), *extra)[0]


def weights(run: Path) -> dict[str, torch.Tensor]:
    from odearch.train import load_weights

    return load_weights(run / "checkpoints" / "last.safetensors")[0]


def same(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def resumed_exactly(p: Pass, kind: str, name: str, run: Path, ref: Path, code: int | None, err: str) -> None:
    """After a kill or a full disk: resume to the end; the weights must equal the uninterrupted run's."""
    if code is None:
        return p.record(kind, name, "hang")
    if "Traceback" in err:
        return p.record(kind, name, "traceback", err)
    rc, err2 = p.cli("train", "--resume", str(run), "--epochs", "3")  # (a failed first write may not record it)
    if rc is None:
        return p.record(kind, name, "hang", "resume")
    if rc != 0 or not same(run, ref):
        return p.record(kind, name, "lost", err2 or "weights differ")
    p.record(kind, name, "ok", err)


# ------------------------------------------------------------------------------------------------- the faults
def kills_at_random(p: Pass, ref: Path, n: int, rng: random.Random) -> None:
    for i in range(n):
        run = p.work / f"rk{i}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "odearch", "train", *p.flags, "--epochs", "3", "--out", str(run)],
            env=p.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(3.0, 12.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (run / "config.yaml").exists():
            rc, err = p.train(run, "--epochs", "3"), ""
            resumed_exactly(p, "sigkill", f"random kill {i} (before the run dir)", run, ref, rc, err)
            continue
        resumed_exactly(p, "sigkill", f"random kill {i}", run, ref, 0, "")


def kills_in_save(p: Pass, ref: Path, one: Path, mode: str, ops: range) -> None:
    for at in ops:
        run = p.work / f"{mode}{at}"
        shutil.copytree(one, run, symlinks=True)
        code, err = p.cli(str(at), mode, "train", "--resume", str(run), "--epochs", "3", pre=["-c", KILL_AT_OP])
        if mode == "kill":
            resumed_exactly(p, "kill-in-save", f"os._exit before op {at} of a save", run, ref, code, err)
        else:
            if code is not None and code == 1 and "No space left" in err and str(run) not in err.splitlines()[-1]:
                p.record("enospc", f"ENOSPC at op {at}", "unnamed", err)
                continue
            resumed_exactly(p, "enospc", f"ENOSPC at op {at} of a save", run, ref, code, err)


def corrupted(p: Pass, ref: Path, rng: random.Random, flips: int) -> None:
    third = max(1, flips // 3)
    plan = [("last.safetensors", flips), ("last.state.pt", third), ("best.safetensors", third)]
    for name, n in plan:
        for i in range(n):
            run = p.work / f"c-{name}-{i}"
            shutil.copytree(ref, run, symlinks=True)
            path = Path(os.path.realpath(run / "checkpoints" / name))
            data = bytearray(path.read_bytes())
            at = rng.randrange(len(data) - 8)
            data[at : at + 8] = bytes(b ^ 0xFF for b in data[at : at + 8])
            os.chmod(path, 0o644)
            path.write_bytes(bytes(data))
            args = (
                ["eval", str(run), "--checkpoint", "best", "--subset", "10"]
                if name.startswith("best")
                else ["train", "--resume", str(run), "--epochs", "4"]
            )
            code, err = p.cli(*args)
            p.refused("corrupt", f"{name} flip at byte {at}", code, err)


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def malicious(p: Pass, ref: Path) -> None:
    marker = p.work / "PWNED"
    data = p.work / "evil-data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (data / name).write_bytes(pickle.dumps({b"data": _Exec(marker), b"labels": []}))
    code, err = p.cli(
        "train",
        "--model",
        "resnet20",
        "--data-dir",
        str(data.parent),
        "--no-download",
        "--out",
        str(p.work / "evil-run"),
        "--device",
        "cpu",
    )
    p.refused("malicious", "data pickle calling os.system", code, err, marker)
    code, err = p.cli("eval", str(ref), "--data-dir", str(data.parent), "--no-download", "--subset", "10")
    p.refused("malicious", "data pickle via eval", code, err, marker)
    for i, payload in enumerate([_Exec(marker), {"step": _Exec(marker)}, [_Exec(marker)]]):
        run = p.work / f"evil-state{i}"
        shutil.copytree(ref, run, symlinks=True)
        path = Path(os.path.realpath(run / "checkpoints" / "last.state.pt"))
        path.unlink()
        with open(path, "wb") as f:
            pickle.dump(payload, f)
        code, err = p.cli("train", "--resume", str(run), "--epochs", "3")
        p.refused("malicious", f"last.state.pt pickle payload {i}", code, err, marker)
    run = p.work / "evil-st"
    shutil.copytree(ref, run, symlinks=True)
    path = Path(os.path.realpath(run / "checkpoints" / "last.safetensors"))
    path.unlink()
    path.write_bytes(pickle.dumps(_Exec(marker)))
    code, err = p.cli("eval", str(run), "--subset", "10")
    p.refused("malicious", "last.safetensors replaced by a pickle", code, err, marker)


def crafted_states(p: Pass, ref: Path) -> None:
    damages = {
        "no optimizer": lambda s: s.pop("optimizer"),
        "epoch as str": lambda s: s.update(epoch="2"),
        "rng int": lambda s: s.update(rng={"torch": 1}),
        "best list": lambda s: s.update(best=[]),
        "partial None": lambda s: s.update(partial=None),
        "no step": lambda s: s.pop("step"),
        "param_groups int": lambda s: s["optimizer"].update(param_groups=7),
    }
    for name, damage in damages.items():
        run = p.work / f"crafted-{name.replace(' ', '_')}"
        shutil.copytree(ref, run, symlinks=True)
        path = Path(os.path.realpath(run / "checkpoints" / "last.state.pt"))
        state = torch.load(path, weights_only=True)
        damage(state)
        path.unlink()
        torch.save(state, path)
        code, err = p.cli("train", "--resume", str(run), "--epochs", "3")
        p.refused("crafted", f"state: {name}", code, err)


def bad_metrics(p: Pass, ref: Path) -> None:
    for i, line in enumerate(['{"step": 2}\n', "garbage\n", "[1]\n"]):
        run = p.work / f"metrics{i}"
        shutil.copytree(ref, run, symlinks=True)
        with open(run / "metrics.jsonl", "a") as f:
            f.write(line)
        code, err = p.cli("train", "--resume", str(run), "--epochs", "3")
        p.refused("metrics", f"metrics line {line.strip()!r}", code, err)
    run = p.work / "metrics-cut"
    shutil.copytree(ref, run, symlinks=True)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "lm')
    code, err = p.cli("analyze", str(run))
    p.record(
        "metrics",
        "analyze, unterminated last line",
        "ok"
        if code in (0, 2) and "Traceback" not in err and (code == 0 or err.strip().startswith("odearch analyze: error"))
        else "traceback",
        err,
    )


def concurrency(p: Pass, ref: Path) -> None:
    run = p.work / "conc"
    shutil.copytree(ref, run, symlinks=True)
    cmd = [sys.executable, "-m", "odearch", "train", "--resume", str(run), "--epochs", "4"]
    procs = [
        subprocess.Popen(cmd, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [pr.communicate(timeout=TIMEOUT)[1] for pr in procs]
    rows = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    ok = sorted(pr.returncode for pr in procs) == [0, 1] and rows == [1, 2, 3, 4]
    p.record("concurrent", "two --resume at once", "ok" if ok else "lost", " | ".join(outs))
    run2 = p.work / "conc2"
    proc = subprocess.Popen(
        [sys.executable, "-m", "odearch", "train", *p.flags, "--epochs", "20", "--out", str(run2)],
        env=p.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    while not (run2 / "metrics.jsonl").exists():
        time.sleep(0.1)
    code, err = p.cli("train", *p.flags, "--out", str(run2), "--epochs", "1", "--overwrite")
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    p.refused("concurrent", "--overwrite while a run writes", code, err)


def bad_inputs(p: Pass) -> None:
    cases = {
        "lr nan": ["--lr=nan"],
        "lr inf": ["--lr=inf"],
        "seed 2**64": ["--seed", str(2**64)],
        "subset 10**6": ["--subset", "1000000"],
        "momentum nan": ["--momentum=nan"],
        "dist-timeout 0": ["--dist-timeout", "0"],
    }
    for name, extra in cases.items():
        code, err = p.cli("train", *p.flags, *extra, "--out", str(p.work / f"bad-{name.replace(' ', '_')}"))
        p.refused("input", name, code, err)
    d = p.work / "foreign"
    d.mkdir()
    (d / "config.yaml").write_text("model: resnet20\n")
    (d / "precious.txt").write_text("keep me\n")
    code, err = p.cli("train", *p.flags, "--out", str(d), "--overwrite")
    p.refused("input", "--overwrite of a folder with foreign files", code, err)
    if not (d / "precious.txt").exists():
        p.record("input", "--overwrite deleted a foreign file", "lost")


def sigterm(p: Pass) -> None:
    run = p.work / "term"
    proc = subprocess.Popen(
        [sys.executable, "-m", "odearch", "train", *p.flags, "--subset", "1024", "--epochs", "30", "--out", str(run)],
        env=p.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return p.record("signal", "SIGTERM mid-run", "hang")
    result = json.loads((run / "result.json").read_text()) if (run / "result.json").exists() else {}
    rc, err2 = p.cli("train", "--resume", str(run), "--max-minutes", "0.01")
    ok = proc.returncode == 143 and result.get("status") == "stopped" and rc == 0 and "Traceback" not in err
    p.record("signal", "SIGTERM mid-run", "ok" if ok else "lost", err + err2)


# ------------------------------------------- issue 30: the campaign, ship / prune, the registry, report, bad inputs
CAMPAIGN = REPO / "scripts" / "campaign.py"
CONFIG = "configs/cifar10/resnet20.yaml"
TINY = [
    "--model",
    "resnet20",
    "--subset",
    "128",
    "--batch-size",
    "64",
    "--epochs",
    "1",
    "--eval-subset",
    "100",
    "--no-tensorboard",
    "--no-download",
    "--device",
    "cpu",
]
N_TEST = "20"  # test images of each evaluation a ship or an eval makes
REGISTRY_MAIN = """
import os, sys
from pathlib import Path
from odearch.models import _pretrained
_pretrained.REGISTRY_FILE = Path(os.environ["FAULT_REGISTRY"])  # a copy in a temp folder, never the package's
from odearch.cli import main
sys.exit(main(sys.argv[1:]))
"""
OTHER_SCHEME = (
    REGISTRY_MAIN.split("from odearch.cli")[0]
    + """
import odearch
try:
    odearch.create_model("preact_resnet20", pretrained=True, scheme="rk2")
except _pretrained.PretrainedError as e:
    sys.exit(print(f"odearch: error: {e}", file=sys.stderr) or 1)
print("loaded euler-trained weights as rk2")
"""
)
KILL_AT_THIRD_UNLINK = """
import os, signal, sys
from odearch.train.ship import prune_checkpoints
unlink, count = os.unlink, [0]
def dying_unlink(*args, **kwargs):
    count[0] += 1
    if count[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return unlink(*args, **kwargs)
os.unlink = dying_unlink
prune_checkpoints(sys.argv[1], sys.argv[2], force=True)
"""


def snapshot(folder: Path) -> dict[str, bytes | str | None]:
    """Every entry under ``folder``: a file's bytes, a link's target, None for a folder."""
    if not folder.exists():
        return {}
    return {
        str(q.relative_to(folder)): (
            f"-> {os.readlink(q)}" if q.is_symlink() else q.read_bytes() if q.is_file() else None
        )
        for q in sorted(folder.rglob("*"))
    }


def judge(
    p: Pass,
    kind: str,
    name: str,
    code: int | None,
    err: str,
    folder: Path | None = None,
    before: dict[str, Any] | None = None,
    prefix: str = "odearch: error:",
) -> str:
    """Expects a one-line refusal (``prefix``, exit code not 0) that leaves ``folder`` as ``before``: an entry gone or
    changed is ``lost``, one added (a half-written run) ``stuck``, exit 0 ``wrong``; the outcome."""
    after = snapshot(folder) if folder is not None else {}
    changed = [k for k, v in (before or {}).items() if after.get(k, b"gone") != v]
    added = sorted(set(after) - set(before or {})) if before is not None else []
    last = (err.strip().splitlines() or [""])[-1]
    if code is None:
        outcome = "hang"
    elif "Traceback" in err:
        outcome = "traceback"
    elif changed:
        outcome, err = "lost", f"{err}\nchanged or gone: {', '.join(changed[:4])}"
    elif code == 0:
        outcome, err = "wrong", f"{err}\nexit 0 where a refusal was due"
    elif added:
        outcome, err = "stuck", f"{err}\nleft behind: {', '.join(added[:4])}"
    else:
        outcome = "ok" if last.startswith(prefix) else "unclear"
    p.record(kind, name, outcome, err)
    return outcome


def make_run(p: Pass, root: Path, model: str = "resnet20", seed: int = 0, **options: Any) -> Path:
    """A finished one-epoch run of ``model`` (untrained weights), written with the trainer's own writers (as
    tests/test_ship.py makes them): no training."""
    from odearch.train import RunDir, TrainConfig, config_hash
    from odearch.train.state import Progress, build_model, save_checkpoint

    cfg = TrainConfig(
        model=model,
        seed=seed,
        epochs=1,
        subset=128,
        eval_subset=100,
        batch_size=64,
        amp="off",
        data_dir=p.data_dir,
        download=False,
        device="cpu",
        tensorboard=False,
        out=str(root),
        **options,
    )
    run = RunDir(root)
    run.create(cfg, overwrite=False)
    torch.manual_seed(seed)
    net = build_model(cfg)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    prog = Progress(step=2, epoch=1, best={"acc": 0.1, "epoch": 1, "on": "test"}, amp_dtype="float32")
    row = {
        "epoch": 1,
        "step": 2,
        "train_loss": 2.3,
        "train_acc": 0.1,
        "test_loss": 2.3,
        "test_acc": 0.1,
        "lr": 0.1,
        "seconds": 1.0,
        "images_per_s": 128.0,
        "lm_k": {},
        "git_commit": "0" * 40,
        "git_dirty": False,
        "amp_dtype": "float32",
        "device_name": "cpu",
    }
    save_checkpoint(run, cfg, net, opt, None, prog, best=True, row=row)
    run.append_metrics(row)
    run.write_result(
        {
            "status": "complete",
            "epochs_done": 1,
            "config_hash": config_hash(cfg),
            "amp": "off",
            "amp_dtype": "float32",
            "train_images": 128,
            "git_commit": "0" * 40,
            "device": "cpu",
            "wall_seconds": 1.0,
            "final_test_acc": 0.1,
        }
    )
    return root


def ship_argv(p: Pass, run: Path, reg: Path, *extra: str) -> list[str]:
    return [
        "ship",
        str(run),
        "--registry",
        str(reg),
        "--any-recipe",
        "--test-subset",
        N_TEST,
        "--data-dir",
        p.data_dir,
        *extra,
    ]


def eval_argv(p: Pass, target: Path | str, *extra: str) -> list[str]:
    return ["eval", str(target), "--data-dir", p.data_dir, "--subset", N_TEST, "--device", "cpu", "--json", "-", *extra]


def campaign(
    p: Pass, queue: Path, *extra: str, minutes: str = "2.9", env: dict[str, str] | None = None, timeout: float = TIMEOUT
) -> tuple[int | None, str, str]:
    """``scripts/campaign.py --queue QUEUE``: exit code, stdout, stderr. Under 3 minutes (the default here) the
    campaign starts no training, so that a bad queue it accepts costs nothing (and reads as exit 0)."""
    cmd = [
        sys.executable,
        str(CAMPAIGN),
        "--queue",
        str(queue),
        *(["--max-minutes", minutes] if minutes else []),
        *extra,
    ]
    try:
        r = subprocess.run(cmd, env=env or p.env, capture_output=True, text=True, timeout=timeout, cwd=p.work)
    except subprocess.TimeoutExpired:
        return None, "", ""
    return r.returncode, r.stdout, r.stderr


def read_only(folder: Path, on: bool) -> None:
    """``folder`` read-only, even for root (``chattr +i``: no entry can be made in it), or writable again."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if on else "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555 if on else 0o755)


BAD_QUEUES = {
    "malformed YAML": "runs: [\n",
    "empty": "",
    "a list": f"- name: a\n  config: {CONFIG}\n",
    "no runs": "data_dir: data\n",
    "runs: 5": "runs: 5\n",
    "entry a string": "runs: [preact_s0]\n",
    "entry without name": f"runs: [{{config: {CONFIG}}}]\n",
    "entry without config": "runs: [{name: a}]\n",
    "args a string": f"runs: [{{name: a, config: {CONFIG}, args: '--lr 0.05'}}]\n",
    "duplicate names": "runs: [" + ", ".join(f"{{name: {n}, config: {CONFIG}}}" for n in "aba") + "]\n",
    "unknown key": f"runs: [{{name: a, config: {CONFIG}, reqiures: lm_init}}]\n",
    "config file missing": "runs: [{name: a, config: configs/none.yaml}]\n",
    "name ../a": f"runs: [{{name: ../a, config: {CONFIG}}}]\n",
}


def campaign_queues(p: Pass) -> None:
    """Queues the campaign cannot run: one line ``campaign: error:``, exit 2, nothing written."""
    for name, text in BAD_QUEUES.items():
        root = p.work / "q" / name.replace(" ", "_").replace("/", "_").replace(".", "_")
        root.mkdir(parents=True)
        (root / "queue.yaml").write_text(text)
        before = snapshot(root)
        code, _, err = campaign(p, root / "queue.yaml")
        judge(p, "campaign", f"queue: {name}", code, err, root, before, "campaign: error:")
    root = p.work / "q" / "missing"
    root.mkdir()
    code, _, err = campaign(p, root / "queue.yaml")
    judge(p, "campaign", "queue: missing file", code, err, root, {}, "campaign: error:")
    root = p.work / "q" / "read-only"
    root.mkdir()
    (root / "queue.yaml").write_text(f"runs: [{{name: a, config: {CONFIG}, args: {json.dumps(TINY)}}}]\n")
    before = snapshot(root)
    read_only(root, True)
    try:
        code, _, err = campaign(p, root / "queue.yaml", minutes="10")
    finally:
        read_only(root, False)
    judge(p, "campaign", "read-only runs dir", code, err, root, before, "campaign: error:")


def campaign_end_and_data(p: Pass) -> None:
    """A run that waits for an option is named at the end (not 'every run complete'); ``$ODEARCH_DATA`` beats the
    queue's ``data_dir``."""
    root = p.work / "q" / "waits"
    make_run(p, root / "done")
    (root / "queue.yaml").write_text(
        f"runs: [{{name: done, config: {CONFIG}}}, {{name: waits, config: {CONFIG}, requires: no_such_option}}]\n"
    )
    code, out, err = campaign(p, root / "queue.yaml")
    ok = code == 0 and out.strip().splitlines()[-1:] == ["campaign: no other run can train here; not done: waits"]
    p.record(
        "campaign",
        "a waiting run at the end",
        "traceback" if "Traceback" in err else "ok" if ok else "wrong",
        out + err,
    )
    root = p.work / "q" / "data"
    root.mkdir()
    (root / "queue.yaml").write_text(f"data_dir: {root / 'queue-data'}\nruns: [{{name: a, config: {CONFIG}}}]\n")
    code, out, err = campaign(
        p, root / "queue.yaml", "--dry-run", minutes="60", env={**p.env, "ODEARCH_DATA": str(p.work / "env-data")}
    )
    ok = code == 0 and f"--data-dir {p.work / 'env-data'} " in out and not (root / "queue-data").exists()
    p.record(
        "campaign",
        "$ODEARCH_DATA and the queue's data_dir",
        "traceback" if "Traceback" in err else "ok" if ok else "wrong",
        out + err,
    )


def campaign_logs(p: Pass) -> None:
    """``--save-log``: a missing log, a log part of a run without a directory, a read-only run directory."""
    root = p.work / "q" / "logs"
    make_run(p, root / "b")
    (root / "queue.yaml").write_text(f"runs: [{{name: b, config: {CONFIG}}}]\n")
    before = snapshot(root)
    code, _, err = campaign(p, root / "queue.yaml", "--save-log", str(p.work / "none.log"), minutes="")
    judge(p, "campaign", "--save-log of a missing log", code, err, root, before, "campaign: error:")
    log = p.work / "campaign.log"
    log.write_text(
        "campaign: b (started): python -m odearch train --resume b\nepoch   1/1  train loss 2.3\n"
        "campaign: c (new): python -m odearch train --config c.yaml\nepoch   1 step 2/2  loss 2.3\n"
    )
    code, out, err = campaign(p, root / "queue.yaml", "--save-log", str(log), minutes="")
    ok = (
        code == 0
        and "c: no run directory" in err
        and not (root / "c").exists()
        and (root / "b" / "stretch1.log").is_file()
    )
    p.record(
        "campaign",
        "--save-log, a part of a run not there",
        "traceback" if "Traceback" in err else "ok" if ok else "wrong",
        out + err,
    )
    (root / "b" / "stretch1.log").unlink()
    before = snapshot(root)
    read_only(root / "b", True)
    try:
        code, _, err = campaign(p, root / "queue.yaml", "--save-log", str(log), minutes="")
    finally:
        read_only(root / "b", False)
    judge(p, "campaign", "--save-log into a read-only run", code, err, root, before, "campaign: error:")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _start_campaign(p: Pass, root: Path, epochs: int, ready: str) -> tuple[subprocess.Popen[str], Path]:
    """A real campaign (its own session, as a shell's job) of one tiny run of ``epochs``, returned once the run holds
    ``ready`` (or the campaign ended)."""
    root.mkdir(parents=True)
    args = [*TINY[: TINY.index("--epochs")], "--epochs", str(epochs), *TINY[TINY.index("--epochs") + 2 :]]
    (root / "queue.yaml").write_text(f"runs: [{{name: a, config: {CONFIG}, args: {json.dumps(args)}}}]\n")
    cmd = [
        sys.executable,
        str(CAMPAIGN),
        "--queue",
        str(root / "queue.yaml"),
        "--max-minutes",
        "10",
        "--data-dir",
        p.data_dir,
    ]
    proc = subprocess.Popen(
        cmd, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=p.work, start_new_session=True
    )
    deadline = time.monotonic() + TIMEOUT
    while not (root / "a" / ready).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc, root / "a"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def campaign_crash_before_checkpoint(p: Pass) -> None:
    """The machine dies (training process and campaign SIGKILLed) during a new run's first epoch; the campaign is
    started again: it must train the run to the end, not refuse it."""
    proc, run = _start_campaign(p, p.work / "q" / "crash", 1, "config.yaml")
    for pid in _children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.communicate()
    when = "after" if (run / "checkpoints" / "current").exists() else "before"
    code, out, err = campaign(p, run.parent / "queue.yaml", "--data-dir", p.data_dir, minutes="10")
    result = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
    name = "crash before the first checkpoint, restart"
    if code is None or "Traceback" in err:
        return p.record("campaign", name, "hang" if code is None else "traceback", err)
    ok = code == 0 and result.get("status") == "complete"
    p.record("campaign", name, "ok" if ok else "stuck", f"killed {when} the first checkpoint\n{out}{err}")


def campaign_stale_stopped(p: Pass) -> None:
    """A SIGKILL right after the final checkpoint became current leaves an earlier stop's result.json: the campaign
    must finish the run, then report it complete."""
    root = p.work / "q" / "stale"
    run = make_run(p, root / "a")
    done = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(
        json.dumps({**done, "status": "stopped", "stop_reason": "SIGTERM", "epochs_done": 0, "final_test_acc": None})
    )
    metrics = (run / "metrics.jsonl").read_bytes()
    (root / "queue.yaml").write_text(f"runs: [{{name: a, config: {CONFIG}}}]\n")
    code, out, err = campaign(p, root / "queue.yaml", "--data-dir", p.data_dir, minutes="10")
    code2, out2, err2 = campaign(p, root / "queue.yaml", minutes="10")
    result = json.loads((run / "result.json").read_text())
    name = "stale 'stopped' after the last checkpoint"
    if code is None or code2 is None or "Traceback" in err + err2:
        return p.record("campaign", name, "hang" if None in (code, code2) else "traceback", err + err2)
    if (run / "metrics.jsonl").read_bytes() != metrics:
        return p.record("campaign", name, "lost", "metrics.jsonl changed")
    ok = code == 0 and result.get("status") == "complete" and "campaign: a: complete" in out2
    p.record("campaign", name, "ok" if ok else "stuck", out + err + out2 + err2)


def campaign_signals(p: Pass) -> None:
    """Ctrl-C on a foreground campaign stops its run gracefully; ``kill -9`` of the campaign takes its run down (the
    run's lock released: a resume works)."""
    proc, run = _start_campaign(p, p.work / "q" / "ctrl-c", 40, "metrics.jsonl")
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the foreground process group
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return p.record("campaign", "Ctrl-C mid-run", "hang")
    result = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
    ok = proc.returncode == 130 and result.get("status") == "stopped"
    p.record("campaign", "Ctrl-C mid-run", "traceback" if "Traceback" in err else "ok" if ok else "stuck", err)
    proc, run = _start_campaign(p, p.work / "q" / "kill-9", 40, "metrics.jsonl")
    child = _children(proc.pid)
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 120
    while child and _alive(child[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    if child and _alive(child[0]):
        os.kill(child[0], signal.SIGKILL)  # the training process this script's campaign started
        return p.record("campaign", "kill -9 of the campaign mid-run", "stuck", "its run trained on, holding the lock")
    code, err = p.cli("train", "--resume", str(run), "--max-minutes", "0.01")
    p.record(
        "campaign",
        "kill -9 of the campaign mid-run",
        "traceback" if "Traceback" in err else "ok" if code == 0 else "stuck",
        err,
    )


def ship_faults(p: Pass) -> None:
    """A flipped byte in the final weights, a tag a pruned run names, ``--test-subset 0``."""
    run, reg = make_run(p, p.work / "s" / "flip"), p.work / "s" / "w-flip" / "registry.json"
    last = run / "checkpoints" / "current" / "last.safetensors"
    data = bytearray(last.read_bytes())
    data[-1] ^= 1  # one bit of one weight: still a valid safetensors file
    last.write_bytes(bytes(data))
    before = snapshot(run)
    code, err = p.cli(*ship_argv(p, run, reg, "--prune-checkpoints", "--force"))
    if judge(p, "ship", "flipped byte in last.safetensors", code, err, run, before) == "ok" and reg.exists():
        p.records[-1].update(outcome="lost", detail="refused, but the registry was written")
    first, second = make_run(p, p.work / "s" / "a", seed=1), make_run(p, p.work / "s" / "b", seed=1, lr=0.05)
    reg = p.work / "s" / "w" / "registry.json"
    assert p.cli(*ship_argv(p, first, reg, "--prune-checkpoints", "--force"))[0] == 0
    before = snapshot(reg.parent)
    code, err = p.cli(*ship_argv(p, second, reg, "--overwrite"))
    judge(p, "ship", "--overwrite of a tag a pruned run names", code, err, reg.parent, before)
    before = snapshot(second)
    code, err = p.cli(*ship_argv(p, second, p.work / "s" / "w0" / "registry.json")[:-4], "--test-subset", "0")
    judge(p, "ship", "--test-subset 0", code, err, second, before)


def prune_faults(p: Pass) -> None:
    """A prune of checkpoints git does not hold; a prune killed inside its deletion, then eval and a second prune."""
    repo = p.work / "s" / "repo"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    run, reg = make_run(p, repo / "runs" / "a"), repo / "w" / "registry.json"
    assert p.cli(*ship_argv(p, run, reg))[0] == 0
    before = snapshot(run)
    code, err = p.cli(*ship_argv(p, run, reg, "--prune-checkpoints"))
    judge(p, "prune", "checkpoints git does not hold", code, err, run, before)
    run, reg = make_run(p, p.work / "s" / "cut"), p.work / "s" / "w-cut" / "registry.json"
    assert p.cli(*ship_argv(p, run, reg))[0] == 0
    killed = subprocess.run([sys.executable, "-c", KILL_AT_THIRD_UNLINK, str(run), str(reg)], env=p.env)
    name = "prune killed mid-deletion, eval, prune again"
    if killed.returncode != -signal.SIGKILL:
        return p.record("prune", name, "ok", f"the prune ended with {killed.returncode} before its third deletion")
    code, err = p.cli(*eval_argv(p, run))
    code2, err2 = p.cli("ship", str(run), "--prune-checkpoints")
    code3, err3 = p.cli("ship", str(run), "--prune-checkpoints")
    errs = "\n".join([err, err2, err3])
    if None in (code, code2, code3) or "Traceback" in errs:
        return p.record("prune", name, "hang" if None in (code, code2, code3) else "traceback", errs)
    ok = code == code2 == code3 == 0 and not (run / "checkpoints").exists()
    p.record("prune", name, "ok" if ok else "stuck", errs)


def registry_faults(p: Pass) -> None:
    """The registry (a copy in a temp folder) a list, without ``weights``, with an entry without ``sha256``:
    ``odearch models`` still lists the models; ``eval`` of a broken entry is one line naming the file."""
    reg = p.work / "r" / "good" / "registry.json"
    assert p.cli(*ship_argv(p, make_run(p, p.work / "r" / "run"), reg))[0] == 0
    good = json.loads(reg.read_text())
    nosha = {
        **good,
        "weights": {
            **good["weights"],
            "resnet20.cifar10_s9": {k: v for k, v in good["weights"]["resnet20.cifar10_s0"].items() if k != "sha256"},
        },
    }
    cases = {
        "a list": ([], "resnet20.cifar10_s0"),
        "without weights": ({"format": good.get("format")}, "resnet20.cifar10_s0"),
        "entry without sha256": (nosha, "resnet20.cifar10_s9"),
    }
    for name, (content, tag) in cases.items():
        folder = p.work / "r" / name.replace(" ", "_")
        shutil.copytree(reg.parent, folder)
        (folder / "registry.json").write_text(json.dumps(content))
        env = {**p.env, "FAULT_REGISTRY": str(folder / "registry.json")}
        r = subprocess.run(
            [sys.executable, "-c", REGISTRY_MAIN, "models", "--pattern", "resnet20"],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        ok = r.returncode == 0 and "resnet20" in r.stdout and str(folder / "registry.json") in r.stderr
        p.record(
            "registry",
            f"registry {name}: odearch models",
            "traceback" if "Traceback" in r.stderr else "ok" if ok else "stuck",
            r.stderr,
        )
        code, err = p.cli(*eval_argv(p, tag), pre=["-c", REGISTRY_MAIN], env=env)
        if judge(p, "registry", f"registry {name}: eval {tag}", code, err) == "ok" and str(folder) not in err:
            p.records[-1]["outcome"] = "unclear"
        if name == "entry without sha256":
            code, err = p.cli(*eval_argv(p, "resnet20.cifar10_s0"), pre=["-c", REGISTRY_MAIN], env=env)
            p.record(
                "registry",
                f"registry {name}: eval of a good entry",
                "traceback" if "Traceback" in err else "ok" if code == 0 else "stuck",
                err,
            )


def report_run(root: Path, model: str, data_dir: str) -> Path:
    """A finished three-epoch run, written with the project's writers (config, metrics rows, result)."""
    from odearch.train import RunDir, TrainConfig

    run = RunDir(root)
    run.create(TrainConfig(model=model, epochs=3, data_dir=data_dir, out=str(root), amp="off"), overwrite=False)
    for e in (1, 2, 3):
        run.append_metrics(
            {
                "epoch": e,
                "step": 390 * e,
                "train_loss": 1.0 / e,
                "train_acc": 0.5,
                "test_loss": 1.0,
                "test_acc": 0.5 + 0.1 * e,
                "lr": 0.1,
                "seconds": 75.0,
                "images_per_s": 665.0,
                "lm_k": {},
                "git_commit": "a" * 40,
                "git_dirty": False,
                "device_name": "cpu",
                "amp_dtype": "float32",
            }
        )
    run.write_result({"status": "complete", "epochs_done": 3, "wall_seconds": 225.0, "device": "cpu"})
    return root


def _set_metric(run: Path, **change: Any) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[-1].update(change)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN as NaN, as Python writes


REPORT_DAMAGES: dict[str, Any] = {
    "result.json not JSON": lambda r: (r / "result.json").write_text('{"status": "compl'),
    "result.json a list": lambda r: (r / "result.json").write_text("[1, 2]"),
    "result wall_seconds NaN": lambda r: (r / "result.json").write_text(
        json.dumps({"status": "complete", "epochs_done": 3, "wall_seconds": math.nan})
    ),
    "config.yaml invalid": lambda r: (r / "config.yaml").write_text("model: [resnet20\n"),
    "config.yaml a list": lambda r: (r / "config.yaml").write_text("- model\n- resnet20\n"),
    "test_acc a string": lambda r: _set_metric(r, test_acc="0.9"),
    "seconds a string": lambda r: _set_metric(r, seconds="75"),
    "lm_k a list": lambda r: _set_metric(r, lm_k=[0.1, 0.2]),
    "test_acc NaN": lambda r: _set_metric(r, test_acc=math.nan),
}


def report_faults(p: Pass) -> None:
    """``odearch report`` over a folder with one damaged run: the report is written without it, one warning names
    it, no NaN is printed; a malformed queue.yaml is ignored with a warning."""
    for name, damage in [*REPORT_DAMAGES.items(), ("malformed queue.yaml", None)]:
        root = p.work / "rep" / name.replace(" ", "_").replace(".", "_")
        report_run(root / "resnet20_s0", "resnet20", p.data_dir)
        report_run(root / "damaged", "preact_resnet20", p.data_dir)
        if damage is None:
            (root / "queue.yaml").write_text("runs: [name: x\n")
        else:
            damage(root / "damaged")
        out = root.parent / f"{root.name}.md"
        code, err = p.cli("report", str(root), "--out", str(out))
        text = out.read_text() if out.is_file() else ""
        warned = [x for x in err.splitlines() if x.startswith("odearch: warning:")]
        named = any(str(root / ("queue.yaml" if damage is None else "damaged")) in x for x in warned)
        if code is None or "Traceback" in err:
            outcome = "hang" if code is None else "traceback"
        elif code != 0:
            outcome = "stuck"  # the whole report refused until a person repairs one run
        elif re.search(r"\bnan\b", text, re.IGNORECASE) or not named or (damage and "damaged" in text):
            outcome = "wrong"
        else:
            outcome = "ok"
        p.record("report", name, outcome, err)


def train_faults(p: Pass) -> None:
    """Bad ``odearch train`` inputs: refused in one line before anything is written; finished and pruned runs."""
    cases = {
        "--lr 3.5e38": ["--lr", "3.5e38"],
        "--lr 1e300": ["--lr", "1e300"],
        "--weight-decay 1e300": ["--weight-decay", "1e300"],
        "--num-classes 5 on cifar10": ["--num-classes", "5"],
        "--milestones -5": ["--milestones", "-5"],
        "--eval-subset 10**12": ["--eval-subset", str(10**12)],
    }
    for name, extra in cases.items():
        parent = p.work / "t" / re.sub(r"\W+", "_", name)
        parent.mkdir(parents=True)
        code, err = p.cli("train", *p.flags, "--epochs", "1", *extra, "--out", str(parent / "run"))
        judge(p, "train", name, code, err, parent, {})
    run = make_run(p, p.work / "t" / "finished")
    before = snapshot(run)
    code, err = p.cli("train", *p.flags, "--epochs", "1", "--out", str(run), "--overwrite")
    judge(p, "train", "--overwrite of a finished run", code, err, run, before)
    shutil.rmtree(run / "checkpoints")  # shipped and pruned
    (run / "shipped.json").write_text(json.dumps({"weights": "resnet20.cifar10_s9", "sha256": "0" * 64}))
    before = snapshot(run)
    code, err = p.cli("train", "--resume", str(run))
    if judge(p, "train", "--resume of a shipped, pruned run", code, err, run, before) == "ok" and "--overwrite" in err:
        p.records[-1].update(outcome="wrong", detail=err[-300:] + "\nadvises --overwrite on a finished run")


def eval_faults(p: Pass) -> None:
    """``eval RUN --dataset cifar100`` of a cifar10 run; euler-trained weights under rk2; a registry entry whose
    weights name another model."""
    run = make_run(p, p.work / "e" / "run")
    before = snapshot(run)
    code, err = p.cli(*eval_argv(p, run, "--dataset", "cifar100"))
    judge(p, "eval", "--dataset cifar100 of a cifar10 run", code, err, run, before)
    reg = p.work / "e" / "w" / "registry.json"
    assert p.cli(*ship_argv(p, make_run(p, p.work / "e" / "preact", model="preact_resnet20"), reg))[0] == 0
    env = {**p.env, "FAULT_REGISTRY": str(reg)}
    code, err = p.cli(pre=["-c", OTHER_SCHEME], env=env)
    judge(p, "eval", "create_model(pretrained=True, scheme='rk2')", code, err)
    data = json.loads(reg.read_text())
    entry = data["weights"].pop("preact_resnet20.cifar10_s0")
    data["weights"]["rk2_resnet20.cifar10_s0"] = {**entry, "model": "rk2_resnet20"}  # same tensors, other net
    reg.write_text(json.dumps(data))
    code, err = p.cli(*eval_argv(p, "rk2_resnet20.cifar10_s0"), pre=["-c", REGISTRY_MAIN], env=env)
    judge(p, "eval", "registry entry naming another model", code, err)


def issue30(p: Pass) -> None:
    """The issue-30 group: no training but a few tiny campaign runs."""
    for group in (
        campaign_queues,
        campaign_end_and_data,
        campaign_logs,
        campaign_stale_stopped,
        campaign_crash_before_checkpoint,
        campaign_signals,
        ship_faults,
        prune_faults,
        registry_faults,
        report_faults,
        train_faults,
        eval_faults,
    ):
        group(p)


# -------------------------------------------------------------------------------------------------------- main
def issue15(p: Pass, args: argparse.Namespace, rng: random.Random) -> None:
    """The issue-15 group: kills, full disks, corrupted and malicious files, concurrency, bad inputs, SIGTERM."""
    ref, ref3, one = p.work / "ref", p.work / "ref3", p.work / "one"
    assert p.train(ref, "--epochs", "2") == 0 and p.train(ref3, "--epochs", "3") == 0
    assert p.train(one, "--epochs", "1") == 0
    kills_in_save(p, ref3, one, "kill", range(args.save_ops))
    kills_in_save(p, ref3, one, "enospc", range(0, args.save_ops, args.enospc_step))
    kills_at_random(p, ref3, args.random_kills, rng)
    corrupted(p, ref, rng, args.flips)
    malicious(p, ref)
    crafted_states(p, ref)
    bad_metrics(p, ref)
    concurrency(p, ref)
    bad_inputs(p)
    sigterm(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "faults.json")
    ap.add_argument(
        "--surfaces",
        choices=("all", "issue15", "issue30"),
        default="all",
        help="issue15: checkpoints, kills, files, inputs of a run; issue30: the campaign, ship / prune, "
        "the registry, report, train and eval inputs (a few minutes); all: both",
    )
    ap.add_argument("--random-kills", type=int, default=6)
    ap.add_argument("--save-ops", type=int, default=12, help="kill before each of the first N operations of a save")
    ap.add_argument("--enospc-step", type=int, default=1, help="fail every K-th fsync with ENOSPC (1: each one)")
    ap.add_argument(
        "--flips",
        type=int,
        default=24,
        help="byte flips in last.safetensors (a third as many in the state and best files)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t0 = time.time()
    commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))
    with tempfile.TemporaryDirectory(prefix="odearch-faults-") as tmp:
        p = Pass(args.data_dir, Path(tmp))
        if args.surfaces in ("all", "issue15"):
            issue15(p, args, rng)
        if args.surfaces in ("all", "issue30"):
            issue30(p)
        records = p.records
    summary = _summary(records)
    out = {
        "command": " ".join([sys.executable, *sys.argv]),
        "git_commit": commit,
        "git_dirty": dirty,
        "device": _cpu(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": args.seed,
        "surfaces": args.surfaces,
        "wall_seconds": round(time.time() - t0, 1),
        "summary": summary,
        "faults": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


def _summary(records: list[dict[str, Any]]) -> dict[str, int]:
    count = lambda o: sum(r["outcome"] == o for r in records)  # noqa: E731
    return {
        "faults_tried": len(records),
        "ok_clean": count("ok"),
        "tracebacks": count("traceback"),
        "hangs": count("hang"),
        "runs_lost": count("lost"),
        "stuck_until_repaired": count("stuck"),
        "silently_wrong": count("wrong"),
        "refused_without_error_line": count("unclear"),
        "code_executed_from_untrusted_files": count("executed"),
        "accepted_bad_input": count("accepted"),
        "enospc_unnamed": count("unnamed"),
    }


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
