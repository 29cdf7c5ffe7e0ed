"""odearch among timm, torchvision and torch.hub: timm's model options, hub and timm entry points, fx / compile /
jit.trace, the akamaster converter, progress output and the initial k_n of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import odearch
from conftest import needs_cifar
from datapaths import CIFAR_ROOT, REPO
from doctext import doc_text
from odearch.models import build_cifar_resnext, build_preact_resnet, build_shake_resnet
from odearch.models.imagenet_resnet import imagenet_resnet

# one small model per family / scheme (full-size ones where they are cheap); (builder, input size)
FAMILIES = {
    "resnet20": (lambda **kw: odearch.create_model("resnet20", **kw), 32),
    "lm_resnet20": (lambda **kw: odearch.create_model("lm_resnet20", **kw), 32),
    "lm_resnet56_sd": (lambda **kw: odearch.create_model("lm_resnet56_sd", **kw), 32),
    "rk2_resnet20": (lambda **kw: odearch.create_model("rk2_resnet20", **kw), 32),
    "ab2_resnet20": (lambda **kw: odearch.create_model("ab2_resnet20", **kw), 32),
    "poly2_resnet20": (lambda **kw: odearch.create_model("poly2_resnet20", **kw), 32),
    "rev_resnet20": (lambda **kw: odearch.create_model("rev_resnet20", **kw), 32),
    "dense_resnet20": (lambda **kw: odearch.create_model("dense_resnet20", **kw), 32),
    "fractal_resnet20": (lambda **kw: odearch.create_model("fractal_resnet20", **kw), 32),
    "lm_channel": (lambda **kw: build_preact_resnet(layers=(2, 2, 2), scheme="lm_channel", **kw), 32),
    "lm_resnext": (lambda **kw: build_cifar_resnext(2, 4, scheme="lm", depth=11, history_projection=True, **kw), 32),
    "lm_shake": (lambda **kw: build_shake_resnet(depth=8, base_width=8, scheme="lm", **kw), 32),
    "lm_imagenet": (lambda **kw: imagenet_resnet((1, 2, 2, 1), bottleneck=False, scheme="lm", **kw), 64),
}


def _x(size: int, batch: int = 2, chans: int = 3) -> torch.Tensor:
    return torch.randn(batch, chans, size, size)


# ------------------------------------------------------------------------------------------ timm's model options
@pytest.mark.parametrize("name", ["resnet20", "lm_resnet20", "rev_resnet20", "lm_shake_resnet26_2x32d", "lm_resnet50"])
def test_num_classes_zero_returns_pooled_features(name: str) -> None:
    size = 64 if name == "lm_resnet50" else 32
    torch.manual_seed(0)
    full = odearch.create_model(name).eval()
    torch.manual_seed(0)
    pooled = odearch.create_model(name, num_classes=0).eval()
    x = _x(size)
    out = pooled(x)
    assert out.shape == (2, pooled.num_features) and pooled.num_classes == 0
    assert isinstance(pooled.get_classifier(), nn.Identity)
    torch.testing.assert_close(out, full.forward_head(full.forward_features(x), pre_logits=True))


def test_reset_and_get_classifier() -> None:
    model = odearch.create_model("lm_resnet20")
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 10
    model.reset_classifier(100)
    assert model(_x(32)).shape == (2, 100) and model.num_classes == 100 and model.pretrained_cfg["num_classes"] == 100
    model.reset_classifier(0)
    assert model(_x(32)).shape == (2, 64)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_features_only_returns_stage_outputs_with_feature_info(family: str) -> None:
    build, size = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    info = model.feature_info
    torch.manual_seed(0)
    feats = build()
    feats.set_features_only()
    feats.eval()
    x = _x(size)
    outs = feats(x)
    assert [o.shape[1] for o in outs] == info.channels()
    assert [size // o.shape[-1] for o in outs] == info.reduction()
    torch.testing.assert_close(outs[-1], model.forward_features(x))
    assert not any(k.startswith(("head.", "fc.")) for k in feats.state_dict())


def test_create_model_features_only_and_out_indices() -> None:
    feats = odearch.create_model("lm_resnet50", features_only=True, out_indices=(1, -1)).eval()
    outs = feats(_x(64, batch=1))
    assert [o.shape[1] for o in outs] == feats.feature_info.channels() == [512, 2048]
    assert feats.feature_info.reduction() == [8, 32] and feats.feature_info.module_name() == ["layer2", "layer4"]
    with pytest.raises(ValueError, match="features_only"):
        odearch.create_model("lm_resnet20", out_indices=(0,))


def test_feature_info_probe_changes_no_state() -> None:
    model = odearch.create_model("lm_resnet56_sd")  # training mode, stochastic depth
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert model.feature_info.channels() == [16, 32, 64]
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["resnet20", "lm_resnet20", "lm_resnet50"])
def test_in_chans_adapts_the_first_convolution(name: str) -> None:
    """in_chans=1 sums the RGB filters: a grey image gives the RGB model's output on that image repeated."""
    size = 64 if name == "lm_resnet50" else 32
    torch.manual_seed(0)
    rgb = odearch.create_model(name).eval()
    torch.manual_seed(0)
    grey = odearch.create_model(name, in_chans=1).eval()
    x = _x(size, chans=1)
    torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
    assert grey.in_chans == 1 and grey.pretrained_cfg["input_size"][0] == 1
    five = odearch.create_model(name, in_chans=5).eval()
    assert five(_x(size, chans=5)).shape[1] == five.num_classes


