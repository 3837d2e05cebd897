"""The adaptive exit threshold (SPEC 2): Beta CDF, moment fits, threshold choice on synthetic mixtures whose
right threshold is known, the EMA refresh, and one-line errors for delta / threshold out of range."""

from __future__ import annotations

import math

import pytest
import torch

from depthmux.early_exit.threshold import (
    AdaptiveThreshold,
    BetaComponent,
    beta_cdf,
    beta_from_moments,
    check_delta,
    check_threshold,
)
from depthmux.errors import DepthmuxError


@pytest.mark.parametrize("x", [0.001, 0.05, 0.3, 0.5, 0.77, 0.999])
def test_beta_cdf_matches_closed_forms(x):
    assert beta_cdf(x, 1, 1) == pytest.approx(x, abs=1e-12)
    assert beta_cdf(x, 3, 1) == pytest.approx(x**3, abs=1e-12)
    assert beta_cdf(x, 1, 2.5) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-12)
    assert beta_cdf(x, 2, 2) == pytest.approx(3 * x * x - 2 * x**3, abs=1e-12)
    assert beta_cdf(x, 0.5, 0.5) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), abs=1e-10)


def test_moments_recover_beta_parameters():
    sample = torch.distributions.Beta(torch.tensor(6.0), torch.tensor(2.0)).sample(
        (200_000,),
    )
    a, b = beta_from_moments(sample.numel(), float(sample.double().sum()), float(sample.double().pow(2).sum()))
    assert a == pytest.approx(6.0, rel=0.05) and b == pytest.approx(2.0, rel=0.05)
    assert beta_from_moments(1.0, 0.5, 0.25) == (1.0, 1.0)  # below two pairs: uniform


