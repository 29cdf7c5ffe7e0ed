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
| ``dense_`` | DenseResNet | u_{n+1} = (sum_{j<=n} k_{nj} u_j) / (sum_{j<=n} k_{nj}) + f_n(u_n), learned k (official) |

Layout (the paper and its official code ``MResNet``): stem conv3x3(3, 16) without BN; 3 stages of widths
16 / 32 / 64 (x4 for bottlenecks), strides 1 / 2 / 2; each down-sampling stage starts with a plain step whose
shortcut is P = BN-ReLU-conv1x1; head BN-ReLU-global average pool-FC. Depth 6n + 2 with basic blocks (n per stage),
9n + 2 with bottlenecks. Every model takes ``scheme=`` to swap the integrator.

Stochastic training (``p_last=``, ``drop_mode=``, ``noise_sigma=``, or one ``stochastic=`` value, on every model; see
:mod:`odearch.nn.stochastic`): the ``_sd`` rows carry the paper's stochastic-depth setting, survival decaying
linearly over all blocks from 1 to p_L (0.8 for depth 56, 0.5 for 110), one draw per block and mini-batch;
``preact_resnet*_sd`` are the exact plain twins of ``lm_resnet*_sd``, so a comparison isolates the LM coupling. The
paper trains them 500 epochs: lr 0.1, / 10 after epochs 250 and 375, weight decay 1e-4, momentum 0.9, batch 128.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..nn import PreActBasicBlock, PreActBottleneck, PreActProjection, ResidualNetwork, conv3x3, init_weights
from ..nn.memory import default_memory, set_memory
from ..nn.stochastic import StochasticDepth
from ..schemes import Scheme
from ._builders import StageSpec, make_stages
from ._registry import register_table

__all__ = ["preact_resnet"]


