"""Activation memory modes (odearch.nn.memory): reversible backprop for rev stages, recomputation for every scheme.

Every mode must give ordinary backpropagation's gradients (float64, to rounding), draw the same random numbers, and
update BatchNorm's running statistics once per forward pass.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import odearch
from odearch.nn import PreActBasicBlock, ShakeShake, Stage, get_memory, set_memory
from odearch.nn.shake import ShakeBranch


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, dict, dict, float]:
    """One forward + backward from a fixed RNG state: loss, gradients, buffers, and the next number the RNG draws."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return loss.detach(), grads, buffers, float(torch.rand(()))


def _assert_same_step(ref: nn.Module, other: nn.Module, x: torch.Tensor, y: torch.Tensor, rtol: float = 1e-9) -> None:
    loss_a, grads_a, bufs_a, next_a = _step(ref, x, y)
    loss_b, grads_b, bufs_b, next_b = _step(other, x, y)
    assert torch.equal(loss_a, loss_b)  # the forward pass is the same computation
    assert next_a == next_b  # the RNG stream after the step is the same
    assert grads_a.keys() == grads_b.keys()
    for name, ga in grads_a.items():
        gb = grads_b[name]
        assert (ga is None) == (gb is None), name  # a dropped block gets no gradient in both
        if ga is not None:
            torch.testing.assert_close(gb, ga, rtol=rtol, atol=rtol * float(ga.abs().max()) + 1e-300, msg=name)
    for name, ba in bufs_a.items():  # running statistics and num_batches_tracked: updated once per forward pass
        assert torch.equal(bufs_b[name], ba), name


def _pair(name: str, mode: str, **kwargs: object) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref = set_memory(odearch.create_model(name, **kwargs).double(), "store")
    return ref, set_memory(copy.deepcopy(ref), mode)


def _batch(n: int = 4, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64)
    return x, torch.arange(n) % 10


STOCHASTIC = {
    "plain": {},
    "sd_batch": {"p_last": 0.5, "drop_mode": "batch"},
    "sd_sample": {"p_last": 0.5, "drop_mode": "sample"},
    "sd_noise": {"p_last": 0.7, "drop_mode": "sample", "noise_sigma": 0.1},
}


@pytest.mark.parametrize("kind", sorted(STOCHASTIC))
def test_reversible_gradients_equal_ordinary_backprop(kind: str) -> None:
    ref, rev = _pair("rev_resnet20", "reversible", **STOCHASTIC[kind])
    assert get_memory(rev) == "reversible"
    _assert_same_step(ref, rev, *_batch())


@pytest.mark.parametrize("kind", ["plain", "sd_batch", "sd_sample"])
@pytest.mark.parametrize("name", ["lm_resnet20", "rk4_resnet20", "ab2_resnet20"])
def test_recompute_gradients_equal_ordinary_backprop(name: str, kind: str) -> None:
    ref, rec = _pair(name, "recompute", **STOCHASTIC[kind])
    _assert_same_step(ref, rec, *_batch(), rtol=1e-12)


def test_per_batch_draws_are_replayed_not_redrawn() -> None:
    """Per-batch stochastic depth drops whole blocks: some must be dropped here, and the same ones in both modes."""
    ref, rev = _pair("rev_resnet20", "reversible", p_last=0.3)
    x, y = _batch()
    _, grads, _, _ = _step(copy.deepcopy(rev), x, y)
    # seed 1 drops at least one F or G: its parameters get zeros, not None (every parameter has a gradient)
    assert all(g is not None for g in grads.values()) and any(not g.any() for g in grads.values())
    _assert_same_step(ref, rev, x, y)


class _Net(nn.Module):
    """stem -> stage -> pool -> linear, for stages of residual functions that are not in the registry."""

    def __init__(self, stage: Stage, channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.stage = stage
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)))


def _shake(c: int) -> ShakeShake:
    return ShakeShake(ShakeBranch(c, c), ShakeBranch(c, c))


@pytest.mark.parametrize(("scheme", "mode"), [("rev", "reversible"), ("rev", "recompute"), ("lm", "recompute")])
def test_shake_shake_randomness_is_replayed(scheme: str, mode: str) -> None:
    """alpha and beta are drawn inside the residual functions: the recomputation must draw the same ones."""
    torch.manual_seed(0)
    if scheme == "rev":
        stage = Stage("rev", [(_shake(4), _shake(4)) for _ in range(3)], survival=(1.0, 0.8, 0.6), drop_mode="sample")
    else:
        stage = Stage("lm", [_shake(8) for _ in range(3)], noise_sigma=0.05)
    ref = _Net(stage, 8).double()
    other = set_memory(copy.deepcopy(ref), mode)
    _assert_same_step(ref, other, *_batch(3, 6))


def test_reversible_transition_stage_and_bottleneck() -> None:
    """Stages that open with a (stored) transition step, bottleneck blocks as in rev_resnet164."""
    from odearch.models.preact_resnet import preact_resnet

    torch.manual_seed(0)
    ref = preact_resnet((2, 2, 2), bottleneck=True, scheme="rev", memory="store").double()
    rev = set_memory(copy.deepcopy(ref), "reversible")
    assert ref.stages[0].shortcut is not None
    _assert_same_step(ref, rev, *_batch())