def mixture(n, pi, right, wrong, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    y = torch.rand(n, generator=g) < pi
    c_right = torch.distributions.Beta(torch.tensor(right[0]), torch.tensor(right[1])).sample((n,))
    c_wrong = torch.distributions.Beta(torch.tensor(wrong[0]), torch.tensor(wrong[1])).sample((n,))
    return torch.where(y, c_right, c_wrong), y


def true_threshold(pi, right, wrong, delta, grid):
    """The selection rule applied to the TRUE mixture: lowest grid value from which upward P(wrong | c > l) <= delta."""
    r, w = BetaComponent(*right, pi), BetaComponent(*wrong, 1 - pi)
    chosen = grid[-1]
    for lam in reversed(grid):
        pw, pr = w.weight * w.survival(lam), r.weight * r.survival(lam)
        if (pw / (pw + pr) if pw + pr > 1e-12 else 0.0) > delta:
            break
        chosen = lam
    return chosen


@pytest.mark.parametrize(
    ("pi", "right", "wrong", "delta"),
    [
        (0.75, (6.0, 1.5), (1.5, 4.0), 0.05),
        (0.75, (6.0, 1.5), (1.5, 4.0), 0.1),
        (0.5, (4.0, 1.0), (1.0, 2.0), 0.1),
        (0.9, (8.0, 2.0), (2.0, 2.0), 0.05),
    ],
)
def test_threshold_matches_the_known_one_and_bounds_wrong_exits(pi, right, wrong, delta):
    grid = [i / 100 for i in range(101)]
    expected = true_threshold(pi, right, wrong, delta, grid)
    assert 0.0 < expected < 1.0  # the case is not trivial
    calibrator = AdaptiveThreshold(delta, window=10**9)
    c, y = mixture(40_000, pi, right, wrong, seed=0)
    for chunk in range(0, 40_000, 4_000):  # pairs arrive in batches, as while decoding
        threshold = calibrator.update(c[chunk : chunk + 4_000], y[chunk : chunk + 4_000])
    assert abs(threshold - expected) <= 0.03, (threshold, expected)
    # on fresh samples, the wrong-exit rate among exited tokens stays within 1.5 delta
    c2, y2 = mixture(40_000, pi, right, wrong, seed=1)
    exited = c2 > threshold
    assert exited.any()
    assert float((~y2[exited]).float().mean()) <= 1.5 * delta


def test_separable_data_exits_early_and_hopeless_data_never_exits():
    c = torch.cat([torch.linspace(0.85, 0.99, 500), torch.linspace(0.01, 0.3, 500)])
    y = torch.cat([torch.ones(500, dtype=torch.bool), torch.zeros(500, dtype=torch.bool)])
    assert AdaptiveThreshold(0.05).update(c, y) <= 0.6
    # agreement independent of confidence at a 50% error rate: no threshold keeps delta = 0.05
    c, y = mixture(5_000, 0.5, (2.0, 2.0), (2.0, 2.0), seed=3)
    assert AdaptiveThreshold(0.05).update(c, y) == 1.0


def test_initial_threshold_until_min_pairs_then_ema_follows_a_shift():
    cal = AdaptiveThreshold(0.1, initial=0.8, window=500, min_pairs=100)
    c, y = mixture(50, 0.9, (8.0, 1.0), (1.0, 8.0), seed=4)
    assert cal.update(c, y) == 0.8  # too few pairs yet
    for seed in range(10):  # an easy regime: low threshold
        easy = cal.update(*mixture(1_000, 0.9, (8.0, 1.0), (1.0, 8.0), seed=10 + seed))
    for seed in range(10):  # the shallow exit gets worse: wrong tokens are confident too
        hard = cal.update(*mixture(1_000, 0.6, (8.0, 1.0), (4.0, 2.0), seed=30 + seed))
    assert easy < hard
    wrong, _ = cal.components()
    assert wrong.mean == pytest.approx(4.0 / 6.0, abs=0.03)  # the old regime has faded out (window 500 pairs)


@pytest.mark.parametrize("delta", [0, 1, -0.1, 1.5, float("nan"), float("inf"), True, "0.1"])
def test_delta_outside_open_unit_interval_is_one_line(delta):
    with pytest.raises(DepthmuxError, match=r"delta \(bound on the wrong-exit probability\) must be") as e:
        check_delta(delta)
    assert "\n" not in str(e.value)
    with pytest.raises(DepthmuxError, match="delta"):
        AdaptiveThreshold(delta)


@pytest.mark.parametrize("threshold", [-0.01, 1.01, float("nan"), None])
def test_threshold_outside_unit_interval_is_one_line(threshold):
    with pytest.raises(DepthmuxError, match=r"exit threshold must be a finite number in \[0.0, 1.0\]") as e:
        check_threshold(threshold)
    assert "\n" not in str(e.value)
    with pytest.raises(DepthmuxError, match="exit threshold"):
        AdaptiveThreshold(0.1, initial=threshold)
    with pytest.raises(DepthmuxError, match="exit threshold"):
        AdaptiveThreshold(0.1, grid=[0.5, threshold])


def test_mismatched_pairs_are_refused():
    with pytest.raises(DepthmuxError, match="3 confidences but 2 agreement flags"):
        AdaptiveThreshold(0.1).update(torch.rand(3), torch.ones(2, dtype=torch.bool))


def test_ema_forgets_per_pair_not_per_update():
    """Batch 1 sends one pair per update: the fit must not rest on the last dozen pairs."""
    c, y = mixture(600, 0.75, (6.0, 1.5), (1.5, 4.0), seed=5)
    one_by_one, all_at_once = AdaptiveThreshold(0.1, window=256), AdaptiveThreshold(0.1, window=256)
    for i in range(600):
        one_by_one.update(c[i : i + 1], y[i : i + 1])
    all_at_once.update(c, y)
    # same total weight: sum over pairs of (1 - 1/w)^age, whatever the grouping of the updates
    expected = sum((1 - 1 / 256) ** age for age in range(600))
    assert float(one_by_one.stats[:, 0].sum()) == pytest.approx(expected, rel=1e-9)
    assert float(all_at_once.stats[:, 0].sum()) == pytest.approx(600.0)
    assert float(one_by_one.stats[:, 0].sum()) > 200  # hundreds of pairs still count, not a dozen


def test_window_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, float("nan")):
        with pytest.raises(DepthmuxError, match="EMA window"):
            AdaptiveThreshold(0.1, window=bad)