def preact_resnet(
    layers: tuple[int, int, int],
    bottleneck: bool = False,
    scheme: str | Scheme = "euler",
    num_classes: int = 10,
    widths: tuple[int, int, int] = (16, 32, 64),
    fractal: bool = False,
    stochastic: StochasticDepth | None = None,
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
        stochastic: stochastic depth and noise injection (default off).
        memory: activation memory of the backward pass, ``"store"``, ``"recompute"`` or ``"reversible"``
            (:mod:`odearch.nn.memory`); None: ``"reversible"`` for the rev scheme (the ``rev_`` models), else
            ``"store"``.
    """
    block = PreActBottleneck if bottleneck else PreActBasicBlock
    specs = [StageSpec(w, w * block.expansion, n, stride) for w, n, stride in zip(widths, layers, (1, 2, 2))]
    stages = make_stages(
        scheme, specs, widths[0], block=block, shortcut=PreActProjection, fractal=fractal, stochastic=stochastic
    )
    width = specs[-1].out_planes
    head = nn.Sequential(
        nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)
    )
    model = ResidualNetwork(conv3x3(3, widths[0]), stages, head)
    init_weights(model)
    set_memory(model, default_memory(model) if memory is None else memory)
    return model


# One row per registered name: name -> (constructor arguments, docstring).
_ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "preact_resnet20": (
        dict(layers=(3, 3, 3), bottleneck=False),
        "Pre-activation ResNet-20 (basic blocks, 0.27M), forward Euler: the exact plain twin of lm_resnet20 (He et "
        "al. 2016, https://arxiv.org/abs/1603.05027).",
    ),
    "lm_resnet20": (
        dict(layers=(3, 3, 3), bottleneck=False, scheme="lm"),
        "LM-ResNet-20 (basic blocks, 0.27M + one k_n per LM step): u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n) "
        "(Lu et al. 2018, https://arxiv.org/abs/1710.10121; CIFAR-10 error 8.33%).",
    ),
    "preact_resnet32": (
        dict(layers=(5, 5, 5), bottleneck=False),
        "Pre-activation ResNet-32 (basic blocks, 0.46M), forward Euler: the exact plain twin of lm_resnet32 (He et "
        "al. 2016, https://arxiv.org/abs/1603.05027).",
    ),
    "lm_resnet32": (
        dict(layers=(5, 5, 5), bottleneck=False, scheme="lm"),
        "LM-ResNet-32 (basic blocks, 0.46M + one k_n per LM step): u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n) "
        "(Lu et al. 2018, https://arxiv.org/abs/1710.10121; CIFAR-10 error 7.18%).",
    ),
    "preact_resnet44": (
        dict(layers=(7, 7, 7), bottleneck=False),
        "Pre-activation ResNet-44 (basic blocks, 0.66M), forward Euler: the exact plain twin of lm_resnet44 (He et "
        "al. 2016, https://arxiv.org/abs/1603.05027).",
    ),
    "lm_resnet44": (
        dict(layers=(7, 7, 7), bottleneck=False, scheme="lm"),
        "LM-ResNet-44 (basic blocks, 0.66M + one k_n per LM step): u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n) "
        "(Lu et al. 2018, https://arxiv.org/abs/1710.10121; CIFAR-10 error 6.66%).",
    ),
    "preact_resnet56": (
        dict(layers=(9, 9, 9), bottleneck=False),
        "Pre-activation ResNet-56 (basic blocks, 0.85M), forward Euler: the exact plain twin of lm_resnet56 (He et "
        "al. 2016, https://arxiv.org/abs/1603.05027).",
    ),
    "lm_resnet56": (
        dict(layers=(9, 9, 9), bottleneck=False, scheme="lm"),
        "LM-ResNet-56 (basic blocks, 0.85M + one k_n per LM step): u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n) "
        "(Lu et al. 2018, https://arxiv.org/abs/1710.10121; CIFAR-10 error 6.31%).",
    ),
    "preact_resnet110": (
        dict(layers=(18, 18, 18), bottleneck=False),
        "Pre-activation ResNet-110 (basic blocks, 1.7M), forward Euler: the exact plain twin of lm_resnet110 (He et "
        "al. 2016, https://arxiv.org/abs/1603.05027).",
    ),
    "lm_resnet110": (
        dict(layers=(18, 18, 18), bottleneck=False, scheme="lm"),
        "LM-ResNet-110 (basic blocks, 1.7M + one k_n per LM step): u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n) "
        "(Lu et al. 2018, https://arxiv.org/abs/1710.10121; CIFAR-10 error 6.16 (?)%).",
    ),
    "preact_resnet164": (
        dict(layers=(18, 18, 18), bottleneck=True),
        "Pre-activation ResNet-164 (bottleneck blocks, 1.7M), forward Euler: the exact plain twin of lm_resnet164 (He"
        " et al. 2016, https://arxiv.org/abs/1603.05027).",
    ),
    "lm_resnet164": (
        dict(layers=(18, 18, 18), bottleneck=True, scheme="lm"),
        "LM-ResNet-164 (bottleneck blocks, 1.7M + one k_n per LM step): u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + "
        "f_n(u_n) (Lu et al. 2018, https://arxiv.org/abs/1710.10121).",
    ),
    "preact_resnet1001": (
        dict(layers=(111, 111, 111), bottleneck=True),
        "Pre-activation ResNet-1001 (bottleneck blocks, 10.2M), forward Euler: the exact plain twin of lm_resnet1001 "
        "(He et al. 2016, https://arxiv.org/abs/1603.05027).",
    ),
    "lm_resnet1001": (
        dict(layers=(111, 111, 111), bottleneck=True, scheme="lm"),
        "LM-ResNet-1001 (bottleneck blocks, 10.2M + one k_n per LM step): u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + "
        "f_n(u_n) (Lu et al. 2018, https://arxiv.org/abs/1710.10121).",
    ),
    "rk2_resnet20": (
        dict(layers=(3, 3, 3), bottleneck=False, scheme="rk2"),
        "Pre-activation ResNet-20 backbone integrated by Heun's 2nd-order Runge-Kutta, one block per step shared by "
        "its two evaluations (paper Table 1).",
    ),
    "rk4_resnet20": (
        dict(layers=(3, 3, 3), bottleneck=False, scheme="rk4"),
        "Pre-activation ResNet-20 backbone integrated by classical 4th-order Runge-Kutta, one block per step shared "
        "by its four evaluations (paper Table 1).",
    ),
    "ab2_resnet20": (
        dict(layers=(3, 3, 3), bottleneck=False, scheme="ab2"),
        "Pre-activation ResNet-20 backbone integrated by Adams-Bashforth 2 (started with one Heun step) (paper Table "
        "1).",
    ),
    "poly2_resnet20": (
        dict(layers=(3, 3, 3), bottleneck=False, scheme="poly2"),
        "Pre-activation ResNet-20 backbone integrated by PolyNet's u + F(u) + F(F(u)), approximate backward Euler "
        "(paper Table 1).",
    ),
    "fractal_resnet20": (
        dict(layers=(3, 3, 3), bottleneck=False, scheme="rk2", fractal=True),
        "Pre-activation ResNet-20 backbone as the paper's FractalNet reading of RK2: Heun's scheme with a distinct "
        "block per inner stage (twice the parameters of preact_resnet20).",
    ),
    "rev_resnet20": (
        dict(layers=(3, 3, 3), bottleneck=False, scheme="rev"),
        "Pre-activation ResNet-20 backbone integrated by RevNet's coupled forward Euler on channel halves, half-width"
        " F and G (paper Table 1).",
    ),
    "rev_resnet56": (
        dict(layers=(9, 9, 9), bottleneck=False, scheme="rev"),
        "Pre-activation ResNet-56 backbone (basic blocks) integrated by RevNet's coupled forward Euler on channel "
        "halves, half-width F and G; trains with reversible backpropagation (activation memory independent of depth; "
        "Gomez et al. 2017).",
    ),
    "rev_resnet110": (
        dict(layers=(18, 18, 18), bottleneck=False, scheme="rev"),
        "Pre-activation ResNet-110 backbone (basic blocks) integrated by RevNet's coupled forward Euler on channel "
        "halves, half-width F and G; trains with reversible backpropagation (activation memory independent of depth; "
        "Gomez et al. 2017).",
    ),
    "rev_resnet164": (
        dict(layers=(18, 18, 18), bottleneck=True, scheme="rev"),
        "Pre-activation ResNet-164 backbone (bottleneck blocks) integrated by RevNet's coupled forward Euler on "
        "channel halves, half-width F and G; trains with reversible backpropagation (activation memory independent of"
        " depth; Gomez et al. 2017).",
    ),
    "dense_resnet20": (
        dict(layers=(3, 3, 3), bottleneck=False, scheme="dense"),
        "DenseResNet-20 of the official code (DenseResNet20: basic blocks, 0.27M + 5 k_{nj} per stage): u_{n+1} = "
        "(sum_{j<=n} k_{nj} u_j) / (sum_{j<=n} k_{nj}) + f_n(u_n), k_{nj} ~ U[-0.1, 0], u_0 of a down-sampling stage "
        "replaced by P(u_0); the plain twin is preact_resnet20 (Lu et al. 2018, https://arxiv.org/abs/1710.10121).",
    ),
    "dense_resnet110": (
        dict(layers=(18, 18, 18), bottleneck=False, scheme="dense"),
        "DenseResNet-110 of the official code (DenseResNet110: basic blocks, 1.7M + 170 k_{nj} per stage): u_{n+1} = "
        "(sum_{j<=n} k_{nj} u_j) / (sum_{j<=n} k_{nj}) + f_n(u_n), k_{nj} ~ U[-0.1, 0], u_0 of a down-sampling stage "
        "replaced by P(u_0); the plain twin is preact_resnet110 (Lu et al. 2018, https://arxiv.org/abs/1710.10121).",
    ),
    "preact_resnet56_sd": (
        dict(layers=(9, 9, 9), bottleneck=False, stochastic=StochasticDepth(p_last=0.8)),
        "Pre-activation ResNet-56 with stochastic depth with p_L = 0.8 (survival 1 - i / (n - 1) (1 - p_L) for block "
        "i of all n = 27 blocks, per mini-batch), trained 500 epochs (lr 0.1, / 10 after epochs 250 and 375): the "
        "exact plain (k_n = 0) twin of lm_resnet56_sd, u_{n+1} = u_n + (eta_n / p_n) f_n(u_n) (Huang et al. 2016, "
        "https://arxiv.org/abs/1603.09382, on the paper's pre-activation backbone; 0.85M parameters).",
    ),
    "lm_resnet56_sd": (
        dict(layers=(9, 9, 9), bottleneck=False, scheme="lm", stochastic=StochasticDepth(p_last=0.8)),
        "LM-ResNet-56 with stochastic depth with p_L = 0.8 (survival 1 - i / (n - 1) (1 - p_L) for block i of all n ="
        " 27 blocks, per mini-batch), trained 500 epochs (lr 0.1, / 10 after epochs 250 and 375): u_{n+1} = (1 - k_n)"
        " u_n + k_n u_{n-1} + (eta_n / p_n) f_n(u_n), eta_n ~ Bernoulli(p_n) (Lu et al. 2018, stochastic-depth row: "
        "CIFAR-10 error 5.14 (?)%; 0.85M parameters).",
    ),
    "preact_resnet110_sd": (
        dict(layers=(18, 18, 18), bottleneck=False, stochastic=StochasticDepth(p_last=0.5)),
        "Pre-activation ResNet-110 with stochastic depth with p_L = 0.5 (survival 1 - i / (n - 1) (1 - p_L) for block"
        " i of all n = 54 blocks, per mini-batch), trained 500 epochs (lr 0.1, / 10 after epochs 250 and 375): the "
        "exact plain (k_n = 0) twin of lm_resnet110_sd, u_{n+1} = u_n + (eta_n / p_n) f_n(u_n) (Huang et al. 2016, "
        "https://arxiv.org/abs/1603.09382, on the paper's pre-activation backbone; 1.7M parameters).",
    ),
    "lm_resnet110_sd": (
        dict(layers=(18, 18, 18), bottleneck=False, scheme="lm", stochastic=StochasticDepth(p_last=0.5)),
        "LM-ResNet-110 with stochastic depth with p_L = 0.5 (survival 1 - i / (n - 1) (1 - p_L) for block i of all n "
        "= 54 blocks, per mini-batch), trained 500 epochs (lr 0.1, / 10 after epochs 250 and 375): u_{n+1} = (1 - "
        "k_n) u_n + k_n u_{n-1} + (eta_n / p_n) f_n(u_n), eta_n ~ Bernoulli(p_n) (Lu et al. 2018, stochastic-depth "
        "row: CIFAR-10 error 4.80 (?)%; 1.7M parameters).",
    ),
}
register_table(preact_resnet, __name__, _ROWS)
