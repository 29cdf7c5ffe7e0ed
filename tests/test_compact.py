"""Compact weights of bf16 runs (:mod:`odearch.train.compact`): ``odearch ship`` stores the convolution and linear
weights in bf16, and the net computes bitwise the same logits under bf16 autocast as its fp32 master weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import error_line
from datapaths import CIFAR_ROOT, HAS_CIFAR, SKIP_REASON
from odearch.cli import main
from odearch.models import create_model
from odearch.models._pretrained import read_registry
from odearch.packing import unpack_weights
from odearch.train import compact
from odearch.train.checkpoint import load_weights
from odearch.train.ship import ShipError, repack_shipped, ship_run
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
    assert file.name == f"{name}.safetensors.xz" and file.stat().st_size < 0.55 * last.stat().st_size
    assert entry["weights_sha256"] == hashlib.sha256(unpack_weights(file.read_bytes())).hexdigest()
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
    packed = (reg.parent / entry["file"]).read_bytes()
    assert unpack_weights(packed) == (run / "checkpoints" / "last.safetensors").read_bytes() != packed
    assert "stored" not in entry and entry["final_weights_sha256"] == entry["weights_sha256"] != entry["sha256"]
    fp32_run = make_run(tmp_path / "fp32", seed=1)
    _, fp32 = ship_run(fp32_run, registry=reg, any_recipe=True, test_subset=N)
    assert "stored" not in fp32 and load_weights(reg.parent / fp32["file"])[0]["head.2.weight"].dtype == torch.float32


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
def test_repack_makes_a_pruned_fp32_shipped_bf16_run_compact_and_packed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ship --repack`` of a bf16 run shipped in fp32, unpacked (as before compact storage and packing): the entry a
    ship writes today (the fp32 file's sha256 kept as the master weights'), the old file gone, shipped.json follows,
    and ``eval RUN --amp bf16`` reads the same numbers; refused without git holding the old file (nothing changes),
    and once done."""
    run, reg = make_run(tmp_path / "run", model="lm_resnet20", amp="bf16"), tmp_path / "w" / "registry.json"
    assert main(ship(run, reg, "--full-precision", "--prune-checkpoints", "--force")) == 0
    capsys.readouterr()
    ((name, old),) = read_registry(reg).items()
    fp32_bytes = unpack_weights((reg.parent / old["file"]).read_bytes())
    old = unpacked_entry(reg, run, name)  # as shipped before packing: a plain .safetensors file, no weights_sha256
    assert main(evaluate(run, "--amp", "bf16")) == 0
    before = eval_json(capsys, "pruned after shipping")
    argv = ["ship", str(run), "--repack", "--test-subset", str(N), "--data-dir", str(CIFAR_ROOT)]
    assert main(argv) == 1 and "git's HEAD does not hold" in error_line(capsys)
    assert (reg.parent / old["file"]).read_bytes() == fp32_bytes and read_registry(reg)[name] == old
    assert main([*argv, "--force"]) == 0
    assert "bitwise the fp32 file's logits" in capsys.readouterr().out
    ((same, entry),) = read_registry(reg).items()
    file = reg.parent / entry["file"]
    assert same == name and entry["file"] == old["file"] + ".xz" and not (reg.parent / old["file"]).exists()
    assert entry["final_weights_sha256"] == old["sha256"] == hashlib.sha256(fp32_bytes).hexdigest()
    assert entry["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    unpacked = unpack_weights(file.read_bytes())
    assert entry["weights_sha256"] == hashlib.sha256(unpacked).hexdigest() and len(unpacked) < 0.55 * len(fp32_bytes)
    assert entry["stored"]["autocast_test_images"] == N and file.stat().st_size < len(unpacked)
    assert entry["stored"]["converted"].startswith(f"from the fp32 file shipped first (sha256 {old['sha256']}")
    assert json.loads((run / "shipped.json").read_text())["sha256"] == entry["sha256"]
    assert main(evaluate(run, "--amp", "bf16")) == 0
    assert eval_json(capsys, "pruned after shipping") == before
    assert main([*argv, "--force"]) == 1 and "already stored as a ship writes it today" in error_line(capsys)


def unpacked_entry(reg: Path, run: Path, name: str) -> dict[str, Any]:
    """Rewrites the shipped entry ``name`` of ``reg`` (and ``run``'s shipped.json) as ship wrote it before packing:
    an unpacked ``.safetensors`` file, no ``weights_sha256``; returns that entry."""
    entries = read_registry(reg)
    entry = entries[name]
    packed = reg.parent / entry["file"]
    data = unpack_weights(packed.read_bytes())
    plain = packed.with_name(packed.name.removesuffix(".xz"))
    plain.write_bytes(data)
    packed.unlink()
    sha = hashlib.sha256(data).hexdigest()
    entry = {k: v for k, v in entry.items() if k != "weights_sha256"} | {"file": plain.name, "sha256": sha}
    reg.write_text(json.dumps({"format": "odearch-weights/1", "weights": {**entries, name: entry}}))
    record = json.loads((run / "shipped.json").read_text()) | {"sha256": sha}
    (run / "shipped.json").write_text(json.dumps(record))
    return entry


@needs_cifar
def test_repack_packs_a_run_shipped_unpacked_and_readers_take_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fp32 run shipped before packing: ``--repack`` packs it losslessly; the shipped.json written before the
    repack is still good until then and after a kill between the registry and shipped.json (a second repack
    finishes); eval reads the same numbers throughout."""
    run, reg = make_run(tmp_path / "fp32", seed=1), tmp_path / "w" / "registry.json"
    assert main(ship(run, reg, "--prune-checkpoints", "--force")) == 0
    capsys.readouterr()
    name = next(iter(read_registry(reg)))
    old = unpacked_entry(reg, run, name)
    assert main(evaluate(run)) == 0
    before = eval_json(capsys, "pruned after shipping")
    plain = reg.parent / old["file"]
    plain_bytes = plain.read_bytes()

    def killed(*args: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr("odearch.train.ship._finish_repack", killed)
    with pytest.raises(SystemExit):
        repack_shipped(run, force=True)
    monkeypatch.undo()
    entry = read_registry(reg)[name]
    assert entry["weights_sha256"] == old["sha256"] and plain.exists()  # registry switched, shipped.json not yet
    assert unpack_weights((reg.parent / entry["file"]).read_bytes()) == plain_bytes
    assert main(evaluate(run)) == 0 and eval_json(capsys, "pruned after shipping") == before
    assert main(["ship", str(run), "--repack", "--force"]) == 0
    assert f"repacked {name}: {name}.safetensors.xz" in capsys.readouterr().out
    assert not plain.exists() and json.loads((run / "shipped.json").read_text())["sha256"] == entry["sha256"]
    assert main(evaluate(run)) == 0 and eval_json(capsys, "pruned after shipping") == before
    assert main(["ship", str(run), "--repack", "--force"]) == 1
    assert "already stored as a ship writes it today" in error_line(capsys)


@needs_cifar
def test_repack_refuses_an_unpruned_run_and_other_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "bf16", model="lm_resnet20", amp="bf16")
    with pytest.raises(ShipError, match="is not pruned"):
        repack_shipped(run)
    assert main(["ship", str(run), "--repack", "--tag", "x", "--registry", str(tmp_path / "r.json")]) == 1
    assert "not --tag, --registry" in error_line(capsys)
