"""FREE's adaptive exit threshold (SPEC 2): a two-component Beta mixture over (confidence, agreement) pairs.

While decoding, every token whose shallow exit and deep model were both evaluated gives a pair
``(c, y)``: ``c`` = the shallow exit's p_top1 - p_top2 and ``y`` = 1 if the shallow token equals the
deep one (a synchronized parallel pass verifies the exited tokens, a non-exited token is compared at
once). The mixture models ``c`` as::

    p(c) = pi * Beta(c; a1, b1)  +  (1 - pi) * Beta(c; a0, b0)       component 1: y = 1, component 0: y = 0

Fitting: the component of every pair is observed (y), so EM's responsibilities are the labels and EM
reduces to one weighted method-of-moments fit per component (``a = m k``, ``b = (1 - m) k`` with
``k = m (1 - m) / v - 1``, m and v the component's weighted mean and variance) and ``pi`` = the
weighted share of y = 1, Laplace-smoothed (``(n_1 + 1) / (n + 2)``). The weights are an exponential
moving average: each :meth:`update` multiplies the running sufficient statistics (count, sum c,
sum c^2 per component) by ``(1 - 1/window) ** n`` for ``n`` new pairs and adds them, so old pairs fade
out at the same rate per pair whatever the batch size (a pair ``window`` pairs old weighs about 1/e).
A per-update factor would forget after a few steps at batch 1, where an update brings one or two pairs:
the fit then rests on a dozen pairs and the measured wrong-exit rate overshoots the bound.

Threshold: exiting at ``lambda`` means exiting when ``c > lambda``. The estimated probability that an
exited token is wrong is::

    P(wrong | exit) = (1 - pi) S0(lambda) / ((1 - pi) S0(lambda) + pi S1(lambda)),   S = 1 - Beta CDF

(0 when nothing exits). The threshold is the lowest grid value from which upward every grid value keeps
this under the user's bound ``delta`` (scanning down from 1.0 and stopping at the first violation), so the
exit rate is as high as the bound allows. This bounds the wrong-exit rate AMONG EXITED tokens, the rate
the decoders measure; a component with fewer than two effective pairs is taken as uniform (Beta(1, 1)).
Until ``min_pairs`` pairs have been seen the threshold stays at its initial value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from depthmux.errors import DepthmuxError
from depthmux.utils.checks import check_float, check_int

EPS = 1e-4  # confidences are clamped into [EPS, 1 - EPS] before fitting


def check_threshold(threshold) -> float:
    """One line unless ``threshold`` is a finite number in [0, 1]; returns it as a float."""
    check_float("exit threshold", threshold, 0.0, 1.0)
    return float(threshold)


def check_delta(delta) -> float:
    """One line unless ``delta`` (the wrong-exit bound) is a finite number in (0, 1); returns it as a float."""
    check_float("delta (bound on the wrong-exit probability)", delta, 0.0, 1.0, low_open=True, high_open=True)
    return float(delta)


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-12:
            break
    return f - 1.0


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b): the CDF of Beta(a, b) at ``x`` (a, b > 0)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry
        return math.exp(log_front) / a * _beta_continued_fraction(x, a, b)
    return 1.0 - math.exp(log_front) / b * _beta_continued_fraction(1.0 - x, b, a)


@dataclass(frozen=True)
class BetaComponent:
    """``Beta(a, b)`` with mixture weight ``weight``."""

    a: float
    b: float
    weight: float

    def survival(self, x: float) -> float:
        """P(c > x)."""
        return 1.0 - beta_cdf(x, self.a, self.b)

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)


def beta_from_moments(count: float, total: float, total_sq: float) -> tuple[float, float]:
    """Method-of-moments ``(a, b)`` from weighted sums (count, sum c, sum c^2); Beta(1, 1) below two pairs."""
    if count < 2.0:
        return 1.0, 1.0
    m = min(max(total / count, EPS), 1.0 - EPS)
    v = max(total_sq / count - m * m, 1e-8)
    v = min(v, 0.999 * m * (1.0 - m))  # a Beta's variance is below m (1 - m)
    k = m * (1.0 - m) / v - 1.0
    return m * k, (1.0 - m) * k


class AdaptiveThreshold:
    """The exit threshold chosen from a Beta mixture refreshed while decoding (module docstring, SPEC 2).

    Args:
        delta: bound on the estimated probability that an exited token differs from the deep one, in (0, 1).
        initial: threshold used until ``min_pairs`` pairs were seen, in [0, 1] (1.0: nothing exits).
        window: EMA length in pairs (>= 1): each new pair multiplies the older statistics by 1 - 1/window.
        grid: candidate thresholds in [0, 1] (default 0, 0.01, ..., 1).
        min_pairs: pairs to see before adapting (>= 1).
    """

    def __init__(
        self,
        delta: float,
        initial: float = 1.0,
        window: int = 1024,
        grid: list[float] | None = None,
        min_pairs: int = 32,
    ) -> None:
        self.delta = check_delta(delta)
        self.initial = check_threshold(initial)
        check_int("EMA window (pairs)", window, 1)
        check_int("min_pairs", min_pairs, 1)
        grid = [i / 100 for i in range(101)] if grid is None else [check_threshold(g) for g in grid]
        if not grid:
            raise DepthmuxError("the threshold grid is empty")
        self.grid = sorted(set(grid))
        self.window, self.min_pairs = window, min_pairs
        self.stats = torch.zeros(2, 3, dtype=torch.float64)  # [wrong, right] x [count, sum c, sum c^2]
        self.seen = 0
        self.threshold = self.initial

    def update(self, confidence: torch.Tensor, agree: torch.Tensor) -> float:
        """Add pairs ``confidence`` [N] (in [0, 1]) and ``agree`` [N] (bool: shallow == deep), refit, and
        return the new threshold."""
        c = confidence.detach().double().flatten().clamp(EPS, 1.0 - EPS).cpu()
        y = agree.detach().flatten().bool().cpu()
        if c.shape != y.shape:
            raise DepthmuxError(f"{c.numel()} confidences but {y.numel()} agreement flags")
        batch = torch.stack(
            [torch.stack([(k == y).sum().double(), c[k == y].sum(), c[k == y].pow(2).sum()]) for k in (False, True)]
        )
        self.stats = (1.0 - 1.0 / self.window) ** c.numel() * self.stats + batch
        self.seen += c.numel()
        if self.seen >= self.min_pairs:
            self.threshold = self.choose()
        return self.threshold

    def components(self) -> tuple[BetaComponent, BetaComponent]:
        """``(wrong, right)`` components of the current fit; the mixing weights are Laplace-smoothed
        (``(n_k + 1) / (n + 2)``), so a handful of pairs that all agree never rules wrong exits out."""
        counts = self.stats[:, 0]
        total = float(counts.sum())
        out = []
        for k in (0, 1):
            a, b = beta_from_moments(*(float(v) for v in self.stats[k]))
            out.append(BetaComponent(a, b, (float(counts[k]) + 1.0) / (total + 2.0)))
        return out[0], out[1]

    def wrong_exit_probability(self, threshold: float) -> float:
        """Estimated P(shallow != deep | c > threshold) under the current fit (0 when nothing exits)."""
        wrong, right = self.components()
        w = wrong.weight * wrong.survival(threshold)
        r = right.weight * right.survival(threshold)
        return w / (w + r) if w + r > 1e-12 else 0.0

    def choose(self) -> float:
        """The lowest grid threshold from which upward every grid value keeps the estimate <= delta."""
        chosen = self.grid[-1]
        for lam in reversed(self.grid):
            if self.wrong_exit_probability(lam) > self.delta:
                break
            chosen = lam
        return chosen
