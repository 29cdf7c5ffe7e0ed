"""timm's model contract on every registered odearch CIFAR model: data config, classifier and pooling reset,
``head_hidden_size``, ``drop_rate``, ``forward_intermediates`` / ``prune_intermediate_layers``, gradient
checkpointing, ``group_matcher``, a gradient for every parameter under stochastic depth, and TorchScript refused.

odearch's own tests of the properties timm's ``tests/test_models.py`` checks (not a copy of them). The deep and wide
models are marked slow; the ImageNet family is covered by one representative (64 x 64 input)."""

from __future__ import annotations

import re

import pytest
import torch

import odearch
from odearch.models import model_entrypoint
from odearch.nn import set_memory

CFG_KEYS = ("input_size", "mean", "std", "num_classes", "first_conv", "classifier", "pool_size", "crop_pct")


def _is_large(name: str) -> bool:
    """Deeper than 32 layers, wider than 64 channels (ResNeXt, shake-shake): over ~2 s per test on 2 cores."""
    depth = int(re.search(r"resnet(\d+)", name).group(1)) if "resnet" in name and "resnext" not in name else 0
    return depth > 32 or "resnext" in name or "shake" in name


CIFAR = [n for n in odearch.list_models() if not model_entrypoint(n).__module__.endswith("imagenet_resnet")]
MODELS = [pytest.param(n, marks=pytest.mark.slow) if _is_large(n) else n for n in CIFAR]
MODELS.append(pytest.param("lm_resnet50", marks=pytest.mark.slow))


def _x(name: str) -> torch.Tensor:
    size = 64 if name == "lm_resnet50" else 32
    return torch.randn(2, 3, size, size)


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_classifier_and_pooling(name: str) -> None:
    torch.manual_seed(0)
    model = odearch.create_model(name).eval()
    cfg, state = model.pretrained_cfg, model.state_dict()
    assert all(k in cfg for k in CFG_KEYS)
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    x = _x(name)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size) and model.head_hidden_size == model.num_features
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(0, "")
        assert model(x).shape == model.forward_features(x).shape  # (B, num_features, H, W): no pooling
        assert cfg["pool_size"] == (cfg["input_size"][-1] // model.feature_info.reduction(-1),) * 2
        fresh = odearch.create_model(name, num_classes=0, global_pool="").eval()
        assert fresh(x).dim() == 4 and "pool_size" in fresh.pretrained_cfg
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(10, "")


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_follow_feature_info(name: str) -> None:
    torch.manual_seed(0)
    model = odearch.create_model(name).eval()
    x = _x(name)
    info = model.feature_info
    with torch.no_grad():
        last, feats = model.forward_intermediates(x)
        assert [f.shape[1] for f in feats] == info.channels()
        assert [x.shape[-1] // f.shape[-1] for f in feats] == info.reduction()
        # the last intermediate is the features (nan-equal: the 1000-layer nets overflow in eval at init)
        torch.testing.assert_close(feats[-1], model.stage_outputs(x)[-1], equal_nan=True)
        torch.testing.assert_close(last, model.forward_features(x), equal_nan=True)
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(first[0], feats[0], equal_nan=True)
        assert model.prune_intermediate_layers(indices=[0, 1]) == [0, 1]
        torch.testing.assert_close(model(x), feats[1], equal_nan=True)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient_and_drop_rate_works(name: str) -> None:
    """Stochastic depth skips dropped blocks, but their parameters get zeros (DDP needs no find_unused_parameters)."""
    torch.manual_seed(0)
    model = odearch.create_model(name, drop_path_rate=0.5, drop_rate=0.2).train()
    assert model.drop_rate == 0.2
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        model(_x(name)).mean().backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_gives_the_same_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = odearch.create_model(name).train()
    before = [m.memory for m in model.modules() if hasattr(m, "memory")]
    x = _x(name)
    if "reversible" in before:  # the reference: stored activations (a rev stage's inverse is exact only to rounding)
        set_memory(model, "store")
        before = [m.memory for m in model.modules() if hasattr(m, "memory")]

    def grads() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # shake-shake draws its branch weights
        model(x).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    stored = grads()
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    for a, b in zip(stored, grads()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    model.set_grad_checkpointing(False)
    assert [m.memory for m in model.modules() if hasattr(m, "memory")] == before


@pytest.mark.parametrize("name", MODELS)
def test_group_matcher_puts_stem_stages_and_head_in_order(name: str) -> None:
    model = odearch.create_model(name)
    for coarse in (True, False):
        matcher = model.group_matcher(coarse=coarse)
        stem = re.compile(matcher["stem"])
        blocks = matcher["blocks"] if isinstance(matcher["blocks"], list) else [(matcher["blocks"], None)]
        groups = []
        for pname, _ in model.named_parameters():
            if stem.match(pname):
                groups.append((-1,))
                continue
            hit = next((m for m in (re.match(p, pname) for p, _ in blocks) if m), None)
            groups.append(tuple(int(g) for g in hit.groups()) if hit else (10**9,))
        stage_of = [g[0] for g in groups]
        assert groups[0] == (-1,) and stage_of[-1] == 10**9  # the stem first, the head last
        assert len({g for g in stage_of if 0 <= g < 10**9}) == len(model.stages)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("name", ["lm_resnet20", "rev_resnet20", "lm_shake_resnet26_2x32d"])
def test_torch_jit_script_is_refused_in_one_sentence(name: str) -> None:
    model = odearch.create_model(name)
    with pytest.raises(RuntimeError, match=r"cannot be scripted with torch\.jit\.script.*torch\.jit\.trace"):
        torch.jit.script(model)


def test_global_pool_and_drop_rate_are_checked() -> None:
    with pytest.raises(ValueError, match="global_pool"):
        odearch.create_model("resnet20", global_pool="")
    with pytest.raises(ValueError, match="global_pool must be"):
        odearch.create_model("resnet20", num_classes=0, global_pool="max")
    with pytest.raises(ValueError, match="drop_rate"):
        odearch.create_model("resnet20", drop_rate=1.5)
    assert odearch.create_model("resnet20", global_pool="avg").num_classes == 10


def test_timm_factory_options_and_layer_decay() -> None:
    timm = pytest.importorskip("timm", reason="timm is optional (the dev extra installs it)")
    from timm.optim import create_optimizer_v2

    from odearch.timm_models import register_timm

    register_timm()
    model = timm.create_model("odearch_lm_resnet20", num_classes=0, global_pool="", drop_rate=0.1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8) and model.drop_rate == 0.1
    model = timm.create_model("odearch_lm_resnet20")
    opt = create_optimizer_v2(model, "sgd", lr=0.1, layer_decay=0.9)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) >= 5 and max(scales) == 1.0  # stem, blocks ..., head: decaying towards the input
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