def test_pretrained_cfg_has_the_data_set_statistics() -> None:
    from odearch import data

    c10 = odearch.create_model("lm_resnet20").pretrained_cfg
    assert c10["input_size"] == (3, 32, 32) and c10["crop_pct"] == 1.0 and c10["num_classes"] == 10
    assert c10["mean"] == data.CIFAR10_MEAN and c10["std"] == data.CIFAR10_STD
    assert c10["architecture"] == "lm_resnet20" and c10["classifier"] == "head.4" and c10["first_conv"] == "stem"
    c100 = odearch.create_model("lm_resnet20", num_classes=100).pretrained_cfg
    assert c100["mean"] == data.CIFAR100_MEAN and c100["std"] == data.CIFAR100_STD
    inet = odearch.create_model("lm_resnet50").default_cfg
    assert inet["input_size"] == (3, 224, 224) and inet["mean"] == data.IMAGENET_MEAN
    assert inet["std"] == data.IMAGENET_STD and inet["classifier"] == "fc" and inet["first_conv"] == "conv1"


def test_drop_path_rate_is_one_minus_p_last() -> None:
    for name, blocks in (("lm_resnet56", 27), ("resnet20", 9), ("lm_resnet50", 16)):
        model = odearch.create_model(name, drop_path_rate=0.2)
        survival = [p for s in model.stages for p in s.survival]
        assert len(survival) == blocks and survival[0] == 1.0 and survival[-1] == pytest.approx(0.8)
    same = odearch.create_model("lm_resnet56", drop_path_rate=0.2, p_last=0.8)
    assert same.stages[-1].survival[-1] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="p_last"):
        odearch.create_model("lm_resnet56", drop_path_rate=0.2, p_last=0.5)
    assert odearch.create_model("lm_resnet56_sd", drop_path_rate=0.0).stages[0].survival is None


# ------------------------------------------------------------------------------- torch.hub, --version, timm
def test_torch_hub_loads_from_a_local_clone() -> None:
    model = torch.hub.load(str(REPO), "lm_resnet20", source="local", pretrained=False, num_classes=100)
    assert type(model).__name__ == "ResidualNetwork" and model(_x(32)).shape == (2, 100)
    feats = torch.hub.load(str(REPO), "resnet56", source="local", features_only=True)
    assert feats.feature_info.channels() == [16, 32, 64]


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from odearch.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"odearch {odearch.__version__}"


def test_timm_registration_and_data_config() -> None:
    timm = pytest.importorskip("timm", reason="timm is optional (not a dependency of odearch)")
    from odearch import data
    from odearch.timm_models import register_timm

    names = register_timm()
    assert "odearch_lm_resnet20" in names and set(timm.list_models("odearch_*")) == set(names)
    model = timm.create_model(
        "odearch_lm_resnet20", pretrained=False, num_classes=100, drop_rate=0.0, drop_path_rate=0.1
    )  # train.py's arguments
    assert model(_x(32)).shape == (2, 100) and model.stages[-1].survival[-1] == pytest.approx(0.9)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == data.CIFAR100_MEAN
    assert timm.models.get_pretrained_cfg("odearch_resnet20").mean == data.CIFAR10_MEAN
    feats = timm.create_model("odearch_lm_resnet50", features_only=True, out_indices=(3,))
    assert feats.feature_info.channels() == [2048]
    assert timm.create_model("odearch_resnet20", drop_rate=0.5).drop_rate == 0.5  # dropout before the classifier
    with pytest.raises(ValueError, match="drop_block_rate"):
        timm.create_model("odearch_resnet20", drop_block_rate=0.5)


