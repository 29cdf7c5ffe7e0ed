"""DenseResNet (issue 38), the official code's ``DenseBlock``:

    u_{n+1} = (sum_{j<=n} k_{nj} u_j) / (sum_{j<=n} k_{nj}) + f_n(u_n),   u_0 of a down-sampling stage := P(u_0).

Its formula written out, the plain twin it becomes with one-hot weights, the convergence order its frozen
coefficients give on u' = A u, gradients against finite differences, memory modes, stochastic depth, tracing and
timm, paired initialisation, parameter counts and ``odearch analyze``.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import odearch
from conftest import n_params, randomise_bn
from odearch import Stage, create_model
from odearch.cli import main
from odearch.nn import dense_coefficients, lm_k_draw, set_memory
from odearch.nn.dense import DenseRunner
from odearch.schemes import DenseScheme, get_scheme
from odearch.schemes.dense import (
    denominator,
    dense_k_count,
    dense_k_index,
    dense_rows,
    dense_step,
    dense_steps,
    dense_weights,
)
from odearch.schemes.multistep import multistep_order

A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)  # a damped rotation, as in test_schemes.py
U0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
T = 1.0
D = 4


def _f(scale: float):
    return lambda u: scale * torch.tanh(u)


# ------------------------------------------------------------------------------------------------- scheme data
def test_scheme_is_registered_hashable_data_and_refuses_what_cannot_work() -> None:
    assert get_scheme("dense") == DenseScheme() and len({DenseScheme(), DenseScheme(fixed_k=((0.0, 1.0),))}) == 2
    assert DenseScheme().k_init == (-0.1, 0.0)  # the official init
    with pytest.raises(ValueError, match="both signs"):
        DenseScheme(k_init=(-0.1, 0.1))  # a row of k could sum to 0 at initialisation
    with pytest.raises(ValueError, match="low <= high"):
        DenseScheme(k_init=(0.0, -0.1))
    with pytest.raises(ValueError, match=r"fixed_k row 2 \(step 2\) needs 3 values"):
        DenseScheme(fixed_k=((0.0, 1.0), (1.0,)))
    with pytest.raises(ValueError, match="within min_abs_sum of 0"):
        DenseScheme(fixed_k=((0.5, -0.5),))
    with pytest.raises(ValueError, match="min_abs_sum must be > 0"):
        DenseScheme(min_abs_sum=0.0)
    with pytest.raises(ValueError, match="fixed_k has 1 rows for the 2 steps"):
        Stage(DenseScheme(fixed_k=((0.0, 1.0),)), [_f(1.0)] * 3)


def test_flat_layout_is_row_by_row() -> None:
    """k_{nj} at n(n + 1)/2 - 1 + j: steps 1 .. N-1, n + 1 values each, N(N + 1)/2 - 1 in all."""
    assert [dense_k_count(n) for n in (1, 2, 3, 18)] == [0, 2, 5, 170]
    assert [dense_k_index(n, j) for n in (1, 2, 3) for j in range(n + 1)] == list(range(9))
    assert dense_steps(170) == 18 and dense_rows([1, 2, 3, 4, 5]) == [[1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="not N"):
        dense_steps(4)
    with pytest.raises(ValueError, match="exists for n >= 1"):
        dense_k_index(0, 0)


def test_normalisation_and_its_guard_near_a_zero_row_sum() -> None:
    assert dense_weights([-0.02, -0.06]) == pytest.approx([0.25, 0.75])  # one sign: a convex combination
    assert (denominator(-0.5), denominator(2e-4), denominator(-2e-4), denominator(0.0)) == (-0.5, 1e-3, -1e-3, 1e-3)
    step = dense_step([3e-4, -1e-4])  # sums to 2e-4: divided by 1e-3, the weights sum to 0.2
    assert step["clamped"] and sum(step["weights"]) == pytest.approx(0.2)
    assert step["rho1"] == pytest.approx(0.8) and step["order"] == -1 and not step["consistent"]


@pytest.mark.parametrize(
    ("weights", "c", "order", "max_root", "stable"),
    [
        ((0.0, 1.0), 1.0, 1, 1.0, True),  # forward Euler (ResNet)
        ((-0.3, 1.3), 0.7, 0, 1.0, True),  # LM with k = -0.3: (1 + k) u' = g, roots 1 and -k
        ((0.25, 0.25, 0.5), 1.75, 0, 1.0, True),  # convex: c >= 1, zero-stable
        ((0.5, -1.0, 1.5), 1.0, 2, 1.0, True),  # second order with f at u_n only
        ((2.0, -1.0), 3.0, 0, 2.0, False),  # rho = (xi - 1)(xi + 2)
    ],
)
def test_frozen_step_is_the_multistep_method_of_its_weights(
    weights: tuple, c: float, order: int, max_root: float, stable: bool
) -> None:
    """alpha = (-w_{n0}, ..., -w_{nn}, 1), beta = e_n: rho(1) = 0 always, rho'(1) = c = 1 + sum_j (n - j) w_{nj}."""
    step = dense_step(weights)
    n = len(weights) - 1
    assert step["alpha"] == (*(-w for w in weights), 1.0) and step["beta"] == (*(0.0,) * n, 1.0, 0.0)
    assert step["rho1"] == pytest.approx(0.0, abs=1e-12) and step["c"] == pytest.approx(c)
    assert step["order"] == order and step["consistent"] == (order >= 1)
    assert step["max_abs_root"] == pytest.approx(max_root) and step["zero_stable"] == stable


