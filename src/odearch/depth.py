"""Depth and compression (issue 32; ``docs/campaign-plan.md``, the 56-layer amendment), generated from the runs.

The plan registers one seed of the 56-layer twins (``preact_resnet56`` and ``lm_resnet56`` with the official decay
on kappa, arm B) after the 20-layer test, and three rules that this module applies to the numbers, on the same
primary metric (mean test error over the last lr phase, :func:`odearch.runsummary.last_phase_mean`):

- the depth trend is *consistent* with "the LM gain grows with depth" only if the 56-layer LM - plain lies below the
  20-layer mean LM - plain (arm B against A) by more than the 20-layer seed-to-seed standard deviation of it;
- arm C at 56 layers is run only if the 20-layer test finds C better than B by >= 0.2 points (mean paired C - B
  <= -0.2 over the registered seeds 1-3);
- ResNet-110 (``resnet110``, post-activation) is run only if a 56-layer LM net beats its twin by >= 0.3 points; the
  claim "LM-ResNet-56 matches ResNet-110" then reads LM-56 <= ResNet-110.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .arms import Arm, arms_of, markdown_table, paired_test
from .runsummary import PAPER_CIFAR10, RunSummary, last_phase_mean

__all__ = ["BEATS_TWIN_BY", "C_BETTER_BY", "DEPTH_NETS", "depth_section", "depth_sentences"]

DEPTH_NETS = ("resnet20", "resnet56")
"""The backbones of the registered depth comparison, shallow first."""
C_BETTER_BY = 0.2
"""Arm C at 56 layers is run when the 20-layer mean paired C - B (seeds 1-3) is at most minus this (points)."""
C_SEEDS = (1, 2, 3)
BEATS_TWIN_BY = 0.3
"""ResNet-110 is run when a 56-layer LM net's LM - plain is at most minus this (points)."""
COMPRESSION_BASELINE = "resnet110"


def _arms(runs: Sequence[RunSummary]) -> dict[tuple[str, str | None], Arm]:
    """(model, LM decay or None) -> its arm of finished runs (:func:`odearch.arms.arms_of`)."""
    out = {}
    for plain, lms in arms_of(runs):
        out[(plain.model, None)] = plain
        out |= {(lm.model, lm.decay): lm for lm in lms}
    return out


