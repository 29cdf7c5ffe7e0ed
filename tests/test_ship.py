"""``odearch ship`` and the shipped weights under faults (issue 30): damaged checkpoints, tag collisions, prunes that
git cannot undo or that a kill cuts short, other registries, other schemes, mismatched metadata, broken registries.

The runs here are not trained: :func:`make_run` writes a finished one-epoch run directory with the trainer's own
checkpoint writer (:func:`odearch.train.state.save_checkpoint`), so each test costs a model build and an evaluation
of a few test images.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import odearch
from conftest import error_line
from datapaths import CIFAR_ROOT, HAS_CIFAR, REPO, SKIP_REASON
from odearch.cli import main
from odearch.models import _pretrained
from odearch.models._pretrained import PretrainedError, read_registry
from odearch.train import RunDir, TrainConfig, config_hash
from odearch.train.ship import ShipError, default_tag, prune_checkpoints, ship_run
from odearch.train.state import Progress, build_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
needs_cifar = pytest.mark.skipif(not HAS_CIFAR, reason=SKIP_REASON)
N = 20  # test images per evaluation


def make_run(root: Path, model: str = "resnet20", seed: int = 0, **options: Any) -> Path:
    """A finished one-epoch run of ``model`` (untrained weights, saved as the trainer saves them)."""
    precision = {"bf16": "bfloat16", "fp16": "float16"}.get(options.get("amp", "off"), "float32")
    cfg = TrainConfig(
        model=model,
        seed=seed,
        epochs=1,
        subset=128,
        eval_subset=100,
        batch_size=64,
        data_dir=str(CIFAR_ROOT),
        download=False,
        device="cpu",
        tensorboard=False,
        out=str(root),
        **{"amp": "off", **options},
    )
    run = RunDir(root)
    run.create(cfg, overwrite=False)
    torch.manual_seed(seed)
    net = build_model(cfg)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    prog = Progress(step=2, epoch=1, best={"acc": 0.1, "epoch": 1, "on": "test"}, amp_dtype=precision)
    row = {"epoch": 1, "test_acc": 0.1, "git_commit": "0" * 40, "git_dirty": False, "amp_dtype": precision}
    save_checkpoint(run, cfg, net, opt, None, prog, best=True, row=row)
    run.append_metrics(row)
    run.write_result(
        {
            "status": "complete",
            "epochs_done": 1,
            "config_hash": config_hash(cfg),
            "amp": cfg.amp,
            "amp_dtype": precision,
            "train_images": 128,
            "git_commit": "0" * 40,
            "device": "cpu",
        }
    )
    return root


def ship(run: Path, reg: Path, *extra: str) -> list[str]:
    """The argv of ``odearch ship RUN`` into ``reg`` on a few test images."""
    return [
        "ship",
        str(run),
        "--registry",
        str(reg),
        "--any-recipe",
        "--test-subset",
        str(N),
        "--data-dir",
        str(CIFAR_ROOT),
        *extra,
    ]


def evaluate(target: Path | str, *extra: str) -> list[str]:
    return ["eval", str(target), "--data-dir", str(CIFAR_ROOT), "--subset", str(N), "--json", "-", *extra]


def eval_json(capsys: pytest.CaptureFixture[str], note: str = "") -> dict[str, Any]:
    """The numbers ``odearch eval ... --json -`` printed (loss, accuracy, per class), after checking that its stderr
    holds ``note``."""
    out, err = capsys.readouterr()
    assert note in err
    res = json.loads(out[out.index("{\n") :])
    return {k: res[k] for k in ("test_acc", "test_loss", "per_class_acc", "epoch", "test_images")}


def files_of(run: Path) -> dict[str, bytes]:
    ck = run / "checkpoints"
    return {str(p.relative_to(run)): p.read_bytes() for p in ck.rglob("*") if p.is_file() and not p.is_symlink()}


# --------------------------------------------------------------------------------- 1: damaged final weights
@needs_cifar
def test_ship_verifies_the_checkpoint_manifest_before_copying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A byte flipped in checkpoints/current/last.safetensors (which eval and --resume refuse) is not shipped, and
    --prune-checkpoints keeps the manifest that proves the damage."""
    run, reg = make_run(tmp_path / "run"), tmp_path / "w" / "registry.json"
    last = run / "checkpoints" / "current" / "last.safetensors"
    data = bytearray(last.read_bytes())
    data[-1] ^= 1  # one bit of one weight: still a valid safetensors file
    last.write_bytes(bytes(data))
    before = files_of(run)
    assert main(ship(run, reg, "--prune-checkpoints", "--force")) == 1
    assert "checksum mismatch" in error_line(capsys)
    assert not reg.exists() and files_of(run) == before
    with pytest.raises(ShipError, match=r"not shipping .*checksum mismatch"):
        ship_run(run, registry=reg, any_recipe=True, test_subset=N)
    assert main(evaluate(run)) == 1 and "checksum mismatch" in error_line(capsys)  # as eval says


