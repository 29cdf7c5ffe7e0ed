"""The registry: literal rows, pinned names and parameter counts, one stochastic-options value and one model-option
check for every family, and the stage assembly they share (``make_stages``)."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import odearch
from odearch.models import (
    StageSpec,
    StochasticDepth,
    create_model,
    list_models,
    make_stages,
    model_entrypoint,
    model_options,
    model_table,
)
from odearch.nn import BasicBlock, Projection, Stage

# Every registered name with its parameter count (the entry's own classifier), pinned: a refactor of the registry
# must keep both (the list is `odearch models` before issue 17's restructuring).
PINNED = {
    "ab2_resnet20": 272_378,
    "dense_resnet110": 1_731_128,
    "dense_resnet20": 272_393,
    "fractal_resnet20": 471_482,
    "lm_resnet1001": 10_328_452,
    "lm_resnet101": 44_549_189,
    "lm_resnet110": 1_730_669,
    "lm_resnet110_sd": 1_730_669,
    "lm_resnet152": 60_192_854,
    "lm_resnet164": 1_703_725,
    "lm_resnet20": 272_384,
    "lm_resnet32": 466_822,
    "lm_resnet44": 661_260,
    "lm_resnet50": 25_557_044,
    "lm_resnet56": 855_698,
    "lm_resnet56_sd": 855_698,
    "lm_resnext29_16x64d": 68_813_648,
    "lm_resnext29_8x64d": 35_085_136,
    "lm_resnext50_32x4d": 25_028_916,
    "lm_shake_resnet26_2x32d": 2_923_171,
    "poly2_resnet20": 272_378,
    "preact_resnet1001": 10_328_122,
    "preact_resnet110": 1_730_618,
    "preact_resnet110_sd": 1_730_618,
    "preact_resnet164": 1_703_674,
    "preact_resnet20": 272_378,
    "preact_resnet32": 466_810,
    "preact_resnet44": 661_242,
    "preact_resnet56": 855_674,
    "preact_resnet56_sd": 855_674,
    "resnet101": 44_549_160,
    "resnet110": 1_727_962,
    "resnet110_sd": 1_727_962,
    "resnet1202": 19_421_274,
    "resnet152": 60_192_808,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet50": 25_557_032,
    "resnet56": 853_018,
    "resnet56_sd": 853_018,
    "resnext29_16x64d": 68_155_210,
    "resnext29_8x64d": 34_426_698,
    "resnext50_32x4d": 25_028_904,
    "rev_resnet110": 905_786,
    "rev_resnet164": 926_842,
    "rev_resnet20": 173_306,
    "rev_resnet56": 466_298,
    "rk2_resnet20": 272_378,
    "rk4_resnet20": 272_378,
    "shake_resnet26_2x32d": 2_923_162,
}


@pytest.mark.slow
def test_registry_names_and_parameter_counts_are_pinned() -> None:
    rows = {r["name"]: r["params"] for r in model_table()}
    assert rows == PINNED


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_name_is_a_literal_row_of_its_family_file(name: str) -> None:
    """``grep -rn '"lm_resnet56_sd"' src/`` finds the row that defines the name (no rows made by f-strings)."""
    module = model_entrypoint(name).__module__
    path = Path(odearch.__file__).parent / "models" / f"{module.rsplit('.', 1)[-1]}.py"
    assert re.search(rf'^    "{re.escape(name)}": \(', path.read_text(), re.MULTILINE), (
        f"{name} not a row of {path.name}"
    )


# ------------------------------------------------------------------------------------------ stochastic depth
def _survival(model: nn.Module) -> list[float]:
    return [p for s in model.modules() if isinstance(s, Stage) for p in (s.survival or (1.0,) * len(s.blocks))]


@pytest.mark.parametrize(
    "name", ["resnet20", "preact_resnet20", "resnext29_8x64d", "shake_resnet26_2x32d", "lm_resnet50"]
)
def test_every_family_takes_one_stochastic_depth_value(name: str) -> None:
    """``stochastic=StochasticDepth(...)`` and its fields as keywords build the same gates:
    p_i = 1 - i / (n - 1) (1 - p_L) over all n blocks of the network, every stage in the given mode and noise."""
    with torch.device("meta"):
        a = create_model(name, stochastic=StochasticDepth(p_last=0.5, drop_mode="sample", noise_sigma=0.1))
        b = create_model(name, p_last=0.5, drop_mode="sample", noise_sigma=0.1)
    probs = _survival(a)
    n = len(probs)
    assert probs == _survival(b) and probs[0] == 1.0 and probs[-1] == 0.5
    assert probs == pytest.approx([1 - i / (n - 1) * 0.5 for i in range(n)])
    stages = [s for s in a.modules() if isinstance(s, Stage)]
    assert {(s.drop_mode, s.noise_sigma) for s in stages} == {("sample", 0.1)}


def test_imagenet_resnet_takes_p_last_and_builds_drop_gates() -> None:
    with torch.device("meta"):
        model = create_model("lm_resnet50", p_last=0.8)
    probs = _survival(model)
    assert len(probs) == 16 and probs[0] == 1.0 and probs[-1] == pytest.approx(0.8)
    assert all(s.survival is not None for s in model.stages)


def test_stochastic_depth_is_validated_once_when_made() -> None:
    for kwargs, message in [
        ({"p_last": 0.0}, "p_last"),
        ({"drop_mode": "layer"}, "drop_mode"),
        ({"noise_sigma": float("nan")}, "noise_sigma"),
    ]:
        with pytest.raises(ValueError, match=message):
            StochasticDepth(**kwargs)
    off = StochasticDepth()
    assert off.stage_kwargs([2, 1]) == [{"survival": None, "drop_mode": "batch", "noise_sigma": None}] * 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        off.p_last = 0.5  # type: ignore[misc]


def test_loose_keywords_update_the_rows_stochastic_value() -> None:
    """``lm_resnet56_sd`` (p_L = 0.8) with ``drop_mode="sample"`` keeps its p_L; a whole ``stochastic=`` replaces it."""
    with torch.device("meta"):
        sample = create_model("lm_resnet56_sd", drop_mode="sample")
        replaced = create_model("lm_resnet56_sd", stochastic=StochasticDepth())
    assert _survival(sample)[-1] == pytest.approx(0.8) and sample.stages[0].drop_mode == "sample"
    assert set(_survival(replaced)) == {1.0}


# --------------------------------------------------------------------------------------------- model options
def test_an_option_a_model_does_not_take_names_the_models_that_do() -> None:
    with pytest.raises(ValueError, match="shake_resnet26_2x32d") as err:
        create_model("lm_resnet20", shake=True)
    assert "\n" not in str(err.value) and "lm_resnet20" in str(err.value)
    with pytest.raises(ValueError, match="did you mean 'p_last'"):
        create_model("lm_resnet20", p_lst=0.5)
    assert create_model("lm_shake_resnet26_2x32d", shake=False, depth=8).num_classes == 10


def test_every_model_takes_scheme_num_classes_and_the_stochastic_options() -> None:
    common = {"scheme", "num_classes", "stochastic", "p_last", "drop_mode", "noise_sigma"}
    for name in list_models():
        options = model_options(name)
        assert options is not None and common <= options, name
    assert model_options("resnet20") is not None and "shake" not in model_options("resnet20")  # type: ignore[operator]


def test_cli_model_flags_say_which_models_take_them() -> None:
    from odearch.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    helps = {a.dest: " ".join((a.help or "").split()) for a in train._actions}
    assert "only lm_shake_resnet26_2x32d, shake_resnet26_2x32d" in helps["mk_shake"]
    assert "only" not in helps["mk_p_last"]


# ------------------------------------------------------------------------------------------------ make_stages
def test_make_stages_chains_widths_and_cuts_the_decay_per_stage() -> None:
    specs = [StageSpec(8, 8, 2), StageSpec(16, 16, 3, stride=2, history=True)]
    stages = make_stages(
        "lm",
        specs,
        4,
        block=BasicBlock,
        shortcut=Projection,
        history_shortcut=Projection,
        post_act=nn.ReLU,
        stochastic=StochasticDepth(p_last=0.6),
    )
    assert [len(s.blocks) for s in stages] == [2, 3]
    assert stages[0].shortcut is not None and stages[1].history_shortcut is not None
    assert stages[0].history_shortcut is None and isinstance(stages[1].post_act, nn.ReLU)
    assert stages[0].survival == pytest.approx((1.0, 0.9)) and stages[1].survival == pytest.approx((0.8, 0.7, 0.6))
    u = torch.randn(2, 4, 8, 8)
    for s in stages:
        u = s.eval()(u)
    assert u.shape == (2, 16, 4, 4)
    with pytest.raises(ValueError, match="no shortcut"):
        make_stages("euler", specs, 4, block=BasicBlock, shortcut=None)