# ------------------------------------------------------------------------------------------------ the formula
@pytest.mark.parametrize("transition", [False, True])
def test_stage_is_the_official_dense_block(transition: bool) -> None:
    """The official forward, written out: residuals = [u_0 (or P(u_0)), u_1, ...], x = sum_j k_{ij} residuals[j] /
    sum_j k_{ij} + b_i(x); its row 0 is k_00 u_0 / k_00 = u_0 (the plain first step)."""
    k = ((-0.03, -0.07), (-0.01, -0.05, -0.02), (-0.09, -0.01, -0.04, -0.06))  # raw k, not normalised
    p = (lambda u: 2.0 * u) if transition else None
    fns = [_f(0.3), _f(-0.2), _f(0.5), _f(0.1)]
    stage = Stage(DenseScheme(fixed_k=k), fns, shortcut=p, post_act=nn.Tanh())
    u0 = torch.randn(3, dtype=torch.float64)
    states = [p(u0) if transition else u0]
    u = torch.tanh(states[0] + fns[0](u0))
    for n in range(1, 4):
        states.append(u)
        mix = sum(kj * s for kj, s in zip(k[n - 1], states)) / sum(k[n - 1])
        u = torch.tanh(mix + fns[n](u))
    out, history = stage.forward_with_history(u0)
    assert torch.allclose(out, u, atol=1e-15) and history is None


@pytest.mark.slow
def test_one_hot_weights_on_u_n_reproduce_the_plain_twin_exactly() -> None:
    """k_{nj} = 0 for j < n (any k_{nn} != 0): w = e_n, u_{n+1} = u_n + f_n(u_n), bit for bit, in eval and training
    mode, and the gradients of the shared weights agree."""
    plain = randomise_bn(create_model("preact_resnet20"))
    dense = create_model("dense_resnet20")
    missing, unexpected = dense.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == [f"stages.{i}.dense_k" for i in range(3)] and not unexpected
    x = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(dense.eval()(x), plain.eval()(x))  # the official init mixes the history
    with torch.no_grad():
        for s, stage in enumerate(dense.stages):
            stage.dense_k.zero_()
            for n in range(1, 3):
                stage.dense_k[dense_k_index(n, n)] = -0.01 * (n + s + 1)
    assert torch.equal(dense(x), plain(x))
    out_d, out_p = dense.train()(x), plain.train()(x)
    assert torch.equal(out_d, out_p)
    out_d.square().mean().backward()
    out_p.square().mean().backward()
    grads = dict(plain.named_parameters())
    for name, param in dense.named_parameters():
        if name in grads:
            assert torch.equal(param.grad, grads[name].grad), name


# ------------------------------------------------------------------------------------------------ convergence
def _banded(tail: tuple[float, ...], steps: int) -> tuple[tuple[float, ...], ...]:
    """Rows of k for steps 1 .. steps-1: ``tail`` on the newest len(tail) states once the history is that long,
    forward Euler (weight 1 on u_n) before."""
    rows = []
    for n in range(1, steps):
        row = [0.0] * (n + 1)
        if n + 1 >= len(tail):
            row[n + 1 - len(tail) :] = tail
        else:
            row[n] = 1.0
        rows.append(tuple(row))
    return tuple(rows)


