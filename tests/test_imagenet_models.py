"""ImageNet ResNets: torchvision's checkpoint keys and outputs, the paper's parameter counts, LM twins."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import n_params, randomise_bn
from odearch.models import create_model, model_entrypoint
from odearch.nn import Stage

ARCHS = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d")
# Exact counts (1000 classes) = torchvision's; the paper's table (ResNeXt-50: Xie et al. 2017) beside each.
COUNTS = {
    "resnet50": (25_557_032, 25.6),
    "resnet101": (44_549_160, 44.5),
    "resnet152": (60_192_808, 60.2),
    "resnext50_32x4d": (25_028_904, 25.0),
}
LM_STEPS = {"resnet50": 12, "resnet101": 29, "resnet152": 46, "resnext50_32x4d": 12}  # sum(blocks - 1) per stage
pytestmark = pytest.mark.usefixtures("one_thread")


def zero_lm_k(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Stage) and hasattr(m, "lm_k"):
                m.lm_k.zero_()


@pytest.fixture(scope="module")
def tv_resnet50() -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(torchvision.models.resnet50()).eval()


@pytest.mark.parametrize("name", ARCHS)
def test_keys_shapes_and_counts_match_torchvision_and_the_paper(name: str) -> None:
    ours, lm, tv = create_model(name), create_model(f"lm_{name}"), getattr(torchvision.models, name)()
    ref = tv.state_dict()
    sd = ours.state_dict()
    assert list(sd) == list(ref)  # same keys in the same order
    assert all(sd[k].shape == ref[k].shape for k in ref)
    lm_sd = lm.state_dict()
    assert set(lm_sd) - set(ref) == {f"layer{i}.lm_k" for i in range(1, 5)}
    assert [k for k in lm_sd if not k.endswith("lm_k")] == list(ref)
    count, paper = COUNTS[name]
    assert n_params(ours) == n_params(tv) == count
    assert round(count / 1e6, 1) == paper
    assert n_params(lm) == count + LM_STEPS[name]  # the LM twin adds one k_n per LM step, nothing else


def test_default_num_classes_is_imagenet() -> None:
    assert create_model("resnet50").fc.out_features == 1000
    assert create_model("lm_resnet50", num_classes=7).fc.out_features == 7
    assert create_model("resnet20").head[-1].out_features == 10  # the CIFAR entries keep theirs


def test_torchvision_checkpoint_gives_identical_outputs(tv_resnet50: nn.Module) -> None:
    ours = create_model("resnet50").eval()
    assert not ours.load_state_dict(tv_resnet50.state_dict()).missing_keys  # strict
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), tv_resnet50(x))


def test_lm_twin_with_zero_k_gives_torchvision_outputs(tv_resnet50: nn.Module) -> None:
    lm = create_model("lm_resnet50").eval()
    missing, unexpected = lm.load_state_dict(tv_resnet50.state_dict(), strict=False)
    assert sorted(missing) == [f"layer{i}.lm_k" for i in range(1, 5)] and not unexpected
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tv_resnet50(x)
        assert not torch.allclose(lm(x), ref, atol=1e-4)  # k_n ~ U[-0.1, 0] changes the output
        zero_lm_k(lm)
        torch.testing.assert_close(lm(x), ref, atol=1e-6, rtol=0)


def test_our_checkpoint_loads_into_torchvision() -> None:
    ours = randomise_bn(create_model("resnext50_32x4d")).eval()
    tv = torchvision.models.resnext50_32x4d().eval()
    tv.load_state_dict(ours.state_dict())  # strict
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(tv(x), ours(x))


def test_safetensors_round_trip(tmp_path) -> None:
    a, b = create_model("lm_resnet50", num_classes=5), create_model("lm_resnet50", num_classes=5)
    save_file(a.state_dict(), tmp_path / "m.safetensors")
    b.load_state_dict(load_file(tmp_path / "m.safetensors"))  # strict
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_internal_names_also_load_and_errors_use_torchvision_names() -> None:
    """A checkpoint spelled with module names (``layer1.blocks.0...``) loads too; key errors name the public keys."""
    model = create_model("resnet50", num_classes=5)
    internal = {n: t.detach() for n, t in (*model.named_parameters(), *model.named_buffers())}
    assert "layer1.blocks.0.conv1.weight" in internal and "layer1.shortcut.0.weight" in internal
    model.load_state_dict(internal)  # strict
    sd = model.state_dict()
    del sd["layer2.0.downsample.1.weight"]
    sd["layer2.9.conv1.weight"] = torch.zeros(1)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert missing == ["layer2.0.downsample.1.weight"] and unexpected == ["layer2.9.conv1.weight"]


def test_structure_is_torchvision_v1_5() -> None:
    model = create_model("lm_resnet50")
    assert [len(s) for s in model.stages] == [3, 4, 6, 3]
    assert all(s.shortcut is not None and isinstance(s.post_act, nn.ReLU) for s in model.stages)
    assert model.layer2.blocks[0].conv2.stride == (2, 2) and model.layer2.blocks[0].conv1.stride == (1, 1)
    assert model.layer2.lm_k.shape == (3,)


def test_scheme_kwarg_and_invalid_combinations() -> None:
    assert create_model("resnet50", scheme="rk2", num_classes=3).layer3.scheme.name == "rk2"
    with pytest.raises(ValueError, match="rev"):
        create_model("resnet50", scheme="rev")
    from odearch.models.imagenet_resnet import imagenet_resnet

    with pytest.raises(ValueError, match="BasicBlock"):
        imagenet_resnet((2, 2, 2, 2), bottleneck=False, groups=2)


def test_basic_block_builder_matches_torchvision_resnet18() -> None:
    from odearch.models.imagenet_resnet import imagenet_resnet

    ours, tv = imagenet_resnet((2, 2, 2, 2), bottleneck=False), torchvision.models.resnet18()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}
    assert ours.layer1.shortcut is None  # 64 -> 64, stride 1: no transition, the LM starter step is Euler


def test_zero_init_residual() -> None:
    model = create_model("resnet50", zero_init_residual=True)
    assert all(not f.bn3.weight.detach().any() for s in model.stages for f in s.blocks)


def test_imagenet_baseline_numbers_are_labelled_v1_beside_torchvision_v1_5() -> None:
    """The paper's 24.7 / 23.6 / 23.0 top-1 are the Caffe v1 models'; ours are v1.5, whose torchvision reference
    weights reach 23.87 / 22.63 / 21.69 (100 - acc@1 of ``ResNet*_Weights.IMAGENET1K_V1.meta``)."""
    import torchvision.models as tvm

    import odearch.models.imagenet_resnet as mod

    for depth, weights, v1 in (
        (50, tvm.ResNet50_Weights, "24.7"),
        (101, tvm.ResNet101_Weights, "23.6"),
        (152, tvm.ResNet152_Weights, "23.0"),
    ):
        metrics = weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]
        top1, top5 = 100 - metrics["acc@1"], 100 - metrics["acc@5"]
        doc = model_entrypoint(f"resnet{depth}").__doc__ or ""  # the row's docstring
        assert f"{v1} / " in doc and "Caffe v1" in doc and f"v1.5 weights: {top1:.2f} / {top5:.2f}%" in doc
        assert f"| resnet{depth} |" in mod.__doc__ and f"{top1:.2f} / {top5:.2f}" in mod.__doc__
