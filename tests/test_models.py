"""The model zoo: every registered model builds, runs forward and backward, and has the paper's parameter count."""

import pytest
import torch
from torch import nn

import odearch
from conftest import n_params
from doctext import doc_text
from odearch.models import create_model, list_models


def n_weight_params(model: nn.Module) -> int:
    """Convolution and linear parameters only (BatchNorm affine and LM coefficients excluded)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


# Exact counts (num_classes=10), pinned; the paper's rounded figure beside each.
COUNTS = {
    "resnet20": (269_722, 0.27),
    "resnet32": (464_154, 0.46),
    "resnet44": (658_586, 0.66),
    "resnet56": (853_018, 0.85),
    "resnet110": (1_727_962, 1.7),
    "resnet1202": (19_421_274, 19.4),
    "preact_resnet110": (1_730_618, 1.7),
    "preact_resnet164": (1_703_674, 1.7),
    "resnext29_8x64d": (34_426_698, 34.4),
    "resnext29_16x64d": (68_155_210, 68.1),
}


def _paper_rounding(count: int, paper_m: float) -> bool:
    """The paper prints two decimals below 1M and one above; ResNeXt-29 16x64d's 68.16M is printed as 68.1M."""
    decimals = 2 if paper_m < 1 else 1
    return abs(count / 1e6 - paper_m) < 0.6 * 10**-decimals


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_match_the_paper(name: str) -> None:
    count, paper = COUNTS[name]
    assert n_params(create_model(name)) == count
    assert _paper_rounding(count, paper)


@pytest.mark.parametrize(("depth", "count"), [(20, 272_378), (32, 466_810), (44, 661_242), (56, 855_674)])
def test_preact_backbone_count(depth: int, count: int) -> None:
    """The pre-activation backbone (the LM-ResNets' and their plain twins') has the post-activation ResNet's
    parameters plus the official code's two BN-ReLU-conv1x1 projections (16*32 + 32*64 weights + 2*(16 + 32) BN):
    2,656 more, e.g. 0.467M for depth 32, where the paper prints ResNet-32's 0.46M for both."""
    plain = n_params(create_model(f"preact_resnet{depth}"))
    assert plain == count
    assert plain - n_params(create_model(f"resnet{depth}")) == 16 * 32 + 32 * 64 + 2 * (16 + 32)


def test_preact_resnet1001_count() -> None:
    """10.33M parameters in all; the paper's 10.2M is its convolution + FC weights (10.18M), BN affine excluded."""
    model = create_model("preact_resnet1001")
    assert n_params(model) == 10_328_122
    assert n_weight_params(model) == 10_178_490 and round(n_weight_params(model) / 1e6, 1) == 10.2
    readme = doc_text()
    assert "pre-act ResNet-1001 10.33M in all, 10.18M (10,178,490) without BatchNorm's affine parameters" in readme


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110, 164, 1001])
def test_lm_twin_adds_only_its_coefficients(depth: int) -> None:
    plain, lm = create_model(f"preact_resnet{depth}"), create_model(f"lm_resnet{depth}")
    blocks_per_stage = (depth - 2) // (9 if depth in (164, 1001) else 6)
    assert n_params(lm) - n_params(plain) == 3 * (blocks_per_stage - 1)  # one k_n per LM step
    assert set(lm.state_dict()) - set(plain.state_dict()) == {f"stages.{i}.lm_k" for i in range(3)}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "paper"), [("lm_resnext29_8x64d", 35.1), ("lm_resnext29_16x64d", 68.8)])
def test_lm_resnext_history_projection_explains_the_printed_count(name: str, paper: float) -> None:
    count = n_params(create_model(name))
    assert round(count / 1e6, 1) == paper
    plain = n_params(create_model(name.removeprefix("lm_")))
    without = n_params(create_model(name, history_projection=False))
    assert without - plain == 3 * 2  # k_n only
    assert count - without == 256 * 512 + 512 * 1024 + 2 * (512 + 1024)  # Q = conv1x1-BN at stages 2 and 3


