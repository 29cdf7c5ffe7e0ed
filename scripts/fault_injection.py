"""A fault-injection pass on the ``odearch`` CLI (issue 15): kills, full disks, corrupted and malicious files,
concurrent writers, bad inputs; each fault is classified and the totals written as JSON.

    PYTHONPATH=src python scripts/fault_injection.py --data-dir /work/shared/data --out results/bench/faults.json

Outcome of each fault: ``ok`` (the CLI did what it should: succeeded, or refused with a one-line ``odearch: error``),
``traceback`` (a Python traceback reached stderr), ``hang`` (no exit within the time limit), ``lost`` (the run could
not be resumed afterwards, or the resumed weights differ from an uninterrupted run's), ``executed`` (code from an
untrusted file ran: its marker file appeared). Tiny runs: resnet20, 128 images, 2 steps per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
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
        self.flags = ["--model", "resnet20", "--subset", "128", "--batch-size", "64", "--eval-subset", "100",
                      "--device", "cpu", "--data-dir", data_dir, "--no-download", "--no-tensorboard"]  # fmt: skip

    def cli(self, *args: str, pre: list[str] | None = None, timeout: float = TIMEOUT) -> tuple[int | None, str]:
        cmd = [sys.executable, *(pre or ["-m", "odearch"]), *args]
        try:
            r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.work)
        except subprocess.TimeoutExpired:
            return None, ""
        return r.returncode, r.stderr

    def record(self, kind: str, name: str, outcome: str, detail: str = "") -> None:
        self.records.append({"kind": kind, "fault": name, "outcome": outcome, "detail": detail[-300:]})
        print(f"{kind:<12} {name:<40} {outcome:<10} {detail.strip().splitlines()[-1][:100] if detail else ''}",
              flush=True)  # fmt: skip

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
        proc = subprocess.Popen([sys.executable, "-m", "odearch", "train", *p.flags, "--epochs", "3", "--out",
                                 str(run)], env=p.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
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
            args = ["eval", str(run), "--checkpoint", "best", "--subset", "10"] if name.startswith("best") else [
                "train", "--resume", str(run), "--epochs", "4"]  # fmt: skip
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
    code, err = p.cli("train", "--model", "resnet20", "--data-dir", str(data.parent), "--no-download", "--out",
                      str(p.work / "evil-run"), "--device", "cpu")  # fmt: skip
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
    damages = {"no optimizer": lambda s: s.pop("optimizer"), "epoch as str": lambda s: s.update(epoch="2"),
               "rng int": lambda s: s.update(rng={"torch": 1}), "best list": lambda s: s.update(best=[]),
               "partial None": lambda s: s.update(partial=None), "no step": lambda s: s.pop("step"),
               "param_groups int": lambda s: s["optimizer"].update(param_groups=7)}  # fmt: skip
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
    p.record("metrics", "analyze, unterminated last line", "ok" if code in (0, 2) and "Traceback" not in err and (
        code == 0 or err.strip().startswith("odearch analyze: error")) else "traceback", err)  # fmt: skip


def concurrency(p: Pass, ref: Path) -> None:
    run = p.work / "conc"
    shutil.copytree(ref, run, symlinks=True)
    cmd = [sys.executable, "-m", "odearch", "train", "--resume", str(run), "--epochs", "4"]
    procs = [subprocess.Popen(cmd, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [pr.communicate(timeout=TIMEOUT)[1] for pr in procs]
    rows = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    ok = sorted(pr.returncode for pr in procs) == [0, 1] and rows == [1, 2, 3, 4]
    p.record("concurrent", "two --resume at once", "ok" if ok else "lost", " | ".join(outs))
    run2 = p.work / "conc2"
    proc = subprocess.Popen([sys.executable, "-m", "odearch", "train", *p.flags, "--epochs", "20", "--out",
                             str(run2)], env=p.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    while not (run2 / "metrics.jsonl").exists():
        time.sleep(0.1)
    code, err = p.cli("train", *p.flags, "--out", str(run2), "--epochs", "1", "--overwrite")
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    p.refused("concurrent", "--overwrite while a run writes", code, err)


def bad_inputs(p: Pass) -> None:
    cases = {"lr nan": ["--lr=nan"], "lr inf": ["--lr=inf"], "seed 2**64": ["--seed", str(2**64)],
             "subset 10**6": ["--subset", "1000000"], "momentum nan": ["--momentum=nan"],
             "dist-timeout 0": ["--dist-timeout", "0"]}  # fmt: skip
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
    proc = subprocess.Popen([sys.executable, "-m", "odearch", "train", *p.flags, "--subset", "1024", "--epochs", "30",
                             "--out", str(run)], env=p.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
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


# -------------------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "faults.json")
    ap.add_argument("--random-kills", type=int, default=6)
    ap.add_argument("--save-ops", type=int, default=12, help="kill before each of the first N operations of a save")
    ap.add_argument("--enospc-step", type=int, default=1, help="fail every K-th fsync with ENOSPC (1: each one)")
    ap.add_argument("--flips", type=int, default=24, help="byte flips in last.safetensors (a third as many in the "
                                                             "state and best files)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t0 = time.time()
    commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))
    with tempfile.TemporaryDirectory(prefix="odearch-faults-") as tmp:
        p = Pass(args.data_dir, Path(tmp))
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
        records = p.records
    summary = _summary(records)
    out = {"command": " ".join([sys.executable, *sys.argv]), "git_commit": commit, "git_dirty": dirty, "device": _cpu(),
           "torch": torch.__version__, "python": platform.python_version(), "seed": args.seed,
           "wall_seconds": round(time.time() - t0, 1), "summary": summary, "faults": records}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


def _summary(records: list[dict[str, Any]]) -> dict[str, int]:
    count = lambda o: sum(r["outcome"] == o for r in records)  # noqa: E731
    return {"faults_tried": len(records), "ok_clean": count("ok"), "tracebacks": count("traceback"),
            "hangs": count("hang"), "runs_lost": count("lost"), "code_executed_from_untrusted_files": count("executed"),
            "accepted_bad_input": count("accepted"), "enospc_unnamed": count("unnamed")}  # fmt: skip


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