def _sd(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _mean_n(arm: Arm | None) -> str:
    values = list(arm.primary().values()) if arm else []
    return f"{sum(values) / len(values):.2f} (n = {len(values)})" if values else "—"


def _paper(model: str) -> str:
    err = PAPER_CIFAR10.get(model)
    return f"{err[0]:.2f}" + ("" if err[1] else " (?)") if err else "—"


def _paper_gap(lm: str, plain: str) -> str:
    a, b = PAPER_CIFAR10.get(lm), PAPER_CIFAR10.get(plain)
    return f"{a[0] - b[0]:+.2f}" + ("" if a[1] and b[1] else " (?)") if a and b else "—"


DEPTH_HEADER = (
    "| depth | plain twin `preact_resnetD`: primary % | LM `lm_resnetD`, official decay: primary % | LM − plain, "
    "paired (points): mean ± sd (n) | paper: ResNet-D (post-activation) | paper: LM-ResNet-D | paper: LM − ResNet |"
)


def _depth_row(net: str, arms: dict[tuple[str, str | None], Arm]) -> list[str]:
    plain, lm = arms.get((f"preact_{net}", None)), arms.get((f"lm_{net}", "kappa"))
    t = paired_test(lm.primary(), plain.primary()) if plain and lm else None
    sd = _sd(t.diffs) if t else None
    diff = "—" if t is None or t.n == 0 else f"{t.mean:+.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
    return [
        net.removeprefix("resnet"),
        _mean_n(plain),
        _mean_n(lm),
        diff + (f" ({t.n})" if t and t.n else ""),
        _paper(net),
        _paper(f"lm_{net}"),
        _paper_gap(f"lm_{net}", net),
    ]


def _trend(arms: dict[tuple[str, str | None], Arm]) -> str:
    """The registered depth-trend rule on arm B against A at 20 and 56 layers."""
    shallow, deep = (
        paired_test(lm.primary(), plain.primary())
        if (plain := arms.get((f"preact_{n}", None))) and (lm := arms.get((f"lm_{n}", "kappa")))
        else None
        for n in DEPTH_NETS
    )
    head = "The depth trend (LM − plain at 56 layers below the 20-layer mean by more than its seed-to-seed sd)"
    sd = _sd(shallow.diffs) if shallow else None
    if deep is None or deep.n == 0 or shallow is None or sd is None:
        return head + ": **waits** for the 56-layer twins and at least two 20-layer seeds of arms A and B"
    word = "consistent" if deep.mean < shallow.mean - sd else "not consistent"
    return (
        f"{head}: LM − plain = {deep.mean:+.2f} points at 56 layers (n = {deep.n}) against {shallow.mean:+.2f} ± "
        f"{sd:.2f} at 20 layers (n = {shallow.n}): **{word}** with a gain that grows with depth (the paper: "
        f"{_paper_gap('lm_resnet20', 'resnet20')} at 20, {_paper_gap('lm_resnet56', 'resnet56')} at 56 layers)"
    )


def _arm_c_condition(arms: dict[tuple[str, str | None], Arm]) -> str:
    """Whether the registered condition for arm C at 56 layers holds on the 20-layer C - B."""
    b, c = arms.get(("lm_resnet20", "kappa")), arms.get(("lm_resnet20", "none"))
    head = f"Arm C at 56 layers (condition: 20-layer C − B ≤ −{C_BETTER_BY:.1f} points over seeds 1-3)"
    t = paired_test(c.primary(), b.primary(), C_SEEDS) if b and c else None
    if t is None or t.n < len(C_SEEDS):
        so_far = f": C − B = {t.mean:+.2f} so far" if t and t.n else ""
        return f"{head}: **undecided** ({t.n if t else 0} of {len(C_SEEDS)} seeds{so_far})"
    if t.mean <= -C_BETTER_BY:
        return f"{head}: C − B = {t.mean:+.2f}: **holds**, `lm_resnet56` arm C, seed 1, joins the queue"
    return f"{head}: C − B = {t.mean:+.2f}: **fails**, arm C is not run at 56 layers"


def _compression(runs: Sequence[RunSummary], arms: dict[tuple[str, str | None], Arm]) -> str:
    """Whether ResNet-110 is run, and once it has finished, whether LM-ResNet-56 matches it."""
    plain = arms.get(("preact_resnet56", None))
    head = f"ResNet-110 (condition: a 56-layer LM net beats its twin by ≥ {BEATS_TWIN_BY:.1f} points)"
    gaps = [
        (lm, t.mean)
        for (model, _), lm in arms.items()
        if model == "lm_resnet56" and plain and (t := paired_test(lm.primary(), plain.primary())).n
    ]
    if not gaps:
        return f"{head}: **waits** for the 56-layer twins"
    best, gap = min(gaps, key=lambda item: item[1])
    if gap > -BEATS_TWIN_BY:
        return (
            f"{head}: LM − plain = {gap:+.2f} at 56 layers: **fails**, ResNet-110 is not run and the claim "
            '"LM-ResNet-56 matches ResNet-110" is not tested'
        )
    ours = [
        m
        for s in runs
        if s.model == COMPRESSION_BASELINE and s.dataset == "cifar10" and not s.recipe_diff
        if (m := last_phase_mean(s)) is not None
    ]
    if not ours:
        return (
            f"{head}: LM − plain = {gap:+.2f} at 56 layers: **holds**, `{COMPRESSION_BASELINE}` seed 1 joins the queue"
        )
    lm56, r110 = sum(best.primary().values()) / len(best.primary()), sum(ours) / len(ours)
    word = "matches" if lm56 <= r110 else "does not match"
    return (
        f"{head}: **holds** ({gap:+.2f}); LM-ResNet-56 {lm56:.2f} % against ResNet-110 {r110:.2f} % (n = {len(ours)}): "
        f"**{word}** (the paper: {_paper('lm_resnet56')} against its pre-activation ResNet-110's "
        f"{_paper('preact_resnet110')})"
    )


def depth_sentences(runs: Sequence[RunSummary]) -> list[str]:
    """The three registered rules of the depth amendment, applied to the finished runs: trend, arm C, ResNet-110."""
    arms = _arms(runs)
    return [_trend(arms), _arm_c_condition(arms), _compression(runs, arms)]


def depth_section(runs: Sequence[RunSummary]) -> list[str]:
    """The Markdown of the depth table and the rules' sentences (none: no finished 20-layer test arm yet)."""
    arms = _arms(runs)
    if not any(net == "resnet20" for net in (a.net for a in arms.values())):
        return []
    return [
        "",
        "## Depth: does the LM gain grow, and does LM-ResNet-56 match ResNet-110?",
        "",
        "The 56-layer twins of `docs/campaign-plan.md` (one seed, after the 20-layer test), beside the 20-layer "
        "arms; finished runs at the paper's recipe only, primary metric as above.",
        "",
        *markdown_table(DEPTH_HEADER, [_depth_row(net, arms) for net in DEPTH_NETS]),
        "",
        "The registered rules, applied:",
        "",
        *(f"- {s}." for s in depth_sentences(runs)),
    ]