def _integrate(tail: tuple[float, ...], n: int) -> torch.Tensor:
    h = T / n
    return Stage(DenseScheme(fixed_k=_banded(tail, n)), [lambda u: h * (u @ A.T)] * n)(U0.clone())


def _orders(tail: tuple[float, ...], exact: torch.Tensor, ns=(32, 64, 128, 256)) -> tuple[list[float], list[float]]:
    errs = [torch.linalg.vector_norm(_integrate(tail, n) - exact).item() for n in ns]
    return errs, [math.log2(e0 / e1) for e0, e1 in itertools.pairwise(errs)]


@pytest.mark.parametrize("tail", [(1.0,), (0.0, 1.0), (0.5, -1.0, 1.5)])
def test_stage_converges_at_the_order_its_coefficients_give(tail: tuple[float, ...]) -> None:
    """On u' = A u with fixed weights, the observed order is the order computed from the frozen coefficients
    (forward Euler 1; u_{n+1} = 1.5 u_n - u_{n-1} + 0.5 u_{n-2} + f(u_n), zero-stable, 2)."""
    step = dense_step(tail)
    assert step["consistent"] and step["zero_stable"]
    errs, orders = _orders(tail, torch.linalg.matrix_exp(A * T) @ U0)
    assert abs(orders[-1] - step["order"]) < 0.15, (step["order"], errs, orders)


def test_convex_weights_converge_to_the_rescaled_ode() -> None:
    """Convex weights (the official init's kind) sum to one but are consistent with c u' = g(u), c = rho'(1) > 1,
    not with u' = g(u): the stage converges at first order to expm(A T / c) u0, as LM's does for (1 + k) u' = g."""
    tail = (0.25, 0.25, 0.5)
    step = dense_step(tail)
    assert step["order"] == 0 and step["c"] == pytest.approx(1.75) and step["zero_stable"]
    assert multistep_order(step["alpha"], [step["c"] * b for b in step["beta"]]) == 1
    errs, orders = _orders(tail, torch.linalg.matrix_exp(A * T / step["c"]) @ U0)
    assert errs[-1] < 0.02 and abs(orders[-1] - 1) < 0.1, (errs, orders)
    assert torch.linalg.vector_norm(_integrate(tail, 256) - torch.linalg.matrix_exp(A * T) @ U0) > 10 * errs[-1]


# --------------------------------------------------------------------------------------------------- gradients
def test_gradients_match_finite_differences_in_float64() -> None:
    """d/du_0 and d/dk of a stage with a transition, learnable k, one row in the guard band (|sum| < 1e-3)."""
    torch.manual_seed(0)
    fns = [nn.Sequential(nn.Linear(D, D), nn.Tanh()) for _ in range(4)]
    stage = Stage("dense", fns, shortcut=nn.Linear(D, D)).double()
    k = stage.dense_k.detach().clone()
    k[dense_k_index(2, 0) : dense_k_index(2, 2) + 1] = torch.tensor([4e-4, -1e-4, -1e-4], dtype=torch.float64)
    u0 = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    k.requires_grad_(True)

    def run(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(stage, {"dense_k": k}, (u,))

    assert torch.autograd.gradcheck(run, (u0, k), eps=1e-7, atol=1e-6)
    assert isinstance(stage.dense_k, nn.Parameter) and stage.dense_k.shape == (dense_k_count(4),)


def test_learned_k_get_gradients_under_bf16_autocast_in_channels_last() -> None:
    model = create_model("dense_resnet20").to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    ref = model(x).detach()
    assert out.dtype == torch.bfloat16 and float((out.detach().float() - ref).norm() / ref.norm()) < 0.05
    out.float().sum().backward()
    for stage in model.stages:
        assert stage.dense_k.dtype == torch.float32 and stage.dense_k.grad.abs().sum() > 0


# ------------------------------------------------------------------------------- memory, stochastic depth, graphs
def test_recompute_gives_the_gradients_of_store_and_reversible_is_refused() -> None:
    torch.manual_seed(0)
    ref = create_model("dense_resnet20", p_last=0.5, drop_mode="sample").double()
    rec = set_memory(create_model("dense_resnet20", p_last=0.5, drop_mode="sample").double(), "recompute")
    rec.load_state_dict(ref.state_dict())
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.arange(4)
    grads = []
    for model in (ref, rec):
        torch.manual_seed(1)
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-12, atol=1e-12 * float(g.abs().max()), msg=name)
    with pytest.raises(ValueError, match="needs the rev scheme"):
        set_memory(ref, "reversible")


