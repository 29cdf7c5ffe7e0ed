"""Compact weights of bf16 runs (:mod:`odearch.train.compact`): ``odearch ship`` stores the convolution and linear
weights in bf16, and the net computes bitwise the same logits under bf16 autocast as its fp32 master weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import error_line
from datapaths import CIFAR_ROOT, HAS_CIFAR, SKIP_REASON
from odearch.cli import main
from odearch.models import create_model
from odearch.models._pretrained import read_registry
from odearch.train import compact
from odearch.train.checkpoint import load_weights
from odearch.train.ship import ShipError, compact_shipped, ship_run
from test_ship import N, eval_json, evaluate, make_run, ship

pytestmark = pytest.mark.usefixtures("one_thread")
needs_cifar = pytest.mark.skipif(not HAS_CIFAR, reason=SKIP_REASON)


def _logits(net: torch.nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return net.eval()(x)


def test_compact_state_casts_exactly_what_autocast_casts() -> None:
    """Convolutions and the classifier in bf16; BatchNorm, k_n and the counters untouched; the rounded net gives
    the master's logits bit for bit under bf16 autocast and different ones in fp32 (so the rounding happened)."""
    torch.manual_seed(0)
    net = create_model("lm_resnet20")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("lm_k"):
                p.fill_(0.3)  # away from the init, to see that k_n keeps every bit
    state = compact.compact_state(net, torch.bfloat16)
    cast = {k for k, v in state.items() if v.dtype == torch.bfloat16}
    convs = {k for k, v in net.state_dict().items() if v.dim() == 4}
    assert cast == convs | {"head.4.weight", "head.4.bias"} and len(convs) == 21  # 19 + 2 projection shortcuts
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items() if k not in cast)
    assert any(k.endswith("lm_k") for k in state) and not any(k.endswith("lm_k") for k in cast)
    rounded = compact.rounded_copy(net, torch.bfloat16)
    assert all(torch.equal(rounded.state_dict()[k], state[k].float()) for k in cast)
    x = torch.randn(8, 3, 32, 32)
    assert torch.equal(_logits(net, x, bf16=True), _logits(rounded, x, bf16=True))
    assert not torch.equal(_logits(net, x, bf16=False), _logits(rounded, x, bf16=False))
    loader = [(x, torch.zeros(8, dtype=torch.long))]
    assert compact.autocast_mismatches(net, rounded, loader, torch.bfloat16)[0] == 0
    assert compact.autocast_mismatches(net, create_model("lm_resnet20"), loader, torch.bfloat16)[0] == 1


