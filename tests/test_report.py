"""`odearch report`: docs/results.md and the learning curves generated from run directories.

The fixture runs are synthetic files (no training): a finished run, a run in progress (its result.json older than
its metrics.jsonl), a run with no result.json yet, and a short run that is not the paper's recipe.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from odearch.cli import main
from odearch.report import PAPER_CIFAR10, find_runs, last_phase_mean, summarize, twin_rows, write_report

RECIPE = {
    "dataset": "cifar10",
    "num_classes": 10,
    "scheme": None,
    "model_kwargs": {},
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 0.0001,
    "batch_size": 128,
    "epochs": 160,
    "milestones": [80, 120],
    "gamma": 0.1,
    "schedule": "step",
    "warmup_epochs": 0.0,
    "label_smoothing": 0.0,
    "subset": None,
    "eval_subset": None,
    "val_split": 0,
    "augment": True,
    "seed": 0,
    "amp": "off",
    "device": "auto",
}
A, B, C = "a" * 40, "b" * 40, "c" * 40
EPYC, XEON = "AMD EPYC 7B13", "Intel(R) Xeon(R) Processor"


def _err(epoch: int) -> float:
    """A plausible test-error curve (%), 45% after epoch 1 falling to about 8.3%."""
    return 8.2 + 37.0 * math.exp(-(epoch - 1) / 25)


def _row(epoch: int, acc: float, **extra: object) -> dict[str, object]:
    return {
        "epoch": epoch,
        "step": 390 * epoch,
        "train_loss": 0.5,
        "train_acc": 0.8,
        "test_loss": 0.4,
        "test_acc": acc,
        "lr": 0.1,
        "seconds": 75.0,
        "images_per_s": 49920 / 75.0,
        "lm_k": {},
        **extra,
    }


def _make_run(
    root: Path, name: str, cfg: dict[str, object], rows: list[dict[str, object]], result: dict[str, object] | None
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({**RECIPE, **cfg, "out": str(d)}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if result is not None:
        (d / "result.json").write_text(json.dumps(result))
    return d


@pytest.fixture()
def campaign(tmp_path: Path) -> Path:
    root = tmp_path / "results" / "campaign"
    # finished: 160 epochs over two commits and two machines; best epoch 150 (chosen on test), last epoch 8.30 %
    rows = [
        _row(
            e,
            1 - _err(e) / 100,
            git_commit=A if e <= 100 else B,
            git_dirty=False,
            device_name=EPYC if e <= 100 else XEON,
        )
        for e in range(1, 161)
    ]
    rows[149]["test_acc"], rows[159]["test_acc"] = 0.9185, 0.9170
    _make_run(
        root,
        "lm_resnet20_s0",
        {"model": "lm_resnet20", "lm_weight_decay": "kappa"},
        rows,
        {
            "status": "complete",
            "epochs_done": 160,
            "params": 272384,
            "wall_seconds": 12000.0,
            "device": "cpu",
            "device_name": XEON,
            "git_commit": B,
            "git_dirty": False,
        },
    )
    # in progress: result.json written at the end of a stretch (epoch 40); metrics.jsonl already at epoch 57
    rows = [_row(e, 1 - _err(e) / 100, git_commit=C, git_dirty=e == 41) for e in range(1, 58)]
    rows[56]["test_acc"] = 0.8234
    _make_run(
        root,
        "preact_resnet20_s0",
        {"model": "preact_resnet20"},
        rows,
        {
            "status": "stopped",
            "epochs_done": 40,
            "params": 272378,
            "wall_seconds": 3300.0,
            "device": "cpu",
            "device_name": XEON,
            "git_commit": C,
            "git_dirty": False,
        },
    )
    # no result.json yet, rows written by code that did not record commits, amp auto on a CPU
    rows = [_row(e, acc) for e, acc in ((1, 0.5012), (2, 0.6243), (3, 0.6001))]
    rows[0]["device_name"] = EPYC
    _make_run(root, "resnet20_s0", {"model": "resnet20", "amp": "auto", "device": "cpu"}, rows, None)
    # a short run: not the paper's recipe, listed apart
    _make_run(
        root,
        "lm_resnet20_short",
        {"model": "lm_resnet20", "lm_weight_decay": "kappa", "epochs": 8, "milestones": [5, 7], "subset": 10000},
        [_row(e, 0.6) for e in range(1, 9)],
        {
            "status": "complete",
            "epochs_done": 8,
            "params": 272384,
            "wall_seconds": 600.0,
            "device": "cpu",
            "device_name": XEON,
            "git_commit": A,
            "git_dirty": True,
        },
    )
    (root / "queue.yaml").write_text(
        yaml.safe_dump({"runs": [{"name": n} for n in ("preact_resnet20_s0", "lm_resnet20_s0", "resnet20_s0")]})
    )
    return root


def _tables(md: str) -> list[list[list[str]]]:
    """Markdown tables of `md` as lists of rows of cells (header and separator dropped)."""
    tables, current = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            current.append([c.strip() for c in line.strip("|").split("|")])
        else:
            current = None
    return [t[2:] for t in tables]


def test_report_table_cells(campaign: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "results.md"
    write_report([campaign], out, "odearch report results/campaign --out docs/results.md")
    main_table, twins, other = _tables(out.read_text())
    assert main_table == [
        [
            "[preact_resnet20_s0](../results/campaign/preact_resnet20_s0)",
            "`preact_resnet20`",
            "0",
            "—",
            "17.66 (epoch 57)",
            "",
            f"{_err(56):.2f} (epoch 56)",
            "57/160, in progress",
            "0.272M",
            "≥ 1.19 h",
            "666",
            XEON,
            "`ccccccc` +dirty",
            "fp32",
        ],
        [
            "[lm_resnet20_s0](../results/campaign/lm_resnet20_s0)",
            "`lm_resnet20`",
            "0",
            "8.33 (?)",
            "8.30",
            "-0.03 (?)",
            "8.15 (epoch 150)",
            "160/160",
            "0.272M",
            "3.33 h",
            "666",
            f"{EPYC} + {XEON}",
            "`aaaaaaa`..`bbbbbbb` (2 commits)",
            "fp32, global init",
        ],
        [
            "[resnet20_s0](../results/campaign/resnet20_s0)",
            "`resnet20`",
            "0",
            "8.75",
            "39.99 (epoch 3)",
            "",
            "37.57 (epoch 2)",
            "3/160, in progress",
            "0.270M",
            "≥ 0.06 h",
            "666",
            EPYC,
            "?",
            "fp32",
        ],
    ]
    assert twins == [
        ["`lm_resnet20` vs `preact_resnet20` (exact twin)", "0", "17.66 (epoch 57)", "8.30", "", "", "-0.42 (?)"],
        [
            "`lm_resnet20` vs `resnet20` (post-activation, the paper's pairing)",
            "0",
            "39.99 (epoch 3)",
            "8.30",
            "",
            "",
            "-0.42 (?)",
        ],
    ]
    assert other == [
        [
            "[lm_resnet20_short](../results/campaign/lm_resnet20_short)",
            "`lm_resnet20`",
            "0",
            "epochs 8 (paper 160); milestones [5, 7] (paper [80, 120]); subset 10000 (paper None)",
            "40.00",
            "8/8",
            "0.17 h",
            XEON,
            "`aaaaaaa` +dirty",
            "fp32, global init",
        ],
    ]


def test_a_superseded_run_is_listed_apart_and_counts_nowhere(campaign: Path, tmp_path: Path) -> None:
    rows = [_row(e, 0.9) for e in range(1, 34)]
    _make_run(
        campaign,
        "lm_resnet20_s1",
        {"model": "lm_resnet20", "lm_weight_decay": "kappa", "seed": 1},
        rows,
        {"status": "stopped", "epochs_done": 33},
    )
    _make_run(
        campaign,
        "lm_resnet20_bf16_s1",
        {
            "model": "lm_resnet20",
            "lm_weight_decay": "kappa",
            "seed": 1,
            "amp": "bf16",
            "lm_init": "paired",
            "compile": True,
        },
        rows[:5],
        None,
    )
    (campaign / "lm_resnet20_s1" / "superseded.txt").write_text("Replaced by\nthe paired run.\n")
    out = tmp_path / "results.md"
    write_report([campaign], out, "odearch report", plots=False)
    text = out.read_text()
    main_table = _tables(text)[0]
    assert [r[0].split("]")[0] for r in main_table] == [
        "[preact_resnet20_s0",
        "[lm_resnet20_s0",
        "[resnet20_s0",
        "[lm_resnet20_bf16_s1",
    ]
    assert main_table[-1][-1] == "bf16 autocast, compiled, paired init"
    assert _tables(text)[-1] == [
        [
            "[lm_resnet20_s1](results/campaign/lm_resnet20_s1)",
            "`lm_resnet20`",
            "1",
            "33/160",
            "Replaced by the paired run.",
        ]
    ]


def test_paper_numbers_keep_the_recalled_marks() -> None:
    """Confirmed numbers print bare, recalled ones (PAPER.md's (?)) keep their mark, in every place they print."""
    assert PAPER_CIFAR10["resnet20"] == (8.75, True) and PAPER_CIFAR10["lm_resnet20"] == (8.33, False)
    paper_md = Path(__file__).resolve().parents[2] / "shared" / "PAPER.md"
    if paper_md.is_file():  # every number of the table is printed in PAPER.md's results section
        text = paper_md.read_text().split("## Results to reproduce")[1].split("\n## ")[0]
        assert all(f"{err:.2f}" in text for err, _ in PAPER_CIFAR10.values())


def test_in_progress_run_reads_its_current_epoch(campaign: Path) -> None:
    s = summarize(campaign / "preact_resnet20_s0")
    assert (s.complete, s.epochs_done, s.wall_exact) == (False, 57, False)  # result.json says 40: it is older
    s = summarize(campaign / "lm_resnet20_s0")
    assert (s.complete, s.epochs_done, s.wall_exact, s.wall_s) == (True, 160, True, 12000.0)


def test_a_torn_last_metrics_line_is_skipped(campaign: Path) -> None:
    with open(campaign / "resnet20_s0" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "step": 15')  # a run writing right now
    assert summarize(campaign / "resnet20_s0").epochs_done == 3


def test_runs_follow_the_queue_order(campaign: Path) -> None:
    assert [p.name for p in find_runs([campaign])] == [
        "preact_resnet20_s0",
        "lm_resnet20_s0",
        "resnet20_s0",
        "lm_resnet20_short",
    ]


def test_curves_written_and_linked(campaign: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "results.md"
    _, curves = write_report([campaign], out, "odearch report")
    assert [c.name for c in curves] == ["curves_cifar10_resnet20.png"]  # the twins and resnet20 in one figure
    img = matplotlib.image.imread(curves[0])
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    assert "![curves_cifar10_resnet20](curves_cifar10_resnet20.png)" in out.read_text()


def test_report_cli(campaign: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "results.md"
    assert main(["report", str(campaign), "--out", str(out), "--no-plots"]) == 0
    text = out.read_text()
    assert re.search(r"Generated by `odearch report \S+ --out \S+ --no-plots`", text)
    assert not list(out.parent.glob("*.png"))
    assert main(["report", str(tmp_path / "nothing"), "--out", str(out)]) == 2  # a missing folder: one-line error


def test_last_phase_mean_is_the_mean_error_after_the_last_lr_drop(campaign: Path) -> None:
    lm = summarize(campaign / "lm_resnet20_s0")
    errs = [_err(e) for e in range(121, 161)]
    errs[150 - 121], errs[160 - 121] = 8.15, 8.30  # the fixture's epochs 150 and 160
    assert lm.last_phase == 121 and last_phase_mean(lm) == pytest.approx(sum(errs) / 40, abs=1e-9)
    assert last_phase_mean(summarize(campaign / "preact_resnet20_s0")) is None  # in progress: no mean yet
    assert last_phase_mean(dataclasses.replace(lm, last_phase=None)) is None  # cosine: no last step phase


def test_twin_difference_once_both_finished(campaign: Path) -> None:
    lm = summarize(campaign / "lm_resnet20_s0")
    phase = f"{last_phase_mean(lm):.2f}"
    plain = dataclasses.replace(
        lm,
        model="preact_resnet20",
        final_err=8.72,
        name="preact_resnet20_s0",
        curve=[(e, err + 0.25) for e, err in lm.curve],
    )
    post = dataclasses.replace(lm, model="resnet20", final_err=8.51, name="resnet20_s0")
    other_seed = dataclasses.replace(plain, seed=1)
    unfinished = dataclasses.replace(post, seed=1, complete=False)
    lm1 = dataclasses.replace(lm, seed=1)
    assert twin_rows([post, plain, lm, other_seed, unfinished, lm1]) == [
        [
            "`lm_resnet20` vs `preact_resnet20` (exact twin)",
            "0",
            "8.72",
            "8.30",
            "-0.42",
            f"-0.25 ({float(phase) + 0.25:.2f} vs {phase}, epochs 121-160)",
            "-0.42 (?)",
        ],
        [
            "`lm_resnet20` vs `resnet20` (post-activation, the paper's pairing)",
            "0",
            "8.51",
            "8.30",
            "-0.21",
            f"+0.00 ({phase} vs {phase}, epochs 121-160)",
            "-0.42 (?)",
        ],
        [
            "`lm_resnet20` vs `preact_resnet20` (exact twin)",
            "1",
            "8.72",
            "8.30",
            "-0.42",
            f"-0.25 ({float(phase) + 0.25:.2f} vs {phase}, epochs 121-160)",
            "-0.42 (?)",
        ],
        [
            "`lm_resnet20` vs `resnet20` (post-activation, the paper's pairing)",
            "1",
            "8.51 (epoch 160)",
            "8.30",
            "",
            "",
            "-0.42 (?)",
        ],
    ]


@pytest.mark.parametrize("decay", ["k", "none", None])
def test_lm_run_without_the_official_decay_on_kappa_is_not_the_papers_recipe(campaign: Path, decay: str | None) -> None:
    cfg = yaml.safe_load((campaign / "lm_resnet20_s0" / "config.yaml").read_text())
    cfg.pop("lm_weight_decay")
    if decay is not None:  # None: a run made before the option existed, whose decay pulled k toward 0
        cfg["lm_weight_decay"] = decay
    (campaign / "lm_resnet20_s0" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert summarize(campaign / "lm_resnet20_s0").recipe_diff == [
        f"lm_weight_decay {decay or 'k'!r} (official code 'kappa')"
    ]
    plain = summarize(campaign / "resnet20_s0")  # the option is meaningless without k: never a difference
    assert plain.recipe_diff == []
    out, _ = write_report([campaign], campaign.parent / "results.md", "odearch report", plots=False)
    md = out.read_text()
    main_table, other = _tables(md)
    assert [r[0].split("]")[0] for r in main_table] == ["[preact_resnet20_s0", "[resnet20_s0"]
    assert "## The LM nets against" not in md  # no twin row: the LM run is not the paper's recipe
    assert [r[3] for r in other if r[0].startswith("[lm_resnet20_s0]")] == [
        f"lm_weight_decay {decay or 'k'!r} (official code 'kappa')"
    ]


def test_a_multi_level_run_is_not_the_papers_recipe_of_its_starting_net(campaign: Path) -> None:
    """A full-length lm_resnet20 run refined to lm_resnet56's shape is neither arm B's lm_resnet20 nor a 56-layer
    run."""
    cfg = yaml.safe_load((campaign / "lm_resnet20_s0" / "config.yaml").read_text())
    (campaign / "lm_resnet20_s0" / "config.yaml").write_text(yaml.safe_dump(cfg | {"refine_at": [32, 72]}))
    assert summarize(campaign / "lm_resnet20_s0").recipe_diff == ["refine_at [32, 72] (multi-level, refined by 2)"]
    out, _ = write_report([campaign], campaign.parent / "results.md", "odearch report", plots=False)
    md = out.read_text()
    assert "## The LM nets against" not in md  # not counted as the LM twin of preact_resnet20_s0
    _, other = _tables(md)
    diff = "refine_at [32, 72] (multi-level, refined by 2)"
    assert [r[3] for r in other if r[0].startswith("[lm_resnet20_s0]")] == [diff]


def test_learned_k_after_the_last_epoch_listed_per_stage(campaign: Path, tmp_path: Path) -> None:
    metrics = campaign / "lm_resnet20_s0" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[-2]["lm_k"] = {"stages.0": [0.5, 0.5]}  # an earlier epoch's values must not be the ones shown
    rows[-1]["lm_k"] = {"stages.0": [-0.0917, 0.0096], "stages.1": [0.334, -0.9]}
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, _ = write_report([campaign], tmp_path / "docs" / "results.md", "odearch report", plots=False)
    md = out.read_text()
    section = md.split("## Learned LM coefficients k_n")[1]
    assert _tables(section)[0] == [
        [
            "[lm_resnet20_s0](../results/campaign/lm_resnet20_s0)",
            "160",
            "stages.0: -0.092, +0.010; stages.1: +0.334, -0.900",
            "0.900",
            "on 1 - k (toward 1)",
        ]
    ]
    assert md.count("[lm_resnet20_short]") == 1  # its k are all empty: no row (linked once, under other runs)


def _scalar_steps(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_report_replays_metrics_as_tensorboard_events(campaign: Path, tmp_path: Path) -> None:
    tb = tmp_path / "tb"
    out = tmp_path / "docs" / "results.md"
    args = ["report", str(campaign), "--out", str(out), "--no-plots", "--tensorboard", str(tb)]
    assert main(args) == 0
    rows = [json.loads(line) for line in (campaign / "lm_resnet20_s0" / "metrics.jsonl").read_text().splitlines()]
    want = [(r["epoch"], pytest.approx(r["test_acc"], rel=1e-6)) for r in rows]
    assert _scalar_steps(tb / "lm_resnet20_s0", "test_acc") == want
    assert main(args) == 0  # again: the second replay hides the first one's events, each epoch is shown once
    assert len(list((tb / "lm_resnet20_s0").glob("events.out.tfevents.*"))) == 2
    assert _scalar_steps(tb / "lm_resnet20_s0", "test_acc") == want
    assert sorted(p.name for p in tb.iterdir()) == sorted(
        p.name for p in find_runs([campaign]) if (p / "metrics.jsonl").stat().st_size
    )