# --------------------------------------------------------------------------------- 2: tags and collisions
def _tensors(model: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return odearch.create_model(model).state_dict()


def test_default_tags_set_the_recipes_of_a_model_and_seed_apart() -> None:
    rows = [{"epoch": 1, "amp_dtype": "float32"}]
    lm, plain = _tensors("lm_resnet20"), _tensors("preact_resnet20")
    tag = lambda model, t, rows=rows, result=None, **kw: default_tag(  # noqa: E731
        TrainConfig(model=model, seed=1, **kw), result or {}, rows, t
    )
    assert tag("lm_resnet20", lm) == "cifar10_s1"  # the paper recipe: decay on kappa, fp32
    assert tag("lm_resnet20", lm, lm_weight_decay="none") == "cifar10_nokdecay_s1"
    assert tag("lm_resnet20", lm, lm_weight_decay="k") == "cifar10_kdecay_s1"
    bf16 = [{"epoch": 1, "amp_dtype": "bfloat16"}]
    assert tag("lm_resnet20", lm, bf16, lm_weight_decay="none", amp="bf16") == "cifar10_nokdecay_bf16_s1"
    assert tag("preact_resnet20", plain, bf16, amp="bf16") == "cifar10_bf16_s1"
    assert tag("preact_resnet20", plain, lm_weight_decay="k") == "cifar10_s1"  # no k_n: the decay on them is moot
    old = [{"epoch": 1}]  # a run from before the precision was recorded: amp and the device say it
    assert tag("preact_resnet20", plain, old, {"device": "cuda:0"}, amp="auto") == "cifar10_bf16_s1"
    assert tag("preact_resnet20", plain, old, {"device": "cpu"}, amp="auto") == "cifar10_s1"
    assert tag("preact_resnet20", plain, dataset="cifar100") == "cifar100_s1"


def test_the_shipped_weights_keep_their_tags_under_the_default_rule() -> None:
    """Every shipped entry whose run is in this repository gets its own tag back from :func:`default_tag`."""
    checked = 0
    for name, entry in read_registry().items():
        run = RunDir(REPO / entry["run"])
        if not run.config.is_file() or not run.result.is_file():
            continue
        cfg, result, rows = run.read_config(), run.read_result(), run.read_metrics()
        assert f"{cfg.model}.{default_tag(cfg, result, rows, _tensors(cfg.model))}" == name
        checked += 1
    if not checked:
        pytest.skip("no shipped run directory in this checkout")


@needs_cifar
def test_a_tag_that_a_pruned_run_names_is_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ship --overwrite`` (which the refusal suggests) must not replace the only copy of a pruned run's weights."""
    reg = tmp_path / "w" / "registry.json"
    monkeypatch.setattr(_pretrained, "REGISTRY_FILE", reg)
    first, second = make_run(tmp_path / "a", seed=1), make_run(tmp_path / "b", seed=1, lr=0.05)
    assert main(ship(first, reg, "--prune-checkpoints", "--force")) == 0
    shipped = (reg.parent / "resnet20.cifar10_s1.safetensors.xz").read_bytes()
    capsys.readouterr()
    assert main(ship(second, reg)) == 1  # the same default tag: refused, naming the run it belongs to
    line = error_line(capsys)
    assert f"another run, {first}" in line and "shipped.json names it" in line and "--tag" in line
    assert main(ship(second, reg, "--overwrite")) == 1
    assert "only copy" in error_line(capsys)
    assert (reg.parent / "resnet20.cifar10_s1.safetensors.xz").read_bytes() == shipped
    model = odearch.create_model("resnet20.cifar10_s1", pretrained=True)
    assert model.pretrained_cfg["run"] == str(first)
    assert main(ship(second, reg, "--tag", "cifar10_lr005_s1")) == 0  # under its own tag it ships
    assert list(read_registry(reg)) == ["resnet20.cifar10_s1", "resnet20.cifar10_lr005_s1"]


@needs_cifar
def test_overwrite_replaces_only_weights_that_still_exist_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "w" / "registry.json"
    first, second = make_run(tmp_path / "a", seed=2), make_run(tmp_path / "b", seed=2, lr=0.05)
    assert main(ship(first, reg)) == 0
    assert main(ship(first, reg)) == 1 and "shipped from this run; pass --overwrite" in error_line(capsys)
    assert main(ship(first, reg, "--overwrite")) == 0  # re-shipping a run
    assert main(ship(second, reg)) == 1 and f"shipped from another run, {first}" in error_line(capsys)
    assert main(ship(second, reg, "--overwrite")) == 0  # the first run still holds those weights
    assert read_registry(reg)["resnet20.cifar10_s2"]["run"] == str(second)
    (second / "checkpoints" / "current" / "last.safetensors").unlink()  # now the shipped file is their only copy
    assert main(ship(first, reg, "--overwrite")) == 1 and "only copy" in error_line(capsys)


# --------------------------------------------------------------------------------- 3: what git holds
def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.mark.slow
@needs_cifar
def test_prune_refuses_checkpoints_that_git_does_not_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README promises the deleted checkpoints stay in the repository history: without a commit of every one
    of them, unchanged, the prune is refused (``--force`` deletes them, saying which are lost)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    run, reg = make_run(repo / "runs" / "a"), repo / "w" / "registry.json"
    assert main(ship(run, reg)) == 0
    before = files_of(run)
    assert main(ship(run, reg, "--prune-checkpoints")) == 1
    line = error_line(capsys)
    assert "git's HEAD does not hold 4 of its 4 checkpoint files" in line and "--force" in line
    assert files_of(run) == before and not (run / "shipped.json").exists()
    _git(repo, "add", "runs")
    _git(repo, "commit", "-q", "-m", "run a")
    state = next(p for p in (run / "checkpoints").rglob("last.state.pt") if not p.is_symlink())
    state.write_bytes(state.read_bytes() + b"\0")  # committed, but changed since
    with pytest.raises(ShipError, match=r"does not hold 1 of its 4 checkpoint files unchanged \(checkpoints/gen-"):
        prune_checkpoints(run, reg)
    _git(repo, "checkout", "--", "runs")
    monkeypatch.chdir(repo)  # the run named relative to the working directory, as `odearch ship results/...` does
    assert main(ship(Path("runs/a"), reg, "--prune-checkpoints")) == 0
    assert "deleted 4 checkpoint files" in capsys.readouterr().out
    assert "not_in_git" not in json.loads((run / "shipped.json").read_text())

    other = make_run(repo / "runs" / "b", seed=3)  # never committed: --force deletes it, naming what is lost
    assert main(ship(other, reg, "--prune-checkpoints", "--force")) == 0
    err = capsys.readouterr().err
    assert "--force: 4 of them were not in git's HEAD and are lost: checkpoints/gen-" in err
    assert len(json.loads((other / "shipped.json").read_text())["not_in_git"]) == 4


# --------------------------------------------------------------------------------- 7, 10: kills and registries
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


class _Crash(BaseException):
    """A crash inside the deletion that no handler catches (in-process stand-in for SIGKILL)."""


def _prune_and_die(run: Path, reg: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prunes ``run`` and dies at the third file deleted: SIGKILL in a subprocess, or an uncaught crash here."""
    if how == "sigkill":
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", KILL_AT_THIRD_UNLINK, str(run), str(reg)], env=env)
        assert proc.returncode == -signal.SIGKILL
        return
    unlink, count = os.unlink, [0]

    def dying_unlink(*args: Any, **kwargs: Any) -> None:
        count[0] += 1
        if count[0] == 3:
            raise _Crash
        unlink(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "unlink", dying_unlink)
        with pytest.raises(_Crash):
            prune_checkpoints(run, reg, force=True)


@needs_cifar
@pytest.mark.parametrize("how", ["crash", pytest.param("sigkill", marks=pytest.mark.slow)])
def test_a_prune_killed_while_deleting_is_readable_and_completed(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed inside the deletion: ``eval`` reads the shipped copy, a second prune finishes, a third says so."""
    run, reg = make_run(tmp_path / "run"), tmp_path / "w" / "registry.json"
    assert main(ship(run, reg)) == 0
    assert main(evaluate(run)) == 0
    whole = eval_json(capsys)
    _prune_and_die(run, reg, how, monkeypatch)
    record = json.loads((run / "shipped.json").read_text())
    assert record["registry"] == str(reg.resolve()) and len(record["deleted"]) == 4
    assert (run / "checkpoints").is_dir()  # half pruned
    assert main(evaluate(run)) == 0 and eval_json(capsys, "pruned after shipping") == whole
    assert main(evaluate(run, "--checkpoint", "best")) == 1 and "git log" in error_line(capsys)
    assert main(["ship", str(run), "--prune-checkpoints"]) == 0  # no --registry: shipped.json names it
    assert "completed a prune that was cut short" in capsys.readouterr().out
    assert not (run / "checkpoints").exists()
    assert main(["ship", str(run), "--prune-checkpoints"]) == 0
    assert "already shipped as resnet20.cifar10_s0 and pruned" in capsys.readouterr().out
    assert main(evaluate(run)) == 0 and eval_json(capsys) == whole


@needs_cifar
def test_eval_of_a_run_pruned_into_another_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ship --registry X --prune-checkpoints``: shipped.json records X, and ``eval RUN`` reads the weights there."""
    run, reg = make_run(tmp_path / "run"), tmp_path / "w" / "registry.json"
    assert main(evaluate(run)) == 0
    before = eval_json(capsys)
    assert main(ship(run, reg, "--prune-checkpoints", "--force")) == 0
    assert json.loads((run / "shipped.json").read_text())["registry"] == str(reg.resolve())
    capsys.readouterr()
    assert main(evaluate(run)) == 0
    assert eval_json(capsys, str(reg.parent / "resnet20.cifar10_s0.safetensors.xz")) == before
    reg.write_text(json.dumps({"format": _pretrained.FORMAT, "weights": {}}))
    assert main(evaluate(run)) == 1 and f"which {reg} does not list; restore {reg}" in error_line(capsys)


# --------------------------------------------------------------------------------- 13, 16: which network
@pytest.fixture()
def preact_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A preact_resnet20 run (euler) shipped into a registry in a temp folder, which the package then reads."""
    if not HAS_CIFAR:
        pytest.skip(SKIP_REASON)
    reg = tmp_path / "w" / "registry.json"
    monkeypatch.setattr(_pretrained, "REGISTRY_FILE", reg)
    ship_run(
        make_run(tmp_path / "run", model="preact_resnet20"),
        registry=reg,
        any_recipe=True,
        test_subset=N,
        data_dir=CIFAR_ROOT,
    )
    return reg


@pytest.mark.parametrize("scheme", ["rk2", "rk4", "ab2"])
def test_pretrained_weights_refuse_another_scheme_without_opting_in(preact_registry: Path, scheme: str) -> None:
    """Euler-trained weights under rk2 / rk4 / ab2 are another network (same tensors, another function)."""
    with pytest.raises(PretrainedError, match=rf"trained with scheme euler; scheme='{scheme}' .*allow_scheme_change"):
        odearch.create_model("preact_resnet20", pretrained=True, scheme=scheme)
    model = odearch.create_model("preact_resnet20", pretrained=True, scheme=scheme, allow_scheme_change=True)
    assert model.pretrained_cfg["scheme_change"] == {"trained": "euler", "loaded_as": scheme}
    same = odearch.create_model("preact_resnet20", pretrained=True, scheme="euler")  # the scheme they trained in
    assert "scheme_change" not in same.pretrained_cfg
    assert "scheme_change" not in odearch.create_model("preact_resnet20", pretrained=True).pretrained_cfg
    with pytest.raises(ValueError, match="pretrained=True"):
        odearch.create_model("preact_resnet20", scheme=scheme, allow_scheme_change=True)


def test_eval_of_shipped_weights_checks_the_model_in_their_metadata(
    preact_registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry whose file holds another model's weights (here: preact_resnet20 weights listed as rk2_resnet20,
    which has the same tensors) is refused by eval and create_model, not evaluated as what the file says."""
    data = json.loads(preact_registry.read_text())
    entry = data["weights"].pop("preact_resnet20.cifar10_s0")
    data["weights"]["rk2_resnet20.cifar10_s0"] = {**entry, "model": "rk2_resnet20"}
    preact_registry.write_text(json.dumps(data))
    assert main(evaluate("rk2_resnet20.cifar10_s0")) == 1
    line = error_line(capsys)
    assert "holds weights of model 'preact_resnet20' (its metadata)" in line and "'rk2_resnet20'" in line
    with pytest.raises(PretrainedError, match="holds weights of model 'preact_resnet20'"):
        odearch.create_model("rk2_resnet20", pretrained=True)


# --------------------------------------------------------------------------------- 15: flags that did nothing
def test_flags_that_would_be_ignored_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, reg = make_run(tmp_path / "run"), tmp_path / "w" / "registry.json"
    assert main([*ship(run, reg)[:-4], "--test-subset", "0"]) == 2  # was: all 10000 images, silently
    assert "--test-subset: must be a positive number of test images, got 0" in error_line(capsys)
    with pytest.raises(ShipError, match="positive number of test images"):
        ship_run(run, registry=reg, any_recipe=True, test_subset=0)
    assert main(evaluate(run, "--dataset", "cifar100")) == 2  # was: evaluated on cifar10, silently
    assert f"--dataset cifar100: {run} is a run of resnet20 on cifar10" in error_line(capsys)
    assert main(evaluate(run, "--model", "preact_resnet20")) == 2
    assert "drop --model" in error_line(capsys)
    weights = run / "checkpoints" / "last.safetensors"
    assert main(evaluate(weights, "--model", "preact_resnet20")) == 2  # names the file's real model
    assert f"--model preact_resnet20: {weights} holds weights of model 'resnet20' (its metadata)" in error_line(capsys)
    assert main(evaluate(weights, "--dataset", "cifar100")) == 2
    assert "trained on cifar10 (its metadata)" in error_line(capsys)
    assert main(["ship", str(run), "--force"]) == 1 and "--prune-checkpoints" in error_line(capsys)
    assert not reg.exists()


# --------------------------------------------------------------------------------- damaged registries
BROKEN = {
    "a list": [],
    "no weights": {"format": _pretrained.FORMAT},
    "bad JSON": "{",
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_registry_is_one_line_and_unrelated_commands_work(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "registry.json"
    reg.write_text(BROKEN[kind] if isinstance(BROKEN[kind], str) else json.dumps(BROKEN[kind]))
    monkeypatch.setattr(_pretrained, "REGISTRY_FILE", reg)
    assert main(["models", "--pattern", "resnet20"]) == 0  # the models, without the weights it cannot read
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split()[0] == "resnet20" and f"odearch: warning: {reg}: " in err
    assert main(["eval", "resnet20.cifar10_s0"]) == 1
    assert str(reg) in error_line(capsys)
    with pytest.raises(PretrainedError, match=re.escape(str(reg))):
        odearch.create_model("resnet20", pretrained=True)
    run = make_run(tmp_path / "run")
    with pytest.raises(ShipError, match=f"damaged registry: {re.escape(str(reg))}"):
        ship_run(run, registry=reg, any_recipe=True, test_subset=N)
    if HAS_CIFAR:  # a run of its own does not read the registry
        assert main(evaluate(run)) == 0


@needs_cifar
def test_a_malformed_entry_spoils_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "w" / "registry.json"
    monkeypatch.setattr(_pretrained, "REGISTRY_FILE", reg)
    ship_run(make_run(tmp_path / "run"), registry=reg, any_recipe=True, test_subset=N, data_dir=CIFAR_ROOT)
    data = json.loads(reg.read_text())
    good = data["weights"]["resnet20.cifar10_s0"]
    data["weights"]["resnet20.cifar10_s9"] = {k: v for k, v in good.items() if k != "sha256"}
    data["weights"]["lm_resnet20.cifar10_s0"] = "not an entry"
    reg.write_text(json.dumps(data))
    assert main(["models", "--pattern", "*resnet20"]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:]}
    assert rows["resnet20"] == "cifar10_s0" and rows["lm_resnet20"] == "-"
    assert f"{reg}: entry 'resnet20.cifar10_s9' is malformed (no 'sha256') and is ignored" in err
    assert f"{reg}: entry 'lm_resnet20.cifar10_s0' is malformed (the entry is a str" in err
    assert main(evaluate("resnet20.cifar10_s0")) == 0  # the good entry still works
    capsys.readouterr()
    assert main(evaluate("resnet20.cifar10_s9")) == 1
    assert f"{reg}: the entry 'resnet20.cifar10_s9' is malformed (no 'sha256')" in error_line(capsys)
    with pytest.raises(PretrainedError, match=r"'lm_resnet20\.cifar10_s0' is malformed"):
        odearch.create_model("lm_resnet20", pretrained=True)
    assert odearch.create_model("resnet20", pretrained=True).pretrained_cfg["name"] == "resnet20.cifar10_s0"
    with pytest.raises(ShipError, match="damaged registry"):  # a ship rewrites the file: it would drop them
        ship_run(make_run(tmp_path / "other", seed=4), registry=reg, any_recipe=True, test_subset=N)
