"""odearch.to_lm / from_lm: the LM form of a plain ResNet, on the very same weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import odearch
from conftest import randomise_bn
from odearch import from_lm, to_lm
from odearch.nn import Stage

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_to_lm_with_zero_k_keeps_outputs_and_weights(arch: str) -> None:
    tv = randomise_bn(getattr(torchvision.models, arch)()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tv(x)
    lm = to_lm(tv).eval()
    assert type(lm) is type(tv) and lm is not tv
    assert all(isinstance(getattr(lm, f"layer{i}"), Stage) for i in range(1, 5))
    assert isinstance(tv.layer1, nn.Sequential)  # the input is left as it was: the plain twin
    with torch.no_grad():
        assert torch.equal(lm(x), ref)
    # no copies: the same parameter tensors, and the LM model adds only its k_n
    shared = {id(p) for p in tv.parameters()}
    lm_params = dict(lm.named_parameters())
    assert {id(p) for n, p in lm_params.items() if not n.endswith("lm_k")} == shared
    assert [k for k in lm.state_dict() if not k.endswith("lm_k")] == list(tv.state_dict())
    assert sorted(k for k in lm.state_dict() if k.endswith("lm_k")) == [f"layer{i}.lm_k" for i in range(1, 5)]


def test_lm_k_changes_the_output_and_trains() -> None:
    tv = torchvision.models.resnet18()
    lm = to_lm(tv, k_init=(-0.1, 0.0))
    assert all(-0.1 <= float(k) <= 0.0 for s in lm_stages(lm) for k in s.lm_k.detach())
    lm(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(s.lm_k.grad is not None for s in lm_stages(lm))
    assert tv.conv1.weight.grad is not None  # shared with the plain model


def lm_stages(model: nn.Module) -> list[Stage]:
    return [m for m in model.modules() if isinstance(m, Stage)]


def test_resnet18_layer1_has_no_transition_and_a_starter_step() -> None:
    lm = to_lm(torchvision.models.resnet18())
    assert lm.layer1.shortcut is None and lm.layer1.lm_k.shape == (1,)  # 2 blocks: Euler starter + 1 LM step
    assert lm.layer2.shortcut is not None and lm.layer2.lm_k.shape == (1,)


def test_per_channel_and_inplace() -> None:
    tv = torchvision.models.resnet50()
    out = to_lm(tv, per_channel=True, inplace=True)
    assert out is tv and isinstance(tv.layer3, Stage)
    assert tv.layer3.lm_k.shape == (5, 1024) and tv.layer3.scheme.name == "lm_channel"


@pytest.mark.slow
def test_state_dict_loads_from_and_into_torchvision() -> None:
    src = randomise_bn(torchvision.models.resnet50()).eval()
    lm = to_lm(torchvision.models.resnet50()).eval()
    missing, unexpected = lm.load_state_dict(src.state_dict(), strict=False)
    assert sorted(missing) == [f"layer{i}.lm_k" for i in range(1, 5)] and not unexpected
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(lm(x), src(x))
    back = torchvision.models.resnet50()
    assert back.load_state_dict({k: v for k, v in lm.state_dict().items() if not k.endswith("lm_k")})


@pytest.mark.slow
def test_odearch_models_convert_and_round_trip() -> None:
    plain = randomise_bn(odearch.create_model("resnet50", num_classes=5)).eval()
    lm = to_lm(plain).eval()
    assert lm.layer1.scheme.name == "lm" and plain.layer1.scheme.name == "euler"
    assert lm.layer1.blocks[0] is plain.layer1.blocks[0] and lm.layer1.shortcut is plain.layer1.shortcut
    assert set(lm.state_dict()) == set(odearch.create_model("lm_resnet50", num_classes=5).state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(lm(x), plain(x))
        back = from_lm(lm)
        assert back.layer2.scheme.name == "euler" and torch.equal(back(x), plain(x))
    cifar = odearch.create_model("preact_resnet20")
    cifar_lm = to_lm(cifar, k_init=(-0.1, 0.0))
    assert [s.scheme.name for s in cifar_lm.stages] == ["lm"] * 3 and cifar.stages[0].scheme.name == "euler"
    assert set(cifar_lm.state_dict()) == set(odearch.create_model("lm_resnet20").state_dict())


def test_unsupported_inputs_say_what_was_expected() -> None:
    with pytest.raises(TypeError, match=r"layer1\.\.layer4"):
        to_lm(nn.Linear(2, 2))
    weird = torchvision.models.resnet18()
    weird.layer2 = nn.Sequential(nn.Conv2d(64, 128, 3))
    with pytest.raises(TypeError, match="layer2: to_lm converts torchvision or timm BasicBlock / Bottleneck"):
        to_lm(weird)
    late = torchvision.models.resnet18()
    late.layer3[1].downsample = nn.Identity()
    with pytest.raises(ValueError, match="only the first block"):
        to_lm(late)
    with pytest.raises(ValueError, match="forward Euler"):
        to_lm(odearch.create_model("resnet50", scheme="rk2"))


def test_timm_resnet() -> None:
    timm = pytest.importorskip("timm", reason="timm is optional (not a dependency of odearch)")
    for name in ("resnet18", "resnet50"):
        model = randomise_bn(timm.create_model(name, pretrained=False)).eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            ref = model(x)
            lm = to_lm(model).eval()
            assert torch.equal(lm(x), ref)
        assert [k for k in lm.state_dict() if not k.endswith("lm_k")] == list(model.state_dict())
