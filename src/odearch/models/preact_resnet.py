"""Pre-activation CIFAR ResNets under any scheme: the LM-ResNets of the paper and their exact plain twins.

Prefix legend (the scheme integrating every stage; the backbone is the same):

| prefix | scheme | update |
|---|---|---|
| ``preact_`` | forward Euler | u_{n+1} = u_n + f_n(u_n) (ResNet, He et al. 2016) |
| ``lm_`` | LM two-step | u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n) (the paper, LM-ResNet) |
| ``rk2_`` / ``rk4_`` | Runge-Kutta | Heun / classical RK4, weights shared inside a step |
| ``fractal_`` | Heun, distinct f per inner stage | the paper's FractalNet reading of RK2 |
| ``ab2_`` | Adams-Bashforth 2 | u_{n+2} = u_{n+1} + (3/2) f(u_{n+1}) - (1/2) f(u_n) |
| ``poly2_`` | PolyNet | u_{n+1} = u_n + F(u_n) + F(F(u_n)) |
| ``rev_`` | RevNet | X_{n+1} = X_n + F(Y_n), Y_{n+1} = Y_n + G(X_{n+1}), half-width F, G; reversible backprop |

Layout (the paper and its official code ``MResNet``): stem conv3x3(3, 16) without BN; 3 stages of widths
16 / 32 / 64 (x4 for bottlenecks), strides 1 / 2 / 2; each down-sampling stage starts with a plain step whose
shortcut is P = BN-ReLU-conv1x1; head BN-ReLU-global average pool-FC. Depth 6n + 2 with basic blocks (n per stage),
9n + 2 with bottlenecks. Every model takes ``scheme=`` to swap the integrator.

Stochastic training (``p_last=``, ``drop_mode=``, ``noise_sigma=`` on every model; see :mod:`odearch.nn.drop`):
the ``_sd`` rows carry the paper's stochastic-depth setting, survival decaying linearly over all blocks from 1 to
p_L (0.8 for depth 56, 0.5 for 110), one draw per block and mini-batch; ``preact_resnet*_sd`` are the exact plain
twins of ``lm_resnet*_sd``, so a comparison isolates the LM coupling. The paper trains them 500 epochs: lr 0.1,
/ 10 after epochs 250 and 375, weight decay 1e-4, momentum 0.9, batch 128.
"""

from __future__ import annotations

from torch import nn

from ..nn import PreActBasicBlock, PreActBottleneck, PreActProjection, ResidualNetwork, conv3x3, init_weights
from ..nn.memory import default_memory, set_memory
from ..schemes import Scheme
from ._builders import make_stage, register_table, stochastic_options

__all__ = ["preact_resnet"]


def preact_resnet(
    layers: tuple[int, int, int],
    bottleneck: bool = False,
    scheme: str | Scheme = "euler",
    num_classes: int = 10,
    widths: tuple[int, int, int] = (16, 32, 64),
    fractal: bool = False,
    p_last: float | None = None,
    drop_mode: str = "batch",
    noise_sigma: float | None = None,
    memory: str | None = None,
) -> ResidualNetwork:
    """A pre-activation CIFAR ResNet whose stages integrate with ``scheme``.

    Args:
        layers: residual blocks per stage.
        bottleneck: bottleneck blocks (ResNet-164 / 1001) instead of basic blocks.
        scheme: the integrator (a name from ``odearch.schemes.SCHEMES`` or a scheme object).
        num_classes: classifier size.
        widths: stage widths before the bottleneck expansion.
        fractal: for a Runge-Kutta scheme, one block per inner stage (FractalNet reading) instead of one per step.
        p_last: stochastic depth: survival probability of the last block, linear decay from 1 over all blocks
            (None or 1: off).
        drop_mode: stochastic depth per mini-batch (``"batch"``) or per sample (``"sample"``).
        noise_sigma: noise injection after every block in training (None: off).
        memory: activation memory of the backward pass, ``"store"``, ``"recompute"`` or ``"reversible"``
            (:mod:`odearch.nn.memory`); None: ``"reversible"`` for the rev scheme (the ``rev_`` models), else
            ``"store"``.
    """
    block = PreActBottleneck if bottleneck else PreActBasicBlock
    stochastic = stochastic_options(layers, p_last, drop_mode, noise_sigma)
    in_planes, stages = widths[0], []
    for planes, stride, n, opts in zip(widths, (1, 2, 2), layers, stochastic):
        out_planes = planes * block.expansion
        stages.append(
            make_stage(
                scheme,
                block,
                in_planes,
                planes,
                out_planes,
                n,
                stride,
                shortcut=PreActProjection,
                fractal=fractal,
                **opts,  # type: ignore[arg-type]
            )
        )
        in_planes = out_planes
    head = nn.Sequential(
        nn.BatchNorm2d(in_planes), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes)
    )
    model = ResidualNetwork(conv3x3(3, widths[0]), stages, head)
    init_weights(model)
    set_memory(model, default_memory(model) if memory is None else memory)
    return model


