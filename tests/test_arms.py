"""The pre-registered arm test of ``odearch report`` (``odearch.arms``): paired and Welch statistics against hand
computations, the verdict rule of docs/campaign-plan.md, and which runs count in which arm."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from odearch.arms import PairedTest, arm_section, arms_of, headline, paired_test, plot_arm_curves, verdict
from odearch.report import HEADLINE_END, HEADLINE_START, ReportInputError, RunSummary, write_headline

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student-t 97.5 % quantiles (tables)


def _run(
    model: str,
    seed: int,
    phase_err: float,
    *,
    decay: str | None = "kappa",
    complete: bool = True,
    diff: tuple[str, ...] = (),
) -> RunSummary:
    """A finished 160-epoch run whose test error is 20 % before epoch 121 and ``phase_err`` from then on."""
    curve = [(e, 20.0 if e < 121 else phase_err) for e in range(1, 161)]
    lm = model.startswith("lm_")
    recipe_diff = list(diff) + (
        [f"lm_weight_decay {decay!r} (official code 'kappa')"] if lm and decay != "kappa" else []
    )
    return RunSummary(
        name=f"{model}_{decay}_s{seed}",
        path=Path("x"),
        model=model,
        dataset="cifar10",
        seed=seed,
        epochs=160,
        epochs_done=160,
        complete=complete,
        final_err=phase_err,
        best_err=phase_err - 0.1,
        best_epoch=150,
        params=None,
        wall_s=None,
        wall_exact=False,
        img_s=None,
        devices=[],
        commits=[],
        dirty=False,
        precision="bf16 autocast" if seed else "fp32",
        recipe_diff=recipe_diff,
        curve=curve,
        lm_k={"stages.0": [0.1 * seed, -0.05]} if lm else {},
        lm_weight_decay=decay if lm else None,
        last_phase=121,
    )


def test_paired_interval_and_p_match_the_hand_computation() -> None:
    lm, plain = {1: 8.2, 2: 8.1, 3: 8.1}, {1: 8.5, 2: 8.6, 3: 8.5}  # d = -0.3, -0.5, -0.4
    t = paired_test(lm, plain)
    assert t.seeds == [1, 2, 3] and t.mean == pytest.approx(-0.4)
    half = T_975[2] * 0.1 / math.sqrt(3)  # sd of d = 0.1
    assert (t.lo, t.hi) == (pytest.approx(-0.4 - half), pytest.approx(-0.4 + half))
    tstat = -0.4 / (0.1 / math.sqrt(3))  # p of t = -6.93 at 2 df: 2 * (1 - F(|t|)) = 1 - |t| / sqrt(t^2 + 2) for 2 df
    assert t.p == pytest.approx(1 - abs(tstat) / math.sqrt(tstat**2 + 2))
    assert verdict(t) == "reproduced"
    mean_diff, lo, hi, _ = t.welch  # both arms have variance 1/300: Welch-Satterthwaite gives 4 df
    assert mean_diff == pytest.approx(-0.4) and hi - lo == pytest.approx(2 * T_975[4] * math.sqrt(2 / 300 / 3))


def test_pairs_only_common_seeds_and_seed_subsets() -> None:
    t = paired_test({0: 9.0, 1: 8.0, 2: 8.0}, {1: 8.5, 2: 8.3, 3: 8.0})
    assert t.seeds == [1, 2] and t.diffs == pytest.approx([-0.5, -0.3])
    assert paired_test({0: 9.0, 1: 8.0, 2: 8.0}, {0: 8.0, 1: 8.5, 2: 8.3}, [1, 2]).seeds == [1, 2]
    one = paired_test({0: 9.0}, {0: 8.6})
    assert one.n == 1 and one.lo is None and verdict(one) == "undecided" and one.welch is None


@pytest.mark.parametrize(
    ("lo", "hi", "word"),
    [
        (-0.6, -0.1, "reproduced"),
        (-0.15, -0.05, "reproduced, but smaller than 0.2 points"),
        (-0.19, 0.4, "not reproduced"),
        (-0.5, 0.1, "inconclusive"),
        (-0.2, 0.0, "inconclusive"),
    ],
)
def test_the_registered_verdict_rule(lo: float, hi: float, word: str) -> None:
    assert verdict(PairedTest([1, 2], [lo, hi], (lo + hi) / 2, lo, hi, 0.5, None)) == word


def test_arms_count_finished_recipe_runs_and_the_section_states_the_verdict(tmp_path: Path) -> None:
    runs = [_run("preact_resnet20", s, e) for s, e in ((0, 8.6), (1, 8.5), (2, 8.7), (3, 8.4))]
    runs += [_run("lm_resnet20", s, e) for s, e in ((0, 8.96), (1, 8.9), (2, 8.8), (3, 8.9))]
    runs += [_run("lm_resnet20", s, e, decay="none") for s, e in ((1, 8.3), (2, 8.5), (3, 8.2))]
    runs += [
        _run("lm_resnet20", 4, 5.0, complete=False),
        _run("preact_resnet20", 4, 5.0, diff=("subset 5000",)),
        _run("resnet20", 0, 8.75),
    ]  # in progress, another recipe, not a twin: none counts
    ((plain, lms),) = arms_of(runs)
    assert sorted(plain.runs) == [0, 1, 2, 3] and [a.decay for a in lms] == ["kappa", "none"]
    assert sorted(lms[0].runs) == [0, 1, 2, 3] and sorted(lms[1].runs) == [1, 2, 3]
    text = "\n".join(arm_section(runs, tmp_path))
    b = paired_test(lms[0].primary(), plain.primary())
    assert b.diffs == pytest.approx([0.36, 0.4, 0.1, 0.5])
    assert verdict(b) == "not reproduced"
    assert (
        f"**not reproduced**: LM - plain = {b.mean:+.2f} points (95 % CI {b.lo:+.2f}..{b.hi:+.2f}, n = 4, "
        f"p = {b.p:.3f})"
    ) in text
    c = paired_test(lms[1].primary(), plain.primary())
    assert c.n == 3 and f"n = 3, p = {c.p:.3f}" in text
    assert "| A | `preact_resnet20` | 4 | 0, 1, 2, 3 | 8.55 ± 0.13 |" in text
    assert "seeds ≥ 1 (paired init)" in text  # the sensitivity row without the unpaired seed 0
    assert "| `lm_resnet20`, decay on kappa = 1 - k (official) | stages.0 | 4 | 0.150 ± 0.129, -0.050 ± 0.000 |" in text
    paths = plot_arm_curves(runs, tmp_path)
    assert [p.name for p in paths] == ["arms_cifar10_resnet20.png"] and paths[0].stat().st_size > 1000


def test_a_verdict_on_fewer_than_the_registered_seeds_says_it_is_interim(tmp_path: Path) -> None:
    """The plan registers seeds 0-3 for arm B: with 2 finished the verdict carries "interim: 2 of the 4"; with all
    four it does not; a net the plan registers nothing for never does."""
    plain = [_run("preact_resnet20", s, e) for s, e in ((0, 8.6), (1, 8.5), (2, 8.7), (3, 8.4))]
    lm = [_run("lm_resnet20", s, e) for s, e in ((0, 8.96), (1, 8.9), (2, 8.8), (3, 8.9))]
    two = "\n".join(arm_section([*plain, *lm[:2]], tmp_path))
    assert "**not reproduced** (interim: 2 of the 4 registered seeds): LM - plain = +0.38 points" in two
    assert "| not reproduced (interim: 2 of the 4 registered seeds) |" in two
    assert headline([*plain, *lm[:2]], "r.md")[2].startswith(
        "- `lm_resnet20`, decay on kappa = 1 - k (official) against `preact_resnet20`: **not reproduced** (interim: 2"
    )
    assert "interim" not in "\n".join(arm_section([*plain, *lm], tmp_path))
    other = [_run("preact_resnet32", s, 8.0 - s / 10) for s in (1, 2)] + [
        _run("lm_resnet32", s, 8.0 + s / 4) for s in (1, 2)
    ]
    assert "interim" not in "\n".join(arm_section(other, tmp_path))


def test_no_arms_no_section(tmp_path: Path) -> None:
    assert arm_section([_run("resnet20", 0, 8.75), _run("lm_resnet20", 0, 9.0)], tmp_path) == []


def test_the_headline_is_the_sections_verdicts_and_ignores_runs_in_progress() -> None:
    runs = [_run("preact_resnet20", s, e) for s, e in ((0, 8.6), (1, 8.5))]
    runs += [_run("lm_resnet20", s, e) for s, e in ((0, 8.96), (1, 8.9))]
    lines = headline(runs, "docs/results.md")
    assert lines[0].endswith("k_n in [docs/results.md](docs/results.md)):") and "epochs 121-160" in lines[0]
    verdicts = [line for line in arm_section(runs, Path(".")) if line.startswith("- ")]
    assert lines[2:] == verdicts and len(verdicts) == 1 and "**undecided**" not in verdicts[0]
    assert headline([*runs, _run("lm_resnet20", 2, 5.0, complete=False)], "docs/results.md") == lines
    assert headline(runs[:2], "r.md")[2:] == ["- no finished run in both arms of a test yet."]


def test_write_headline_rewrites_only_the_block_between_its_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nabove\n\n{HEADLINE_START}\ntyped by hand\n{HEADLINE_END}\n\nbelow\n")
    runs = [_run("preact_resnet20", 0, 8.6), _run("lm_resnet20", 0, 8.96)]
    write_headline(readme, runs, tmp_path / "docs" / "results.md")
    text = readme.read_text()
    assert text.startswith(f"# x\n\nabove\n\n{HEADLINE_START}\nThe pre-registered test") and "typed" not in text
    assert text.endswith(f"LM - plain = +0.36 points (n = 1: no interval yet).\n{HEADLINE_END}\n\nbelow\n")
    write_headline(readme, runs, tmp_path / "docs" / "results.md")
    assert readme.read_text() == text  # regenerating changes nothing
    readme.write_text("# no markers\n")
    with pytest.raises(ReportInputError, match="results-headline:start"):
        write_headline(readme, runs, tmp_path / "results.md")
    assert readme.read_text() == "# no markers\n"
