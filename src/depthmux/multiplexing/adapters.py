"""Small trainable pieces around the frozen backbone (SPEC 1.1 steps 2 and 6)."""

from __future__ import annotations

from torch import nn


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer GELU MLP, position-wise: [..., d_in] -> [..., d_out]."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class DownProjection(nn.Linear):
    """``f_down``: one shared Linear, [..., d] -> [..., d/N] (SPEC 1.1 step 2)."""


class UpProjection(nn.Module):
    """``f_up``: MLP [..., d/N] -> [..., d] back into the frozen head's space (SPEC 1.1 step 6)."""

    def __init__(self, d_slot: int, d_model: int) -> None:
        super().__init__()
        self.net = mlp(d_slot, d_model, d_model)

    def forward(self, x):
        return self.net(x)