def test_lm_resnext_history_projection_reads_the_stage_input() -> None:
    """Across a transition the LM history of u_1 is Q(u_0), u_0 the stage's input: Q never sees the previous stage's
    u_{N-1} (two steps back from u_1), and P and Q read the same state."""
    from odearch.models.resnext import cifar_resnext

    model = cifar_resnext(2, 4, scheme="lm", depth=20, history_projection=True).eval()
    seen: dict[str, torch.Tensor] = {}
    for i in (1, 2):
        stage = model.stages[i]
        # the previous stage's post-activation runs after each of its steps: its last output is this stage's u_0
        model.stages[i - 1].post_act.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(f"in{i}", out))
        stage.history_shortcut.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(f"q{i}", args[0]))
        stage.shortcut.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(f"p{i}", args[0]))
    model(torch.randn(2, 3, 32, 32))
    for i in (1, 2):
        assert seen[f"q{i}"] is seen[f"in{i}"] and seen[f"p{i}"] is seen[f"in{i}"]


def _evaluate_every_block(model: nn.Module) -> nn.Module:
    """Put stochastic-depth stages in per-sample mode, where every block is evaluated.

    A per-batch draw skips a dropped block, whose parameters then get no gradient in that step; the ``_sd`` rows
    drop blocks with probability up to 0.5, so no seed keeps them all. Per sample, every block runs (a dropped
    sample contributes a zero gradient), so "every parameter has a gradient" stays a sharp check of the wiring.
    The per-batch path has its own tests in ``test_stochastic.py``. Done on the Stages, so any family qualifies.
    """
    for module in model.modules():
        if isinstance(module, odearch.Stage) and module.survival is not None:
            module.drop_mode = "sample"
    return model


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str) -> None:
    model = _evaluate_every_block(create_model(name, num_classes=7))
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_lm_twin_with_zero_k_equals_plain_twin() -> None:
    plain, lm = create_model("preact_resnet20").eval(), create_model("lm_resnet20").eval()
    missing, unexpected = lm.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["stages.0.lm_k", "stages.1.lm_k", "stages.2.lm_k"] and not unexpected
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(lm(x), plain(x))
    with torch.no_grad():
        for stage in lm.stages:
            stage.lm_k.zero_()
    assert torch.allclose(lm(x), plain(x), atol=1e-6)


def test_rev_resnet_stage_is_invertible() -> None:
    model = create_model("rev_resnet20").double().eval()
    stage = model.stages[0]  # no transition: a pure RevNet stage
    u = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(stage.inverse(stage(u)), u, atol=1e-12)


def test_scheme_kwarg_swaps_the_integrator() -> None:
    model = create_model("preact_resnet20", scheme="rk2")
    assert all(s.scheme.name == "rk2" for s in model.stages)
    assert create_model("preact_resnet20", scheme=None).stages[0].scheme.name == "euler"  # None is pruned


def test_unknown_model_lists_close_matches() -> None:
    with pytest.raises(ValueError, match="lm_resnet56"):
        create_model("lm_resnet65")


def test_registry_is_sorted_and_complete() -> None:
    names = odearch.list_models()
    assert names == sorted(names)
    for d in (20, 32, 44, 56, 110):
        assert {f"lm_resnet{d}", f"preact_resnet{d}", f"resnet{d}"} <= set(names)
    assert {"poly2_resnet20", "rk2_resnet20", "rev_resnet20", "lm_resnet164", "lm_resnet1001", "resnet1202"} <= set(
        names
    )
    assert odearch.list_models("lm_resnext29*") == ["lm_resnext29_16x64d", "lm_resnext29_8x64d"]


def test_duplicate_registration_raises() -> None:
    from odearch.models import register_model

    def resnet20(num_classes: int = 10) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet20)


def test_invalid_combinations_fail_in_the_constructor() -> None:
    with pytest.raises(ValueError, match="pre-activation"):
        create_model("resnet20", scheme="rev")
    with pytest.raises(ValueError, match="Runge-Kutta"):
        create_model("preact_resnet20", scheme="lm", fractal=True)
    with pytest.raises(ValueError, match="lm scheme"):
        create_model("resnext29_8x64d", history_projection=True)


def test_bf16_autocast_forward() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = create_model("lm_resnet20")(torch.randn(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
