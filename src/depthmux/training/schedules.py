"""Learning-rate schedules.

Warmup-stable-decay (WSD), the schedule used for the MoR runs (SPEC 4 trains with a
trapezoid schedule): linear warmup from 0 to the peak, constant, then a decay to
``min_ratio * peak`` over the last ``decay_fraction`` of training (linear or cosine)::

    lr(s) / peak = (s + 1) / W                               s <  W
                 = 1                                         W <= s < S - D
                 = m + (1 - m) * shape((s - (S - D) + 1) / D) s >= S - D,
    shape(x) = 1 - x (linear) or (1 + cos(pi x)) / 2 (cosine)

with S total steps, W warmup steps, D = round(decay_fraction * S) decay steps, and s the index of
the optimizer step about to be taken (``LambdaLR`` convention: the lr of step 0 is ``lr(0)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from depthmux.errors import DepthmuxError


@dataclass(frozen=True)
class WSD:
    """Picklable warmup-stable-decay multiplier (a ``LambdaLR`` ``lr_lambda``).

    Args:
        total_steps: S, optimizer steps in the whole run.
        warmup_steps: W (linear warmup, lr reaches the peak at step W - 1).
        decay_fraction: share of S spent decaying at the end (0 = no decay).
        min_ratio: final lr as a fraction of the peak.
        decay: ``"linear"`` or ``"cosine"``.
    """

    total_steps: int
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    min_ratio: float = 0.0
    decay: str = "linear"

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise DepthmuxError(f"total steps must be positive, got {self.total_steps}")
        if self.warmup_steps < 0:
            raise DepthmuxError(f"warmup steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise DepthmuxError(f"decay fraction must be in [0, 1], got {self.decay_fraction}")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise DepthmuxError(f"min lr ratio must be in [0, 1], got {self.min_ratio}")
        if self.decay not in ("linear", "cosine"):
            raise DepthmuxError(f"unknown decay '{self.decay}': use 'linear' or 'cosine'")

    @property
    def decay_steps(self) -> int:
        return round(self.decay_fraction * self.total_steps)

    def __call__(self, step: int) -> float:
        s, total, warm, dec = step, self.total_steps, self.warmup_steps, self.decay_steps
        decay_start = total - dec
        if s < warm:
            value = (s + 1) / warm
            if s < decay_start:
                return value
        if s < decay_start:
            return 1.0
        x = min(1.0, (s - decay_start + 1) / max(dec, 1))
        shape = 1.0 - x if self.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * x))
        peak = min(1.0, (s + 1) / warm) if s < warm else 1.0
        return peak * (self.min_ratio + (1.0 - self.min_ratio) * shape)


def wsd_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    decay_fraction: float = 0.2,
    min_ratio: float = 0.0,
    decay: str = "linear",
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :class:`WSD` to every parameter group of ``optimizer``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WSD(total_steps, warmup_steps, decay_fraction, min_ratio, decay)
    )