@pytest.mark.slow
def test_timm_scripts_and_import_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m odearch.timm_models SCRIPT ARGS`` registers, then runs SCRIPT (timm's train.py) with ARGS; and
    ``import timm, odearch`` registers by itself."""
    pytest.importorskip("timm", reason="timm is optional (not a dependency of odearch)")
    import subprocess
    import sys

    from odearch.timm_models import main

    script = tmp_path / "train.py"
    script.write_text(
        "import sys, timm\nm = timm.create_model(sys.argv[2], num_classes=3)\n"
        "print('built', sys.argv[2], m.num_classes)\n"
    )
    main([str(script), "--model", "odearch_lm_resnet20"])
    assert "built odearch_lm_resnet20 3" in capsys.readouterr().out
    code = "import timm, odearch; print(len(timm.list_models('odearch_*')) == len(odearch.list_models()))"
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.strip() == "True", out.stderr


# -------------------------------------------------------------------------------------- fx, compile, jit.trace
@pytest.mark.filterwarnings("ignore:.*nodes obtained by tracing the model:UserWarning")  # torchvision's train/eval note
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fx_symbolic_trace_and_create_feature_extractor(family: str) -> None:
    from torchvision.models.feature_extraction import create_feature_extractor

    build, size = FAMILIES[family]
    model = build().eval()
    x = _x(size)
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))
    names = model.feature_info.module_name()
    extractor = create_feature_extractor(model, return_nodes={n: n for n in names})
    out = extractor(x)
    for name, ref in zip(names, model.stage_outputs(x)):
        torch.testing.assert_close(out[name], ref)


@pytest.mark.parametrize("family", ["lm_resnet20", "rev_resnet20", "lm_resnext", "lm_imagenet"])
def test_torch_export_matches_eager(family: str) -> None:
    build, size = FAMILIES[family]
    model = build().eval()
    x = _x(size)
    torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), model(x))


@pytest.mark.slow
def test_exported_training_graph_draws_stochastic_depth() -> None:
    model = odearch.create_model("lm_resnet56_sd").train()
    graph = torch.export.export(model, (_x(32),)).graph
    assert sum("bernoulli" in str(n.target) for n in graph.nodes) == 26


def test_traced_training_graph_draws_stochastic_depth() -> None:
    """fx in training mode records the per-batch draw (a bernoulli node), instead of baking one draw in."""
    model = odearch.create_model("lm_resnet56_sd")
    graph = torch.fx.symbolic_trace(model).graph
    draws = [n for n in graph.nodes if "bernoulli" in str(n.target)]
    assert len(draws) == 26  # every block but the first (p = 1)


@pytest.mark.slow
def test_batch_stochastic_depth_compiles_fullgraph_and_keeps_its_law() -> None:
    """Under torch.compile(fullgraph=True) a per-batch gate is a 0-d tensor eta / p: the step is u or u + f / p."""
    stage = odearch.Stage("euler", [nn.Conv2d(2, 2, 1, bias=False)], survival=[0.5], drop_mode="batch").train()
    compiled = torch.compile(stage, backend="eager", fullgraph=True)
    u = torch.randn(1, 2, 3, 3)
    f = stage.blocks[0](u).detach()
    kept = dropped = 0
    with torch.no_grad():
        for _ in range(60):
            out = compiled(u)
            if torch.allclose(out, u):
                dropped += 1
            else:
                torch.testing.assert_close(out, u + 2 * f)
                kept += 1
    assert kept > 10 and dropped > 10
    model = odearch.create_model("lm_resnet20", p_last=0.5, drop_mode="batch").train()
    loss = torch.compile(model, backend="eager", fullgraph=True)(_x(32)).sum()
    loss.backward()


def test_eager_batch_stochastic_depth_still_skips_dropped_blocks() -> None:
    calls = []
    fn = nn.Conv2d(2, 2, 1)
    fn.register_forward_hook(lambda *_: calls.append(1))
    stage = odearch.Stage("euler", [fn] * 40, survival=[0.5] * 40).train()
    stage(torch.randn(1, 2, 3, 3))
    assert 5 < len(calls) < 35


@pytest.mark.filterwarnings("ignore:.*is deprecated. Please switch to:FutureWarning")  # torch 2.14 deprecates jit
def test_jit_trace_is_the_torchscript_route_and_readme_says_so() -> None:
    model = odearch.create_model("lm_resnet20").eval()
    x = _x(32)
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), model(x))
    with pytest.raises(Exception):  # noqa: B017  (whatever TorchScript's compiler raises)
        torch.jit.script(model)
    readme = doc_text()
    assert "`torch.jit.script` is not supported" in readme and "`torch.jit.trace`" in readme


# ---------------------------------------------------------------------------------------------------- akamaster
class _AkaBlock(nn.Module):
    """akamaster's BasicBlock with option-A shortcut (their resnet.py, attribute names kept)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if stride != 1 or in_planes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class _AkaResNet(nn.Module):
    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes = 16
        for i, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(_AkaBlock(planes, width, stride if j == 0 else 1))
                planes = width
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def test_akamaster_checkpoint_converts_to_the_same_function(tmp_path: Path) -> None:
    from odearch.cli import main
    from odearch.train import load_weights

    torch.manual_seed(0)
    ref = _AkaResNet(3)
    for m in ref.modules():  # non-trivial BN statistics, so that a mis-assigned buffer shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    ref.eval()
    th = tmp_path / "resnet20-12fca82f.th"
    state = {"module." + k: v for k, v in ref.state_dict().items()}  # their DataParallel checkpoints
    torch.save({"state_dict": state, "best_prec1": 91.73}, th)
    out = tmp_path / "resnet20.safetensors"
    assert main(["convert", "akamaster", str(th), str(out)]) == 0
    tensors, meta = load_weights(out)
    assert meta["model"] == "resnet20" and meta["num_classes"] == 10 and meta["best_prec1"] == pytest.approx(91.73)
    model = odearch.create_model("resnet20")
    model.load_state_dict(tensors)
    x = _x(32, batch=4)
    torch.testing.assert_close(model.eval()(x), ref(x))
    model2, info = odearch.convert.load_akamaster(str(th))
    assert info["model"] == "resnet20"
    torch.testing.assert_close(model2(x), ref(x))
    with pytest.raises(ValueError, match="akamaster"):
        odearch.convert.akamaster_state_dict({"module.layer1.0.shortcut.0.weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------- progress and k_n(0)
@pytest.mark.slow
@needs_cifar
def test_fit_without_a_terminal_prints_progress_and_stores_initial_k(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from odearch.analysis.command import load_source
    from odearch.train import TrainConfig, fit

    cfg = TrainConfig.from_dict(
        {
            "model": "lm_resnet20",
            "subset": 128,
            "batch_size": 32,
            "epochs": 1,
            "eval_subset": 64,
            "data_dir": str(CIFAR_ROOT),
            "download": False,
            "tensorboard": False,
            "log_every": 2,
            "out": str(tmp_path / "run"),
        }
    )
    fit(cfg, progress_bar=False)
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("epoch 1 step ")]
    assert [s.split()[3] for s in steps] == ["2/4", "4/4"] and all("run ETA" in s for s in steps)
    assert any(line.startswith("evaluating on test") for line in lines)
    init = json.loads((tmp_path / "run" / "lm_k_init.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert init["epoch"] == 0 and init["lm_k"].keys() == rows[0]["lm_k"].keys()
    k0 = [k for ks in init["lm_k"].values() for k in ks]
    assert len(k0) == 6 and all(-0.1 <= k <= 0.0 for k in k0)  # the U[-0.1, 0] draw, before any step
    assert k0 != [k for ks in rows[0]["lm_k"].values() for k in ks]
    metrics = load_source(tmp_path / "run").metrics
    assert [r["epoch"] for r in metrics] == [0, 1]
    assert [r["epoch"] for r in rows] == [1]  # metrics.jsonl rows unchanged: one per finished epoch
