"""timm's data pipeline, pretrained tags and TorchScript exclusions for odearch's models (issue 33).

``resolve_data_config`` + ``create_transform`` give the paper's CIFAR evaluation transform; timm's training transform
cannot be steered into pad-and-crop, and :data:`odearch.timm_models.TIMM_TRAIN_ARGS` come closest (a flip, nothing
else). The shipped weights are timm tags (``odearch_lm_resnet20.cifar10_s0``) loaded from the package's files, never
the network; :data:`odearch.timm_models.EXCLUDE_JIT_FILTERS` leaves odearch out of a timm-style TorchScript test."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision import transforms as T

import odearch
from odearch import data
from odearch.models import model_entrypoint
from odearch.models._pretrained import PretrainedError, pretrained_file
from odearch.timm_models import EXCLUDE_JIT_FILTERS, PREFIX, TIMM_TRAIN_ARGS, register_timm
from odearch.train.checkpoint import load_weights

timm = pytest.importorskip("timm", reason="timm is optional (the dev extra installs it)")
create_transform, resolve_data_config = timm.data.create_transform, timm.data.resolve_data_config
MaybeToTensor, RandomResizedCrop = timm.data.MaybeToTensor, timm.data.RandomResizedCropAndInterpolation

register_timm()
CIFAR = [n for n in odearch.list_models() if not model_entrypoint(n).__module__.endswith("imagenet_resnet")]
FEW = ["resnet20", "lm_resnet20", "preact_resnet20", "rev_resnet20"]  # built models: cheap ones of each kind
SHIPPED = odearch.list_pretrained()


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _normalised(img: Image.Image, cfg: dict) -> torch.Tensor:
    return F.normalize(F.to_tensor(img), cfg["mean"], cfg["std"])


def _stats(num_classes: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if num_classes == 100:
        return data.CIFAR100_MEAN, data.CIFAR100_STD
    return data.CIFAR10_MEAN, data.CIFAR10_STD


# --------------------------------------------------------------------------------------------------- data config
@pytest.mark.parametrize("name", CIFAR)
def test_registered_cfg_gives_the_papers_eval_transform(name: str) -> None:
    """timm's registered config of every CIFAR model: 32 x 32, no resize to a larger size, no crop, CIFAR statistics."""
    cfg = resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(PREFIX + name).to_dict())
    mean, std = _stats(10)
    expected = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": mean, "std": std}
    assert cfg == {**expected, "crop_pct": 1.0, "crop_mode": "center"}
    steps = create_transform(**cfg).transforms
    assert [type(t) for t in steps] == [T.Resize, T.CenterCrop, MaybeToTensor, T.Normalize]
    assert steps[0].size == 32 and steps[1].size == (32, 32)  # both leave a 32 x 32 image as it is


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", FEW)
def test_eval_transform_of_a_model_is_the_identity_then_normalisation(name: str, num_classes: int) -> None:
    model = timm.create_model(PREFIX + name, num_classes=num_classes)
    cfg = resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 32, 32) and (cfg["mean"], cfg["std"]) == _stats(num_classes)
    transform = create_transform(**cfg)
    for seed in range(3):
        img = _image(seed)
        assert torch.equal(transform(img), _normalised(img, cfg))  # bit for bit: no resampling anywhere


@pytest.mark.parametrize("name", FEW)
def test_the_cfg_cannot_steer_timms_train_transform(name: str) -> None:
    """Only input_size, interpolation, mean and std reach timm's training transform: it stays ImageNet's."""
    cfg = resolve_data_config({}, model=timm.create_model(PREFIX + name))
    steps = create_transform(**cfg, is_training=True).transforms
    kinds = [RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter, MaybeToTensor, T.Normalize]
    assert [type(t) for t in steps] == kinds
    assert steps[0].scale == (0.08, 1.0) and steps[0].size == (32, 32)


@pytest.mark.parametrize("interpolation", ["bilinear", "random"])  # the cfg's, train.py's --train-interpolation
@pytest.mark.parametrize("name", FEW)
def test_closest_timm_train_args_flip_and_change_nothing_else(name: str, interpolation: str) -> None:
    cfg = {**resolve_data_config({}, model=timm.create_model(PREFIX + name)), "interpolation": interpolation}
    transform = create_transform(**cfg, is_training=True, **TIMM_TRAIN_ARGS)
    crop, flip, jitter = transform.transforms[:3]
    assert (crop.scale, crop.ratio, crop.size) == ((1.0, 1.0), (1.0, 1.0), (32, 32)) and flip.p == 0.5
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (None,) * 4  # no-op
    img = _image()
    same, flipped = _normalised(img, cfg), _normalised(F.hflip(img), cfg)
    torch.manual_seed(0)
    outs = [transform(img) for _ in range(32)]
    assert all(torch.equal(o, same) or torch.equal(o, flipped) for o in outs)  # no crop, resize, jitter
    assert any(torch.equal(o, same) for o in outs) and any(torch.equal(o, flipped) for o in outs)


