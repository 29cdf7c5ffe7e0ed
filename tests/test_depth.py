"""The depth amendment's registered rules (:mod:`odearch.depth`), on run summaries whose primary metric is set
exactly: a flat test-error curve makes the mean over epochs 121-160 that error."""

from __future__ import annotations

from pathlib import Path

import pytest

from odearch.depth import depth_section, depth_sentences
from odearch.report import render
from odearch.runsummary import RunSummary
from test_arms import _run


def run(model: str, seed: int, err: float, decay: str = "kappa", epochs: int = 160) -> RunSummary:
    """A CIFAR-10 run at the paper's recipe (arm C: but for its LM decay) whose primary metric is ``err``; fewer
    ``epochs``: unfinished."""
    return _run(model, seed, err, decay=decay, complete=epochs == 160)


def twenty(diffs: dict[int, float], plain: float = 8.0) -> list[RunSummary]:
    """Arms A and B at 20 layers, plain at ``plain`` + seed / 10, with LM - plain = ``diffs[seed]``."""
    pairs = (
        (run("preact_resnet20", s, plain + s / 10), run("lm_resnet20", s, plain + s / 10 + d)) for s, d in diffs.items()
    )
    return [r for pair in pairs for r in pair]


def fifty_six(diff: float, plain: float = 7.0) -> list[RunSummary]:
    return [run("preact_resnet56", 1, plain), run("lm_resnet56", 1, plain + diff)]


SHALLOW = {0: 0.1, 1: 0.3, 2: 0.2, 3: 0.4}  # mean +0.25, sd 0.129


@pytest.mark.parametrize(("deep", "word"), [(0.10, "consistent"), (0.13, "not consistent"), (0.5, "not consistent")])
def test_the_depth_trend_needs_the_deep_gap_below_the_shallow_mean_by_one_sd(deep: float, word: str) -> None:
    trend = depth_sentences(twenty(SHALLOW) + fifty_six(deep))[0]
    assert f"LM − plain = {deep:+.2f} points at 56 layers (n = 1) against +0.25 ± 0.13 at 20 layers (n = 4)" in trend
    assert f"**{word}** with a gain that grows with depth" in trend


def test_the_depth_trend_waits_for_its_runs() -> None:
    assert "**waits**" in depth_sentences(twenty(SHALLOW))[0]
    assert "**waits**" in depth_sentences(twenty({1: 0.2}) + fifty_six(-1.0))[0]  # one 20-layer seed: no sd
    unfinished = [run("preact_resnet56", 1, 7.0), run("lm_resnet56", 1, 6.0, epochs=100)]
    assert "**waits**" in depth_sentences(twenty(SHALLOW) + unfinished)[0]


@pytest.mark.parametrize(
    ("c_minus_b", "word"),
    [
        ({1: -0.3, 2: -0.2, 3: -0.2}, "**holds**, `lm_resnet56` arm C"),
        ({1: -0.3, 2: -0.2, 3: -0.0}, "**fails**"),
        ({1: -0.3, 2: -0.3}, "**undecided** (2 of 3 seeds: C − B = -0.30 so far)"),
        ({0: -0.9, 1: -0.3, 2: -0.3}, "**undecided** (2 of 3 seeds"),  # seed 0 is not registered for C
    ],
)
def test_arm_c_at_56_layers_follows_the_20_layer_c_minus_b(c_minus_b: dict[int, float], word: str) -> None:
    arm_c = [run("lm_resnet20", s, 8.3 + s / 10 + d, "none") for s, d in c_minus_b.items()]
    runs = twenty({0: 0.3, 1: 0.3, 2: 0.3, 3: 0.3}) + arm_c
    assert word in depth_sentences(runs)[1]


def test_resnet110_only_when_lm56_beats_its_twin_and_then_the_claim_is_read() -> None:
    assert "**fails**, ResNet-110 is not run" in depth_sentences(twenty(SHALLOW) + fifty_six(-0.29))[2]
    holds = twenty(SHALLOW) + fifty_six(-0.4)  # LM-56 at 6.60
    assert "**holds**, `resnet110` seed 1 joins the queue" in depth_sentences(holds)[2]
    short = _run("resnet110", 1, 6.0, diff=("20 epochs",))  # not the recipe: does not count
    assert "joins the queue" in depth_sentences([*holds, short])[2]
    matches = depth_sentences([*holds, run("resnet110", 1, 6.6)])[2]
    assert "LM-ResNet-56 6.60 % against ResNet-110 6.60 % (n = 1): **matches**" in matches
    assert "**does not match**" in depth_sentences([*holds, run("resnet110", 1, 6.59)])[2]


def test_depth_table_and_its_place_in_the_report() -> None:
    assert depth_section([run("preact_resnet56", 1, 7.0), run("lm_resnet56", 1, 7.1)]) == []  # no 20-layer test
    runs = twenty(SHALLOW) + fifty_six(0.1)
    section = depth_section(runs)
    assert "| 20 | 8.15 (n = 4) | 8.40 (n = 4) | +0.25 ± 0.13 (4) | 8.75 | 8.33 (?) | -0.42 (?) |" in section
    assert "| 56 | 7.00 (n = 1) | 7.10 (n = 1) | +0.10 (1) | 6.97 | 6.31 (?) | -0.66 (?) |" in section
    md = render(runs, Path("/docs/results.md"), "odearch report")
    assert md.index("## Is the LM gain real?") < md.index("## Depth: does the LM gain grow")