@needs_cifar
def test_a_bf16_run_ships_compact_and_prunes_to_the_same_net(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Half the bytes; the entry names the master weights it came from; ``eval RUN --amp bf16`` reads the same
    numbers before shipping and after the prune; a second ship finds the run already shipped."""
    run, reg = make_run(tmp_path / "run", model="lm_resnet20", amp="bf16"), tmp_path / "w" / "registry.json"
    last = run / "checkpoints" / "last.safetensors"
    master = hashlib.sha256(last.read_bytes()).hexdigest()
    assert main(evaluate(run, "--amp", "bf16")) == 0
    before = eval_json(capsys)
    assert main(ship(run, reg)) == 0
    out = capsys.readouterr().out
    assert "bitwise the master weights' logits" in out and f"/{N}" in out
    ((name, entry),) = read_registry(reg).items()
    file = reg.parent / entry["file"]
    assert name == "lm_resnet20.cifar10_bf16_s0" and entry["final_weights_sha256"] == master != entry["sha256"]
    assert entry["stored"]["dtype"] == "bfloat16" and entry["stored"]["autocast_test_images"] == N
    assert file.stat().st_size < 0.55 * last.stat().st_size
    tensors, meta = load_weights(file)
    assert tensors["head.4.weight"].dtype == torch.bfloat16 and tensors["head.0.weight"].dtype == torch.float32
    assert meta["stored_dtype"] == "bfloat16" and meta["model"] == "lm_resnet20"
    assert main(ship(run, reg, "--prune-checkpoints", "--force")) == 0
    assert "already shipped as lm_resnet20.cifar10_bf16_s0" in capsys.readouterr().out
    record = json.loads((run / "shipped.json").read_text())
    assert record["sha256"] == entry["sha256"] and "stored as autocast computes" in record["note"]
    assert not (run / "checkpoints").exists()
    assert main(evaluate(run, "--amp", "bf16")) == 0
    assert eval_json(capsys, "pruned after shipping") == before


@needs_cifar
def test_full_precision_ships_the_master_weights_byte_for_byte(tmp_path: Path) -> None:
    run, reg = make_run(tmp_path / "run", amp="bf16"), tmp_path / "w" / "registry.json"
    _, entry = ship_run(run, registry=reg, any_recipe=True, test_subset=N, full_precision=True)
    assert (reg.parent / entry["file"]).read_bytes() == (run / "checkpoints" / "last.safetensors").read_bytes()
    assert "stored" not in entry and entry["final_weights_sha256"] == entry["sha256"]
    fp32_run = make_run(tmp_path / "fp32", seed=1)
    _, fp32 = ship_run(fp32_run, registry=reg, any_recipe=True, test_subset=N)
    assert "stored" not in fp32 and load_file(reg.parent / fp32["file"])["head.2.weight"].dtype == torch.float32


@needs_cifar
def test_a_compact_net_that_would_compute_otherwise_is_not_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bitwise check is real: a compact net whose BatchNorm moved is refused, nothing is written."""
    rounded = compact.rounded_copy

    def moved(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        net = rounded(model, dtype)
        next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean.add_(1e-3)
        return net

    monkeypatch.setattr("odearch.train.ship.rounded_copy", moved)
    run, reg = make_run(tmp_path / "run", amp="bf16"), tmp_path / "w" / "registry.json"
    with pytest.raises(ShipError, match="differ from the fp32 master weights' on 1 test batches"):
        ship_run(run, registry=reg, any_recipe=True, test_subset=N)
    assert main(ship(run, reg)) == 1 and "--full-precision" in error_line(capsys)
    assert not reg.exists() and not reg.parent.exists()


@needs_cifar
def test_a_pruned_run_shipped_in_fp32_is_compacted_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ship --compact-shipped``: same name and file, half the bytes, the entry a compact ship would write (the fp32
    file's sha256 kept as the master weights'), shipped.json follows, and ``eval RUN --amp bf16`` reads the same
    numbers; refused without git holding the fp32 file (nothing changes), and a second time."""
    run, reg = make_run(tmp_path / "run", model="lm_resnet20", amp="bf16"), tmp_path / "w" / "registry.json"
    assert main(ship(run, reg, "--full-precision")) == 0
    assert main(ship(run, reg, "--prune-checkpoints", "--force")) == 0
    capsys.readouterr()
    ((name, old),) = read_registry(reg).items()
    file = reg.parent / old["file"]
    fp32_bytes = file.read_bytes()
    assert main(evaluate(run, "--amp", "bf16")) == 0
    before = eval_json(capsys, "pruned after shipping")
    argv = ["ship", str(run), "--compact-shipped", "--test-subset", str(N), "--data-dir", str(CIFAR_ROOT)]
    assert main(argv) == 1 and "git's HEAD does not hold" in error_line(capsys)
    assert file.read_bytes() == fp32_bytes and read_registry(reg)[name] == old
    assert main([*argv, "--force"]) == 0
    assert f"compacted {name}" in capsys.readouterr().out
    ((same, entry),) = read_registry(reg).items()
    assert same == name and entry["file"] == old["file"] and entry["final_weights_sha256"] == old["sha256"]
    assert entry["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest() != old["sha256"]
    assert file.stat().st_size < 0.55 * len(fp32_bytes) and entry["stored"]["autocast_test_images"] == N
    assert entry["stored"]["converted"].startswith(f"from the fp32 file shipped first (sha256 {old['sha256']}")
    assert json.loads((run / "shipped.json").read_text())["sha256"] == entry["sha256"]
    assert main(evaluate(run, "--amp", "bf16")) == 0
    assert eval_json(capsys, "pruned after shipping") == before
    assert main([*argv, "--force"]) == 1 and "already stored compact" in error_line(capsys)


@needs_cifar
def test_compact_shipped_refuses_what_it_cannot_compact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unpruned run, a run trained in fp32, and flags that choose another name or registry."""
    reg = tmp_path / "w" / "registry.json"
    bf16 = make_run(tmp_path / "bf16", model="lm_resnet20", amp="bf16")
    with pytest.raises(ShipError, match="is not pruned"):
        compact_shipped(bf16)
    fp32 = make_run(tmp_path / "fp32", seed=1)
    assert main(ship(fp32, reg, "--prune-checkpoints", "--force")) == 0
    capsys.readouterr()
    assert main(["ship", str(fp32), "--compact-shipped", "--force"]) == 1
    assert "trained in fp32: nothing to compact" in error_line(capsys)
    assert main(["ship", str(fp32), "--compact-shipped", "--tag", "x", "--registry", str(reg)]) == 1
    assert "not --tag, --registry" in error_line(capsys)
