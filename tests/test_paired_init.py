"""Paired initialisation (issue 31): at one seed an LM net and its plain twin share every initial weight, the global
RNG stream and the data order; old run directories read as the global-RNG init and keep their config hashes."""

from __future__ import annotations

import json

import pytest
import torch

from datapaths import HAS_CIFAR, REPO, SKIP_REASON
from odearch import create_model
from odearch.nn import lm_coefficients, lm_k_draw
from odearch.train import RunDir, TrainConfig, build_model, config_hash

TWINS = [("preact_resnet20", "lm_resnet20"), ("preact_resnet56", "lm_resnet56")]


def _build(name: str, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(seed)
    model = create_model(name)
    return model.state_dict(), torch.get_rng_state()


@pytest.mark.parametrize(("plain", "lm"), TWINS)
def test_twins_share_every_weight_and_the_rng_stream(plain: str, lm: str) -> None:
    p, rng_p = _build(plain, seed=3)
    m, rng_m = _build(lm, seed=3)
    assert set(m) - set(p) == {"stages.0.lm_k", "stages.1.lm_k", "stages.2.lm_k"} and set(p) <= set(m)
    different = [k for k in p if not torch.equal(p[k], m[k])]
    assert different == [], different
    assert torch.equal(rng_p, rng_m)  # what is drawn after the model (e.g. dropout, a probe) is the same too


def test_k_is_still_drawn_from_u_minus_0_1_0_per_seed_and_stage() -> None:
    torch.manual_seed(0)
    ks = lm_coefficients(create_model("lm_resnet56"))
    flat = [k for stage in ks.values() for k in stage]
    assert len(flat) == 24 and all(-0.1 <= k <= 0.0 for k in flat) and len(set(flat)) == 24
    assert ks["stages.0"] != ks["stages.1"]
    torch.manual_seed(1)
    assert lm_coefficients(create_model("lm_resnet56")) != ks


def test_global_draw_is_the_old_init_that_shifts_the_twin() -> None:
    p, _ = _build("preact_resnet20")
    with lm_k_draw("global"):
        m, _ = _build("lm_resnet20")
    convs = [k for k in p if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    assert sum(torch.equal(p[k], m[k]) for k in convs) < len(convs) // 2
    with pytest.raises(ValueError, match="lm_k_draw: kind must be one of"):
        with lm_k_draw("pairwise"):
            pass


def test_run_config_decides_the_init_and_old_runs_read_as_global(tmp_path) -> None:
    new = TrainConfig(model="lm_resnet20")
    assert new.lm_init == "paired"
    torch.manual_seed(0)
    twin = create_model("preact_resnet20").state_dict()
    torch.manual_seed(0)
    assert torch.equal(
        build_model(new).state_dict()["stages.2.blocks.2.conv2.weight"], twin["stages.2.blocks.2.conv2.weight"]
    )
    torch.manual_seed(0)
    old = build_model(new.replace(lm_init="global")).state_dict()
    assert not torch.equal(old["stages.2.blocks.2.conv2.weight"], twin["stages.2.blocks.2.conv2.weight"])
    src = REPO / "results" / "campaign" / "lm_resnet20_s0"
    text = (src / "config.yaml").read_text()
    assert "lm_init" not in text
    (tmp_path / "config.yaml").write_text(text)
    cfg = RunDir(tmp_path).read_config()
    assert cfg.lm_init == "global"
    assert config_hash(cfg) == json.loads((src / "result.json").read_text())["config_hash"]
    assert config_hash(cfg.replace(lm_init="paired")) != config_hash(cfg)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CIFAR, reason=SKIP_REASON)
def test_twins_see_the_same_images_in_the_same_order() -> None:
    from datapaths import CIFAR_ROOT
    from odearch.train.distributed import DistEnv
    from odearch.train.state import build_data

    def first_batches(model: str) -> list[torch.Tensor]:
        cfg = TrainConfig(
            model=model, dataset="cifar10", data_dir=str(CIFAR_ROOT), subset=512, seed=2, batch_size=128, download=False
        )
        loader = build_data(cfg, torch.device("cpu"), DistEnv()).train
        out = []
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            x, y = next(iter(loader))
            out += [x, y]
        return out

    a, b = first_batches("preact_resnet20"), first_batches("lm_resnet20")
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[2])  # the epochs differ: the check would catch a constant plan