def test_reversible_keeps_memory_flat_in_depth() -> None:
    """Bytes autograd saves during the forward pass: constant in the number of steps for reversible, and recompute
    saves less than store (what the backward pass would otherwise keep alive)."""

    def saved_bytes(n_steps: int, mode: str, scheme: str = "rev") -> int:
        torch.manual_seed(0)
        if scheme == "rev":
            fns = [(PreActBasicBlock(4, 4), PreActBasicBlock(4, 4)) for _ in range(n_steps)]
        else:
            fns = [PreActBasicBlock(8, 8) for _ in range(n_steps)]
        stage = set_memory(Stage(scheme, fns), mode)
        x = torch.randn(4, 8, 8, 8, requires_grad=True)
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = stage(x)
        out.sum().backward()
        return sum(seen.values())

    assert saved_bytes(2, "reversible") == saved_bytes(12, "reversible")
    assert saved_bytes(12, "store") > 4 * saved_bytes(12, "reversible")
    assert saved_bytes(12, "recompute", "lm") < 0.5 * saved_bytes(12, "store", "lm")


def test_non_finite_input_is_refused() -> None:
    torch.manual_seed(0)
    stage = set_memory(Stage("rev", [(PreActBasicBlock(2, 2), PreActBasicBlock(2, 2))]), "reversible")
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="not finite"):
        stage(x.detach().index_fill(0, torch.tensor([1]), float("nan")).requires_grad_())
    with torch.no_grad():  # no backward pass, nothing to reconstruct: the ordinary forward runs
        assert torch.isnan(stage(x.detach().index_fill(0, torch.tensor([1]), float("inf")))).any()


def test_reversible_refuses_what_it_cannot_invert() -> None:
    with pytest.raises(ValueError, match="recompute"):
        set_memory(odearch.create_model("lm_resnet20"), "reversible")
    with pytest.raises(ValueError, match="post-activation"):
        set_memory(Stage("rev", [(nn.Identity(), nn.Identity())], post_act=nn.ReLU()), "reversible")
    with pytest.raises(ValueError, match="one of"):
        set_memory(odearch.create_model("rev_resnet20"), "checkpoint")


def test_defaults_rev_models_reversible_others_store() -> None:
    assert get_memory(odearch.create_model("rev_resnet20")) == "reversible"
    assert get_memory(odearch.create_model("preact_resnet20", scheme="rev")) == "reversible"
    assert get_memory(odearch.create_model("rev_resnet20", memory="store")) == "store"
    assert get_memory(odearch.create_model("lm_resnet20")) == "store"
    assert odearch.list_models("rev_*") == ["rev_resnet110", "rev_resnet164", "rev_resnet20", "rev_resnet56"]


def test_bf16_autocast_reversible_step_is_close_to_store() -> None:
    torch.manual_seed(0)
    ref = odearch.create_model("rev_resnet20", memory="store")
    rev = set_memory(copy.deepcopy(ref), "reversible")
    x, y = _batch()
    out = []
    for model, amp in ((ref, False), (copy.deepcopy(ref), True), (rev, True)):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x.float()), y)
        loss.backward()
        out.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    fp32, store_bf16, rev_bf16 = out
    assert torch.isfinite(rev_bf16).all()
    # bf16 itself moves these gradients by ~45% at initialisation; reversible adds little to that
    err_store, err_rev = (float((g - fp32).norm() / fp32.norm()) for g in (store_bf16, rev_bf16))
    assert err_rev < 1.25 * err_store


def test_config_memory_option_and_old_run_dirs(tmp_path) -> None:
    """--memory is a TrainConfig field; auto keeps the model's default; a config.yaml written before the option
    existed reads as store (what that code did), so an old rev run resumes bit for bit."""
    import yaml

    from odearch.cli import _config_from_args, build_parser
    from odearch.train import RunDir, TrainConfig, build_model, config_hash

    args = build_parser().parse_args(["train", "--model", "lm_resnet20", "--memory", "recompute"])
    cfg, _ = _config_from_args(args)
    assert cfg.memory == "recompute" and get_memory(build_model(cfg)) == "recompute"
    new = TrainConfig(model="rev_resnet20")
    assert new.memory == "auto" and get_memory(build_model(new)) == "reversible"
    assert config_hash(new) == config_hash(new.replace(memory="store"))  # how, not what, is computed
    old = new.to_dict()
    del old["memory"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    legacy = RunDir(tmp_path).read_config()
    assert legacy.memory == "store" and get_memory(build_model(legacy)) == "store"
    with pytest.raises(ValueError, match="recompute"):
        build_model(TrainConfig(model="lm_resnet20", memory="reversible"))


def test_reversible_channels_last_with_noise() -> None:
    """odearch train runs channels_last: the chunks, the reconstruction and the replayed noise keep that layout."""
    ref, rev = _pair("rev_resnet20", "reversible", **STOCHASTIC["sd_noise"])
    for m in (ref, rev):
        m.to(memory_format=torch.channels_last)
    x, y = _batch()
    _assert_same_step(ref, rev, x.contiguous(memory_format=torch.channels_last), y)
