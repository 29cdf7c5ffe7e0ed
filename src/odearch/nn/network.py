"""A residual network as stem -> stages (integrators) -> head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .stage import Stage


class ResidualNetwork(nn.Module):
    """x -> stem -> Stage_1 -> ... -> Stage_S -> head -> logits.

    Each stage restarts the LM history at its transition from its own input u_0 (P(u_0), or Q(u_0) with a
    ``history_shortcut``); the u_{N-1} handed along by ``forward_with_history`` is not read.

    Args:
        stem: the layers before the first stage.
        stages: the integrators, in order.
        head: the layers after the last stage (pooling and classifier).
    """

    def __init__(self, stem: nn.Module, stages: Sequence[Stage], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head

    def forward_features(self, x: Tensor) -> Tensor:
        """The state after the last stage, (B, C, H, W)."""
        u, u_prev = self.stem(x), None
        for stage in self.stages:
            u, u_prev = stage.forward_with_history(u, u_prev)
        return u

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) for images x (B, 3, H, W)."""
        return self.head(self.forward_features(x))


def init_weights(model: nn.Module) -> None:
    """He (fan-out) normal init for convolutions, BN weight 1 and bias 0, as the paper's code does.

    Leaves linear layers at PyTorch's default and the LM coefficients at their U[-0.1, 0] draw.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
