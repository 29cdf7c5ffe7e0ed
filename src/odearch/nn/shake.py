"""Shake-shake (Gastaldi 2017, https://arxiv.org/abs/1705.07485): a two-branch residual function with random weights.

    f(u) = eta f1(u) + (1 - eta) f2(u),   eta ~ U(0, 1) per sample in training, eta = 1/2 in evaluation

and the backward pass uses an independent beta ~ U(0, 1) in place of eta ("shake-shake-image": forward and backward
coefficients drawn per image). The step X_{n+1} = X_n + f is X_n + (f1 + f2) / 2 + (eta - 1/2)(f1 - f2), and
Var(eta) = 1/12, so it is a weak approximation of the SDE dX = (f1 + f2) / 2 dt + sqrt(dt / 12)(f1 - f2) dB
(Lu et al. 2018, "stochastic training as stochastic dynamics"); evaluation runs the mean dynamics, eta = 1/2.

Only the residual function is shaken: the skip connection and the scheme stay in :class:`~odearch.nn.Stage`, so the
same module serves a ResNet step (Gastaldi's network) and an LM step (its LM twin).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import conv1x1, conv3x3


class _ShakeShakeFunction(torch.autograd.Function):
    """alpha f1 + (1 - alpha) f2 forward; the gradient is split with beta: (beta g, (1 - beta) g)."""

    @staticmethod
    def forward(ctx, f1: Tensor, f2: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(beta)
        return torch.lerp(f2, f1, alpha)  # f2 + alpha (f1 - f2) = alpha f1 + (1 - alpha) f2

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:  # type: ignore[override]
        (beta,) = ctx.saved_tensors
        grad1 = grad * beta
        return grad1, grad - grad1, None, None


def shake_shake(f1: Tensor, f2: Tensor, alpha: Tensor, beta: Tensor | None = None) -> Tensor:
    """alpha f1 + (1 - alpha) f2, back-propagated as if the coefficient were ``beta`` (alpha when None).

    Args:
        f1, f2: the two branch outputs, (B, C, H, W).
        alpha: forward coefficient, broadcastable to f1 (per sample: (B, 1, 1, 1)).
        beta: backward coefficient, same shape as alpha.
    """
    if beta is None:
        return torch.lerp(f2, f1, alpha)
    return _ShakeShakeFunction.apply(f1, f2, alpha, beta)


def shake_coefficients(like: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, beta), independent U(0, 1) per sample, shaped (B, 1, ..., 1) on ``like``'s device and dtype.

    alpha is drawn first, then beta, from the device's global generator (no host sync on a GPU).
    """
    shape = (like.shape[0],) + (1,) * (like.dim() - 1)
    alpha = torch.rand(shape, device=like.device, dtype=like.dtype)
    beta = torch.rand(shape, device=like.device, dtype=like.dtype)
    return alpha, beta


class ShakeShake(nn.Module):
    """Residual function f(u) = eta f1(u) + (1 - eta) f2(u) of two branches (see the module docstring).

    Args:
        branch1, branch2: the two residual branches, same output shape.
        shake: draw eta (forward) and beta (backward) per sample in training; False gives the deterministic
            even-weights twin, eta = 1/2 always.
    """

    def __init__(self, branch1: nn.Module, branch2: nn.Module, shake: bool = True) -> None:
        super().__init__()
        self.branch1 = branch1
        self.branch2 = branch2
        self.shake = shake

    def forward(self, u: Tensor) -> Tensor:
        f1, f2 = self.branch1(u), self.branch2(u)
        if self.training and self.shake:
            alpha, beta = shake_coefficients(f1)
            return shake_shake(f1, f2, alpha, beta)
        return (f1 + f2) * 0.5  # the expectation, E[eta] = 1/2

    def extra_repr(self) -> str:
        return f"shake={self.shake}"


class ShakeBranch(nn.Sequential):
    """One branch of a shake-shake block: ReLU-conv3x3-BN-ReLU-conv3x3-BN (Gastaldi 2017); the first conv strides."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(),
            conv3x3(in_planes, planes, stride),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
            conv3x3(planes, planes),
            nn.BatchNorm2d(planes),
        )


def shake_block(in_planes: int, planes: int, stride: int = 1, shake: bool = True) -> ShakeShake:
    """A shake-shake residual function of two :class:`ShakeBranch` es (the (in, planes, stride) block signature)."""
    return ShakeShake(ShakeBranch(in_planes, planes, stride), ShakeBranch(in_planes, planes, stride), shake=shake)


class ShakeShortcut(nn.Module):
    """P(u) = BN(cat(conv1x1(avgpool_s(ReLU(u))), conv1x1(avgpool_s(shift(ReLU(u)))))), each path out / 2 channels.

    The transition shortcut of Gastaldi's shake-shake networks: a 1x1 "average pool" of stride s samples one pixel
    grid, the second path samples the grid shifted by one pixel: as ``shakeshake.lua``'s
    ``SpatialZeroPadding(1, -1, 1, -1)``, the input moves one pixel right and down (a zero row and column enter at
    the top and left, the last row and column drop out), shift(u)[i, j] = u[i - 1, j - 1]. With s = 2 the second
    path reads the odd rows and columns 1, 3, ..., H - 3 after a zero one, the first the even ones.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        if out_planes % 2:
            raise ValueError(f"the two-path shortcut splits its output in halves: out_planes {out_planes} is odd")
        self.stride = stride
        self.conv1 = conv1x1(in_planes, out_planes // 2)
        self.conv2 = conv1x1(in_planes, out_planes // 2)
        self.bn = nn.BatchNorm2d(out_planes)

    def forward(self, u: Tensor) -> Tensor:
        u = F.relu(u)
        s = self.stride
        y1 = self.conv1(F.avg_pool2d(u, 1, s))
        y2 = self.conv2(F.avg_pool2d(F.pad(u[:, :, :-1, :-1], (1, 0, 1, 0)), 1, s))  # shifted right-down
        return self.bn(torch.cat((y1, y2), dim=1))