# --------------------------------------------------------------------------------------------- pretrained tags
def test_list_models_pretrained_lists_the_shipped_tags() -> None:
    tagged = {PREFIX + n for n in SHIPPED}
    assert tagged and set(timm.list_models("odearch_*", pretrained=True)) == tagged
    assert set(timm.list_pretrained("odearch_*")) == tagged
    for name in SHIPPED:
        cfg = timm.models.get_pretrained_cfg(PREFIX + name)
        assert Path(cfg.file) == pretrained_file(name) and cfg.tag == name.partition(".")[2]
        assert cfg.architecture == PREFIX + name.partition(".")[0] and cfg.hf_hub_id is None and not cfg.url
    assert not timm.models.is_model_pretrained("odearch_lm_resnet56")  # no weights: untagged, not listed
    assert "odearch_lm_resnet56" in timm.list_models("odearch_*")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", SHIPPED)
def test_timm_pretrained_loads_the_package_files_bit_for_bit(name: str, no_network: None) -> None:
    model = timm.create_model(PREFIX + name, pretrained=True)
    ref = odearch.create_model(name, pretrained=True)
    tensors = load_weights(pretrained_file(name))[0]
    assert model.state_dict().keys() == ref.state_dict().keys() == tensors.keys()
    theirs = ref.state_dict()
    assert all(torch.equal(v, theirs[k]) and torch.equal(v, tensors[k]) for k, v in model.state_dict().items())
    cfg = model.pretrained_cfg
    assert cfg["name"] == name and cfg["tag"] == name.partition(".")[2]
    assert cfg["architecture"] == PREFIX + name.partition(".")[0]


def test_untagged_pretrained_takes_the_first_tag(no_network: None) -> None:
    model = timm.create_model("odearch_preact_resnet20", pretrained=True)
    first = next(n for n in SHIPPED if n.startswith("preact_resnet20."))
    assert model.pretrained_cfg["name"] == first
    assert timm.models.get_pretrained_cfg("odearch_preact_resnet20").tag == first.partition(".")[2]
    with pytest.raises(PretrainedError, match="no pretrained weights for 'lm_resnet56'"):
        timm.create_model("odearch_lm_resnet56", pretrained=True)
    with pytest.raises(PretrainedError, match=r"no pretrained weights for 'lm_resnet20\.cifar100_s9'"):
        timm.create_model("odearch_lm_resnet20.cifar100_s9", pretrained=True)
    with pytest.raises(ValueError, match="not a file"):  # train.py --pretrained-path: not silently ignored
        timm.create_model("odearch_lm_resnet20", pretrained=True, pretrained_cfg_overlay={"file": "x.pth"})


def test_new_head_keeps_the_backbone_and_the_weights_statistics(no_network: None) -> None:
    name = "lm_resnet20.cifar10_s0"
    tensors = load_weights(pretrained_file(name))[0]
    model = timm.create_model(PREFIX + name, pretrained=True, num_classes=100)
    head = model.pretrained_cfg["classifier"]
    own = model.state_dict()
    assert own[head + ".weight"].shape == (100, model.num_features) and model.num_classes == 100
    assert not torch.equal(own[head + ".bias"][:10], tensors[head + ".bias"])  # fresh
    assert all(torch.equal(own[k], v) for k, v in tensors.items() if not k.startswith(head + "."))
    cfg = resolve_data_config({}, model=model)
    assert (cfg["mean"], cfg["std"]) == _stats(10) and model.pretrained_cfg["num_classes"] == 100
    assert odearch.create_model(name, pretrained=True, num_classes=100).pretrained_cfg["mean"] == data.CIFAR10_MEAN
    grey = timm.create_model(PREFIX + name, pretrained=True, num_classes=100, in_chans=1).pretrained_cfg
    assert grey["input_size"] == (1, 32, 32) and grey["mean"] == (sum(data.CIFAR10_MEAN) / 3,)


@pytest.mark.slow  # a fresh interpreter imports torch, timm and odearch
def test_import_odearch_before_timm_registers() -> None:
    """``import odearch, timm`` registers as ``import timm, odearch`` does (tests/test_ecosystem.py): an import hook."""
    code = (
        "import odearch, timm; names = timm.list_models('odearch_*')\n"
        "print(len(names) == len(odearch.list_models()), 'odearch_lm_resnet20.cifar10_s0' in timm.list_pretrained())"
    )
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert out.stdout.strip() == "True True", out.stderr


# ------------------------------------------------------------------------------------------------- TorchScript
def test_exclude_jit_filters_cover_every_odearch_model_and_nothing_else() -> None:
    ours = set(timm.list_models("odearch_*"))
    assert set(timm.list_models(EXCLUDE_JIT_FILTERS)) == ours == {PREFIX + n for n in odearch.list_models()}
    kept = timm.list_models(exclude_filters=EXCLUDE_JIT_FILTERS)
    assert kept and not ours & set(kept)  # timm's own models stay in a TorchScript test


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_timm_built_odearch_model_refuses_scripting_in_one_sentence() -> None:
    from timm.layers import set_scriptable

    with set_scriptable(True):  # how timm's TorchScript test builds a model
        model = timm.create_model("odearch_lm_resnet20").eval()
    with pytest.raises(RuntimeError, match=r"cannot be scripted with torch\.jit\.script.*torch\.jit\.trace") as err:
        torch.jit.script(model)
    assert "\n" not in str(err.value)
