"""The pre-registered multi-seed test of the LM nets against their plain twins (``docs/campaign-plan.md``), generated.

Runs fall into *arms* by what they train: the plain twin ``preact_X`` (arm A of the plan), and ``lm_X`` per weight
decay on its coefficients (``kappa``: the official code, arm B; ``none``: arm C; ``k``). Only finished runs at the
paper's recipe (the decay on k aside) count. Per run, the primary metric is the mean test error over the last lr phase
(epochs 121-160, :func:`odearch.runsummary.last_phase_mean`). For each LM arm against the plain arm of the same net:

- the paired test: per seed d_s = LM_s - plain_s, mean, 95 % Student-t interval (n - 1 degrees of freedom), two-sided
  p of mean d = 0 (``scipy.stats.ttest_1samp``); Welch's unpaired test beside it (``scipy.stats.ttest_ind``);
- the verdict, by the plan's rule on the paired interval [lo, hi]: ``reproduced`` if hi < 0, ``not reproduced`` if
  lo > -0.2 (both: reproduced, but smaller than 0.2 points), ``inconclusive`` otherwise; no verdict below n = 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .runsummary import PAPER_RECIPE, RunSummary, last_phase_mean

__all__ = [
    "NOT_REPRODUCED_ABOVE",
    "REGISTERED_SEEDS",
    "REPRODUCED_BELOW",
    "Arm",
    "PairedTest",
    "arm_section",
    "arms_of",
    "headline",
    "interim",
    "markdown_table",
    "paired_test",
    "plot_arm_curves",
    "sentence",
    "verdict",
]

REPRODUCED_BELOW = 0.0
"""The paired 95 % interval of LM - plain (points) lies wholly below this: the LM gain is reproduced."""
NOT_REPRODUCED_ABOVE = -0.2
"""... wholly above this: a gain of 0.2 points or more is excluded (half the paper's 0.42 on the 20-layer row)."""
REGISTERED_SEEDS: dict[tuple[str, str], tuple[int, ...]] = {
    ("lm_resnet20", "kappa"): (0, 1, 2, 3),
    ("lm_resnet20", "none"): (1, 2, 3),
    ("lm_resnet56", "kappa"): (1,),
}
"""(LM model, its decay) -> the seeds ``docs/campaign-plan.md`` registers for its test against the plain twin. A
verdict on fewer finished seeds is *interim*: the sentence says so (how many of how many), since a test read at
every new seed could stop at a lucky one; only the verdict on every registered seed is the test's answer."""
_DECAY = {"kappa": "decay on kappa = 1 - k (official)", "none": "no decay on k", "k": "decay on k (toward 0)"}


@dataclass
class Arm:
    """The finished runs of one arm, by seed."""

    net: str  # the plain backbone's name, e.g. resnet20
    model: str
    decay: str | None  # LM arms: lm_weight_decay; the plain arm: None
    runs: dict[int, RunSummary]

    @property
    def label(self) -> str:
        return f"`{self.model}`" + (f", {_DECAY.get(self.decay, self.decay)}" if self.decay else "")

    def primary(self) -> dict[int, float]:
        """seed -> the primary metric (mean test error % over the last lr phase)."""
        return {seed: m for seed, s in self.runs.items() if (m := last_phase_mean(s)) is not None}


@dataclass
class PairedTest:
    """LM - plain per seed and the two tests of it (points of test error)."""

    seeds: list[int]
    diffs: list[float]
    mean: float
    lo: float | None
    hi: float | None
    p: float | None
    welch: tuple[float, float, float, float] | None  # mean difference, lo, hi, p

    @property
    def n(self) -> int:
        return len(self.diffs)


def _counts(s: RunSummary) -> bool:
    """Finished, at the paper's recipe but for the LM decay option (the plan's arm C differs there only)."""
    return s.complete and all(d.startswith("lm_weight_decay ") for d in s.recipe_diff) and s.dataset == "cifar10"


def arms_of(runs: Sequence[RunSummary]) -> list[tuple[Arm, list[Arm]]]:
    """(plain arm, its LM arms) for every net with finished runs of both; one run per (arm, seed), the first."""
    arms: dict[tuple[str, str | None], Arm] = {}
    for s in runs:
        if not _counts(s) or not (s.model.startswith("preact_") or s.model.startswith("lm_")):
            continue
        lm = s.model.startswith("lm_")
        net = s.model.removeprefix("lm_" if lm else "preact_")
        arm = arms.setdefault(
            (s.model, s.lm_weight_decay if lm else None), Arm(net, s.model, s.lm_weight_decay if lm else None, {})
        )
        arm.runs.setdefault(s.seed, s)
    out = []
    for (model, _), plain in arms.items():
        if model.startswith("preact_"):
            lms = [a for (m, _), a in arms.items() if m == "lm_" + plain.net]
            order = list(_DECAY)
            lms.sort(key=lambda a: order.index(a.decay) if a.decay in order else len(order))
            if lms:
                out.append((plain, lms))
    return out


def paired_test(lm: dict[int, float], plain: dict[int, float], seeds: Sequence[int] | None = None) -> PairedTest:
    """The paired and Welch tests of ``lm`` - ``plain`` (seed -> metric) over their common seeds (or ``seeds``)."""
    from scipy import stats

    common = sorted(set(lm) & set(plain) & (set(seeds) if seeds is not None else set(lm)))
    diffs = [lm[s] - plain[s] for s in common]
    mean = sum(diffs) / len(diffs) if diffs else math.nan
    lo = hi = p = None
    if len(diffs) >= 2:
        res = stats.ttest_1samp(diffs, 0.0)
        ci = res.confidence_interval(0.95)
        lo, hi, p = float(ci.low), float(ci.high), float(res.pvalue)
    welch = None
    a, b = list(lm.values()), list(plain.values())
    if len(a) >= 2 and len(b) >= 2:
        res = stats.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(0.95)
        welch = (sum(a) / len(a) - sum(b) / len(b), float(ci.low), float(ci.high), float(res.pvalue))
    return PairedTest(common, diffs, mean, lo, hi, p, welch)


def verdict(t: PairedTest) -> str:
    """The plan's verdict word(s) for a paired test (``undecided`` below n = 2, or a degenerate interval)."""
    if t.lo is None or t.hi is None or math.isnan(t.lo):
        return "undecided"
    if t.hi < REPRODUCED_BELOW and t.lo > NOT_REPRODUCED_ABOVE:
        return "reproduced, but smaller than 0.2 points"
    if t.hi < REPRODUCED_BELOW:
        return "reproduced"
    if t.lo > NOT_REPRODUCED_ABOVE:
        return "not reproduced"
    return "inconclusive"


def interim(lm: Arm, t: PairedTest) -> str:
    """ " (interim: n of the N registered seeds)" while the test has fewer seeds than the plan registers, else ""."""
    registered = REGISTERED_SEEDS.get((lm.model, lm.decay or ""))
    if registered is None or set(registered) <= set(t.seeds):
        return ""
    return f" (interim: {t.n} of the {len(registered)} registered seeds)"


def sentence(lm: Arm, plain: Arm, t: PairedTest) -> str:
    """ "<arm>: <verdict>[ (interim: n of N registered seeds)]: LM - plain = <mean> points (95 % CI lo..hi, n = n,
    p = p)", from the numbers."""
    head = f"{lm.label} against `{plain.model}`: **{verdict(t)}**{interim(lm, t)}"
    if t.n == 0:
        return head + ": no seed finished in both arms yet"
    if t.lo is None or t.hi is None or t.p is None:
        return head + f": LM - plain = {t.mean:+.2f} points (n = {t.n}: no interval yet)"
    return head + f": LM - plain = {t.mean:+.2f} points (95 % CI {t.lo:+.2f}..{t.hi:+.2f}, n = {t.n}, p = {t.p:.3f})"


def _mean_sd(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "—"
    m = sum(values) / len(values)
    if len(values) < 2:
        return f"{m:.{digits}f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def _arm_row(arm: Arm, tag: str) -> list[str]:
    runs = [arm.runs[s] for s in sorted(arm.runs)]
    by_precision: dict[str, list[str]] = {}
    for s in runs:
        by_precision.setdefault(s.precision, []).append(str(s.seed))
    precisions = "; ".join(f"{p}: seed {', '.join(seeds)}" for p, seeds in by_precision.items())
    seeds = ", ".join(str(s.seed) for s in runs)
    return [
        tag,
        arm.label,
        str(len(runs)),
        seeds,
        _mean_sd(list(arm.primary().values())),
        _mean_sd([s.final_err for s in runs if s.final_err is not None]),
        _mean_sd([s.best_err for s in runs if s.best_err is not None]),
        precisions,
    ]


def _test_row(lm: Arm, plain: Arm, t: PairedTest, which: str) -> list[str]:
    """A row of :data:`TEST_HEADER`; the verdict and Welch's test only for the primary (all seeds) row."""
    ci = f"{t.lo:+.2f}..{t.hi:+.2f}" if t.lo is not None and t.hi is not None else "—"
    welch = (
        f"{t.welch[0]:+.2f} ({t.welch[1]:+.2f}..{t.welch[2]:+.2f}, p = {t.welch[3]:.3f})"
        if t.welch and which == "all seeds"
        else "—"
    )
    per_seed = ", ".join(f"s{s}: {d:+.2f}" for s, d in zip(t.seeds, t.diffs, strict=True)) or "—"
    return [
        f"{lm.label} − {plain.label}",
        which,
        str(t.n),
        per_seed,
        "—" if t.n == 0 else f"{t.mean:+.2f}",
        ci,
        "—" if t.p is None else f"{t.p:.3f}",
        welch,
        verdict(t) + interim(lm, t) if which == "all seeds" else "",
    ]


ARM_HEADER = (
    "| arm | runs | n | seeds | primary: mean test error % over epochs 121-160 (mean ± sd) | error % after "
    "epoch 160 | best epoch, chosen on test (optimistic) | precision |"
)
TEST_HEADER = (
    "| LM − plain | seeds | n | per seed (points) | mean | 95 % CI (paired t) | p | Welch, unpaired: mean "
    "(95 % CI, p) | verdict |"
)


def _k_rows(arm: Arm) -> list[list[str]]:
    by_stage: dict[str, list[list[float]]] = {}
    for s in arm.runs.values():
        for stage, ks in s.lm_k.items():
            by_stage.setdefault(stage, []).append([float(k) for k in ks])  # type: ignore[arg-type]
    return [
        [arm.label, stage, str(len(vals)), ", ".join(_mean_sd([v[i] for v in vals], 3) for i in range(len(vals[0])))]
        for stage, vals in by_stage.items()
    ]


def arm_section(runs: Sequence[RunSummary], base: Path, curves: Sequence[Path] = ()) -> list[str]:
    """The Markdown of the pre-registered test: per-arm table, paired tests and verdicts, k_n per arm, curves."""
    groups = arms_of(runs)
    if not groups:
        return []
    lines = [
        "",
        "## Is the LM gain real? The pre-registered paired test",
        "",
        "Arms, metric, tests and the verdict rule as registered in `docs/campaign-plan.md` before the runs "
        f"finished; only finished runs at the paper's recipe count ({PAPER_RECIPE['epochs']} epochs).",
        "",
    ]
    for plain, lms in groups:
        tags = {id(plain): "A"} | {id(a): "BCDE"[i] for i, a in enumerate(lms)}
        lines += [*markdown_table(ARM_HEADER, [_arm_row(a, tags[id(a)]) for a in (plain, *lms)]), ""]
        rows, sentences = [], []
        for lm in lms:
            t = paired_test(lm.primary(), plain.primary())
            rows.append(_test_row(lm, plain, t, "all seeds"))
            paired_init = [s for s in t.seeds if s != 0]
            if paired_init and len(paired_init) < t.n:
                rows.append(
                    _test_row(
                        lm, plain, paired_test(lm.primary(), plain.primary(), paired_init), "seeds ≥ 1 (paired init)"
                    )
                )
            sentences.append("- " + sentence(lm, plain, t) + ".")
        if len(lms) > 1:
            b, c = lms[0], lms[1]
            t = paired_test(c.primary(), b.primary(), [s for s in c.primary() if s != 0])
            rows.append(_test_row(c, b, t, "seeds ≥ 1 (paired init)"))
        lines += [
            *markdown_table(TEST_HEADER, rows),
            "",
            "Verdicts (generated by the registered rule):",
            "",
            *sentences,
        ]
        k_rows = [r for a in lms for r in _k_rows(a)]
        if k_rows:
            lines += [
                "",
                "Learned k_n after epoch 160, mean ± sd over the arm's seeds:",
                "",
                *markdown_table("| arm | stage | n | k_n, block by block |", k_rows),
            ]
    for c in curves:
        lines += ["", f"![{c.stem}]({Path(_relpath(c, base)).as_posix()})"]
    return lines


def headline(runs: Sequence[RunSummary], results_link: str) -> list[str]:
    """The README's results headline: the verdict sentence of each pre-registered paired test (as in
    :func:`arm_section`). Only finished runs count, so a run in progress changes no line of it; ``results_link`` is
    the path of the full report relative to the README."""
    last_phase = f"epochs {PAPER_RECIPE['milestones'][-1] + 1}-{PAPER_RECIPE['epochs']}"
    intro = (
        "The pre-registered test of the LM nets against their exact plain twins (mean test error over "
        f"{last_phase}; finished runs at the paper's recipe only; tables, learning curves and k_n in "
        f"[{results_link}]({results_link})):"
    )
    sentences = [
        f"- {sentence(lm, plain, paired_test(lm.primary(), plain.primary()))}."
        for plain, lms in arms_of(runs)
        for lm in lms
    ]
    return [intro, "", *(sentences or ["- no finished run in both arms of a test yet."])]


def _relpath(path: Path, base: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), base.resolve())


def markdown_table(header: str, rows: list[list[str]]) -> list[str]:
    """A Markdown table: ``header`` (``| a | b |``), its rule, one line per row of cells."""
    ncol = header.count("|") - 1
    return [header, "|" + "---|" * ncol, *("| " + " | ".join(r) + " |" for r in rows)]


def plot_arm_curves(runs: Sequence[RunSummary], out_dir: str | Path) -> list[Path]:
    """``arms_cifar10_<net>.png`` per net: each arm's test error after each epoch, the mean over its seeds with a
    min-max band."""
    from matplotlib.figure import Figure

    paths = []
    colors = ("tab:orange", "tab:green", "tab:purple", "tab:red")
    for plain, lms in arms_of(runs):
        fig = Figure(figsize=(7.5, 4.5))
        ax = fig.add_subplot()
        for color, arm in zip(colors, (plain, *lms), strict=False):
            curves = [dict(s.curve) for s in arm.runs.values()]
            epochs = sorted(set.intersection(*(set(c) for c in curves)))
            per_epoch = [[c[e] for c in curves] for e in epochs]
            ax.plot(
                epochs,
                [sum(v) / len(v) for v in per_epoch],
                color=color,
                lw=1.2,
                label=f"{arm.label.replace('`', '')} (n = {len(curves)})",
            )
            ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch], color=color, alpha=0.2)
        ax.set_yscale("log")
        ax.set_ylim(top=min(100.0, ax.get_ylim()[1]))
        ax.yaxis.set_major_formatter("{x:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error % (log scale)")
        ax.set_title(f"CIFAR-10 {plain.net}: mean over seeds, band min-max")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = Path(out_dir) / f"arms_cifar10_{plain.net}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    return paths