def _saved_for_backward(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass of one training forward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(x)
    return sum(storages.values())


@pytest.mark.parametrize("layers", [(3, 3, 3), (9, 9, 9)])
def test_the_kept_history_costs_only_the_projections_at_any_depth(layers: tuple[int, int, int]) -> None:
    """In training (``store``) every state u_n is saved anyway (by the next block's BatchNorm): a dense network saves
    what its plain twin saves plus P(u_0) of its two transitions and a few scalars per k, at any depth."""
    from odearch.models import build_preact_resnet

    x = torch.randn(4, 3, 32, 32)
    plain = _saved_for_backward(build_preact_resnet(layers=layers), x)
    extra = _saved_for_backward(build_preact_resnet(layers=layers, scheme="dense"), x) - plain
    projections = 4 * (32 * 16 * 16 + 64 * 8 * 8) * 4  # P(u_0) of stages 2 and 3, float32
    scalars = 3 * dense_k_count(layers[0]) * 32  # k, w and the row sums: a few float32 scalars per k at most
    assert 0 <= extra - projections < scalars, (extra, projections, scalars)


def test_per_batch_stochastic_depth_keeps_the_real_history() -> None:
    """u_{n+1} = sum_j w_{nj} u_j + (eta_n / p_n) f_n(u_n), eta_n from one CPU torch.rand(()) per block in step order;
    a dropped transition gives u_1 = P(u_0), a dropped step the weighted history alone."""
    k = ((-0.03, -0.07), (-0.01, -0.05, -0.02), (-0.09, -0.01, -0.04, -0.06))
    survival = (0.5,) * 4
    mats = [0.3 * torch.randn(D, D, dtype=torch.float64) for _ in survival]
    fns = [lambda u, a=a: u @ a.T for a in mats]
    p = lambda u: 2.0 * u  # noqa: E731
    stage = Stage(DenseScheme(fixed_k=k), fns, shortcut=p, survival=survival)
    u0 = torch.randn(2, D, dtype=torch.float64)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        eta = [float(torch.rand(())) < q for q in survival]
        torch.manual_seed(seed)
        out = stage(u0)
        states, u = [p(u0)], p(u0) + (fns[0](u0) / 0.5 if eta[0] else 0.0)
        for n in range(1, 4):
            states.append(u)
            mix = sum(kj * s for kj, s in zip(k[n - 1], states)) / sum(k[n - 1])
            u = mix + (fns[n](u) / 0.5 if eta[n] else 0.0)
        assert torch.allclose(out, u, atol=1e-13)
        seen.update(eta)
    assert seen == {True, False}


@pytest.mark.slow
def test_torch_export_fx_and_timm() -> None:
    model = create_model("dense_resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), model(x))
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))
    timm = pytest.importorskip("timm", reason="timm is optional (not a dependency of odearch)")
    from odearch.timm_models import register_timm

    assert {"odearch_dense_resnet20", "odearch_dense_resnet110"} <= set(register_timm())
    assert timm.create_model("odearch_dense_resnet20", num_classes=3, drop_path_rate=0.1)(x).shape == (2, 3)


# ---------------------------------------------------------------------------------------- init and the model zoo
def test_paired_init_shares_every_weight_and_the_rng_stream_with_the_plain_twin() -> None:
    """dense_k is drawn from a copy of the global RNG (as lm_k): at one seed dense_resnet20 starts from exactly
    preact_resnet20's weights, and what is drawn after the model is the same too."""
    built = {}
    for name in ("preact_resnet20", "dense_resnet20"):
        torch.manual_seed(3)
        built[name] = (create_model(name).state_dict(), torch.get_rng_state())
    (plain, rng_p), (dense, rng_d) = built["preact_resnet20"], built["dense_resnet20"]
    assert set(dense) - set(plain) == {f"stages.{i}.dense_k" for i in range(3)} and set(plain) <= set(dense)
    assert [key for key in plain if not torch.equal(plain[key], dense[key])] == []
    assert torch.equal(rng_p, rng_d)
    flat = torch.cat([dense[f"stages.{i}.dense_k"] for i in range(3)])
    assert ((flat >= -0.1) & (flat <= 0.0)).all() and len(set(flat.tolist())) == 15  # U[-0.1, 0], every one drawn
    torch.manual_seed(3)
    with lm_k_draw("global"):  # the draw from the global RNG shifts every later weight, as for lm_k
        shifted = create_model("dense_resnet20").state_dict()
    assert not torch.equal(shifted["stages.2.blocks.2.conv2.weight"], plain["stages.2.blocks.2.conv2.weight"])