_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 164: "1.7M", 1001: "10.2M"}
_ERR = {20: "8.33", 32: "7.18", 44: "6.66", 56: "6.31", 110: "6.16 (?)"}


def _depth_args(depth: int) -> dict[str, object]:
    if depth in (164, 1001):
        return {"layers": ((depth - 2) // 9,) * 3, "bottleneck": True}
    return {"layers": ((depth - 2) // 6,) * 3, "bottleneck": False}


_ROWS: list[tuple[str, dict[str, object], str]] = []
for _d in (20, 32, 44, 56, 110, 164, 1001):
    _kind = "bottleneck" if _d in (164, 1001) else "basic"
    _ROWS.append(
        (
            f"preact_resnet{_d}",
            _depth_args(_d),
            f"Pre-activation ResNet-{_d} ({_kind} blocks, {_PARAMS[_d]}), forward Euler: the exact plain twin of "
            f"lm_resnet{_d} (He et al. 2016, https://arxiv.org/abs/1603.05027).",
        )
    )
    _ROWS.append(
        (
            f"lm_resnet{_d}",
            {**_depth_args(_d), "scheme": "lm"},
            f"LM-ResNet-{_d} ({_kind} blocks, {_PARAMS[_d]} + one k_n per LM step): "
            f"u_{{n+1}} = (1 - k_n) u_n + k_n u_{{n-1}} + f_n(u_n) (Lu et al. 2018, https://arxiv.org/abs/1710.10121"
            + (f"; CIFAR-10 error {_ERR[_d]}%)." if _d in _ERR else ")."),
        )
    )
for _scheme, _what in (
    ("rk2", "Heun's 2nd-order Runge-Kutta, one block per step shared by its two evaluations"),
    ("rk4", "classical 4th-order Runge-Kutta, one block per step shared by its four evaluations"),
    ("ab2", "Adams-Bashforth 2 (started with one Heun step)"),
    ("poly2", "PolyNet's u + F(u) + F(F(u)), approximate backward Euler"),
    ("rev", "RevNet's coupled forward Euler on channel halves, half-width F and G"),
):
    _ROWS.append(
        (
            f"{_scheme}_resnet20",
            {**_depth_args(20), "scheme": _scheme},
            f"Pre-activation ResNet-20 backbone integrated by {_what} (paper Table 1).",
        )
    )
for _d in (56, 110, 164):
    _ROWS.append(
        (
            f"rev_resnet{_d}",
            {**_depth_args(_d), "scheme": "rev"},
            f"Pre-activation ResNet-{_d} backbone ({'bottleneck' if _d == 164 else 'basic'} blocks) integrated by "
            "RevNet's coupled forward Euler on channel halves, half-width F and G; trains with reversible "
            "backpropagation (activation memory independent of depth; Gomez et al. 2017).",
        )
    )
_ROWS.append(
    (
        "fractal_resnet20",
        {**_depth_args(20), "scheme": "rk2", "fractal": True},
        "Pre-activation ResNet-20 backbone as the paper's FractalNet reading of RK2: Heun's scheme with a "
        "distinct block per inner stage (twice the parameters of preact_resnet20).",
    )
)

_SD_ERR = {56: "5.14 (?)", 110: "4.80 (?)"}
for _d, _p_last in ((56, 0.8), (110, 0.5)):
    _sd = (
        f"stochastic depth with p_L = {_p_last} (survival 1 - i / (n - 1) (1 - p_L) for block i of all n = "
        f"{(_d - 2) // 2} blocks, per mini-batch), trained 500 epochs (lr 0.1, / 10 after epochs 250 and 375)"
    )
    _ROWS.append(
        (
            f"lm_resnet{_d}_sd",
            {**_depth_args(_d), "scheme": "lm", "p_last": _p_last},
            f"LM-ResNet-{_d} with {_sd}: u_{{n+1}} = (1 - k_n) u_n + k_n u_{{n-1}} + (eta_n / p_n) f_n(u_n), "
            f"eta_n ~ Bernoulli(p_n) (Lu et al. 2018, stochastic-depth row: CIFAR-10 error {_SD_ERR[_d]}%; "
            f"{_PARAMS[_d]} parameters).",
        )
    )
    _ROWS.append(
        (
            f"preact_resnet{_d}_sd",
            {**_depth_args(_d), "p_last": _p_last},
            f"Pre-activation ResNet-{_d} with {_sd}: the exact plain (k_n = 0) twin of lm_resnet{_d}_sd, "
            f"u_{{n+1}} = u_n + (eta_n / p_n) f_n(u_n) (Huang et al. 2016, https://arxiv.org/abs/1603.09382, on the "
            f"paper's pre-activation backbone; {_PARAMS[_d]} parameters).",
        )
    )

register_table(_ROWS, preact_resnet, __name__)