@pytest.mark.parametrize(
    ("name", "twin", "count", "steps"),
    [
        ("dense_resnet20", "preact_resnet20", 272_393, 3),
        ("dense_resnet110", "preact_resnet110", 1_731_128, 18),
    ],
)
def test_parameter_counts_are_the_twin_plus_one_k_per_pair(name: str, twin: str, count: int, steps: int) -> None:
    """N(N + 1)/2 - 1 k per stage of N steps (the official DenseBlock stores N^2, of which N(N - 1)/2 are never read
    and k_00 cancels out)."""
    with torch.device("meta"):
        model, plain = create_model(name), create_model(twin)
    assert n_params(model) == count and count - n_params(plain) == 3 * (steps * (steps + 1) // 2 - 1)
    assert [s.runner.__class__ for s in model.stages] == [DenseRunner] * 3
    assert {"dense_resnet20", "dense_resnet110"} <= set(odearch.list_models("dense_*"))
    assert model.stages[0].shortcut is None and all(s.shortcut is not None for s in model.stages[1:])


# ---------------------------------------------------------------------------------------------------- analyze
def _read(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_analyze_a_dense_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The weight matrix per stage (heatmap, long-form CSV and text), each step's frozen coefficients, consistency,
    order and zero-stability; a row in the guard band is flagged."""
    model = create_model("dense_resnet20")
    with torch.no_grad():
        model.stages[0].dense_k.copy_(torch.tensor([0.0, -0.5, 0.0, 0.0, -0.2]))  # one-hot on u_n: forward Euler
        model.stages[1].dense_k.copy_(torch.tensor([-0.1, -0.3, 5e-4, -1e-4, -1e-4]))  # step 2 in the guard band
    ks = dense_coefficients(model)
    assert list(ks) == ["stages.0", "stages.1", "stages.2"] and len(ks["stages.2"][1]) == 3
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: dense_resnet20\n")
    save_file(model.state_dict(), str(run / "checkpoints" / "last.safetensors"))
    assert main(["analyze", str(run)]) == 0
    out = run / "analysis"
    rows = _read(out / "dense_table.csv")
    assert [(r["stage"], r["step"], r["depth"]) for r in rows] == [
        (f"stages.{s}", str(n), str(3 * s + n)) for s in range(3) for n in (1, 2)
    ]
    euler = rows[:2]
    assert all(r["consistent"] == "True" and r["order"] == "1" and float(r["c"]) == 1.0 for r in euler)
    assert rows[2]["alpha"] == "-0.25 -0.75 1" and float(rows[2]["c"]) == pytest.approx(1.25)
    assert [r["clamped"] for r in rows] == ["False"] * 3 + ["True", "False", "False"]
    assert all(r["zero_stable"] == "True" for r in rows[4:])  # the official init: convex weights
    weights = _read(out / "dense_weights.csv")
    assert len(weights) == 3 * 5 and {r["run"] for r in weights} == {"run"}
    assert [float(r["w"]) for r in weights[2:5]] == pytest.approx([0.0, 0.0, 1.0])
    assert (out / "dense_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "stages.1: weights w_nj" in printed and "YES" in printed and "model dense_resnet20" in printed
    assert (out / "dense_table.txt").read_text().strip() in printed and not (out / "lm_table.csv").exists()


def test_analyze_dense_and_lm_together_and_a_bad_dense_vector(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_file(create_model("dense_resnet20").state_dict(), str(tmp_path / "dense.safetensors"))
    save_file(create_model("lm_resnet20").state_dict(), str(tmp_path / "lm.safetensors"))
    assert (
        main(
            [
                "analyze",
                str(tmp_path / "dense.safetensors"),
                str(tmp_path / "lm.safetensors"),
                "--out",
                str(tmp_path / "both"),
            ]
        )
        == 0
    )
    assert {r["run"] for r in _read(tmp_path / "both" / "dense_table.csv")} == {"dense"}
    assert {r["run"] for r in _read(tmp_path / "both" / "lm_table.csv")} == {"lm"}
    capsys.readouterr()
    save_file({"stages.0.dense_k": torch.zeros(4)}, str(tmp_path / "bad.safetensors"))
    assert main(["analyze", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("odearch analyze: error:") and "stages.0.dense_k: 4 dense coefficients" in err
