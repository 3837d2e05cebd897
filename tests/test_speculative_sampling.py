"""Speculative sampling with k >= 2 drafts keeps the EXACT target distribution (SPEC 2, SPEC 5; issue 16).

Unit level: a toy prefix-dependent target p(x | prefix) and draft q(x | prefix) over 3 tokens; the whole
procedure as the engine runs it (k drafts sampled from q, p evaluated after every draft prefix,
:func:`speculative_accept`, more rounds until enough tokens are out), and the empirical joint of the
first k + 1 emitted tokens against the exact target joint by enumeration. The same harness with
broken rules (resampling from p instead of the residual, always accepting, the bonus token from the
wrong position) must exceed the bound, so the test cannot pass vacuously.

Engine level: a tiny random early-exit model with a vocabulary of 8 through
:class:`~depthmux.engine.early_exit.EarlyExitLLM` in speculative mode; the empirical distribution of
the generated tokens (pairs of neighbours among the first k + 2) against the deep model's own
distribution computed by enumeration with full forwards.

The bound is a chi-square statistic (cells with expected count < 5 pooled) at a 3e-5 tail
(Wilson-Hilferty quantile): a correct sampler fails it with probability ~1e-4 over the whole file for
any seed, so changes that reorder random draws do not make it flaky.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable

import pytest
import torch

from depthmux.early_exit import from_llama
from depthmux.engine import SamplingParams
from depthmux.engine.early_exit import EarlyExitLLM, EarlyExitPolicy, speculative_accept
from depthmux.engine.sampling import sampling_probs

Z_TAIL = 4.0
"""Standard-normal quantile of the bound (one-sided tail 3.2e-5)."""


def chi2_bound(df: int, z: float = Z_TAIL) -> float:
    """Upper quantile of a chi-square with ``df`` degrees of freedom (Wilson-Hilferty approximation)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2(counts: Counter, exact: dict[tuple, float], n: int) -> tuple[float, float, float]:
    """(statistic, bound, total variation) of ``counts`` (n samples) against ``exact``; cells with an
    expected count below 5 are pooled into one (a sample outside the support of ``exact`` lands there too)."""
    assert abs(sum(exact.values()) - 1.0) < 1e-5
    assert sum(counts.values()) == n
    stat, cells = 0.0, 0
    pooled_obs, pooled_exp = 0, 0.0
    for cell, prob in exact.items():
        e = n * prob
        if e < 5:
            pooled_obs += counts.get(cell, 0)
            pooled_exp += e
        else:
            stat += (counts.get(cell, 0) - e) ** 2 / e
            cells += 1
    pooled_obs += sum(c for cell, c in counts.items() if cell not in exact)
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    elif pooled_obs:
        stat = math.inf
    tv = 0.5 * sum(abs(counts.get(c, 0) / n - exact.get(c, 0.0)) for c in set(counts) | set(exact))
    return stat, chi2_bound(max(1, cells - 1)), tv


# -- unit level: a toy target and draft -------------------------------------------------------------

V = 3
PROMPT = (1, 0)


def _toy(prefix: tuple[int, ...], which: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * which + sum((t + 1) * 5**i for i, t in enumerate(prefix)))
    probs = (1.5 * torch.randn(V, generator=g)).softmax(-1)
    if which == 1 and len(prefix) % 2:  # the draft's nucleus drops a token the target may emit
        probs[probs.argmin()] = 0.0
        probs = probs / probs.sum()
    return probs


_cache: dict[tuple, torch.Tensor] = {}


def target(prefix: tuple[int, ...]) -> torch.Tensor:
    """p(x | prefix) [V]."""
    if (prefix, 0) not in _cache:
        _cache[prefix, 0] = _toy(prefix, 0)
    return _cache[prefix, 0]


def draft(prefix: tuple[int, ...]) -> torch.Tensor:
    """q(x | prefix) [V], different from p and with a zero on odd-length prefixes."""
    if (prefix, 1) not in _cache:
        _cache[prefix, 1] = _toy(prefix, 1)
    return _cache[prefix, 1]


def exact_joint(m: int) -> dict[tuple, float]:
    """P(first m tokens after PROMPT = x) under the target, every x of V^m."""
    out = {}
    for xs in itertools.product(range(V), repeat=m):
        prob = 1.0
        for i, x in enumerate(xs):
            prob *= float(target(PROMPT + xs[:i])[x])
        out[xs] = prob
    return out


Rule = Callable[[list[int], list[torch.Tensor], list[torch.Tensor], torch.Generator], tuple[int, int]]


def speculate(rule: Rule, k: int, m: int, trials: int, seed: int) -> Counter:
    """Counts of the first ``m`` emitted tokens over ``trials`` runs of draft-k-then-verify rounds, as the
    engine does a round: drafts x_j ~ q(. | prefix + x_<j), targets p(. | prefix + x_<j) for j = 0..k."""
    g = torch.Generator().manual_seed(seed)
    counts: Counter = Counter()
    for _ in range(trials):
        out: list[int] = []
        while len(out) < m:
            prefix = PROMPT + tuple(out)
            drafts: list[int] = []
            qs = []
            for _ in range(k):
                q = draft(prefix + tuple(drafts))
                qs.append(q)
                drafts.append(int(torch.multinomial(q, 1, generator=g)))
            ps = [target(prefix + tuple(drafts[:j])) for j in range(k + 1)]
            a, nxt = rule(drafts, qs, ps, g)
            out += [*drafts[:a], nxt]
        counts[tuple(out[:m])] += 1
    return counts


def resample_from_target(drafts, q, p, g):
    """Broken: accepts like the standard rule but draws a rejected position's token from p, not the residual."""
    for j, x in enumerate(drafts):
        if float(torch.rand((), generator=g)) * float(q[j][x]) > float(p[j][x]):
            return j, int(torch.multinomial(p[j], 1, generator=g))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=g))


def always_accept(drafts, q, p, g):
    """Broken: every draft is kept (the output follows the draft model)."""
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=g))


def bonus_from_last_draft_position(drafts, q, p, g):
    """Broken: the standard rule, but when every draft is accepted the bonus token is drawn from p[k-1]."""
    return speculative_accept(drafts, q, [*p[:-1], p[-2]] if drafts else p, g)


TRIALS = 6000


@pytest.mark.parametrize("k", [2, 3])
def test_speculative_rule_with_k_drafts_samples_the_exact_target_joint(k):
    m = k + 1  # one full round: every acceptance position, the residual at each, and the bonus token
    exact = exact_joint(m)
    stat, bound, tv = chi2(speculate(speculative_accept, k, m, TRIALS, seed=k), exact, TRIALS)
    assert stat < bound, f"k={k}: chi2 {stat:.1f} >= {bound:.1f} (TV {tv:.3f})"
    for broken in (resample_from_target, always_accept, bonus_from_last_draft_position):
        b_stat, _, b_tv = chi2(speculate(broken, k, m, TRIALS, seed=k), exact, TRIALS)
        assert b_stat > 2 * bound, f"{broken.__name__} passes the k={k} check: chi2 {b_stat:.1f} (TV {b_tv:.3f})"


# -- engine level: a tiny early-exit model ----------------------------------------------------------

EV = 8
ENGINE_PROMPT = [3, 5, 1, 6, 2]
REQUESTS = 4000


@pytest.fixture(scope="module")
def tiny_ee_model():
    """A tiny LLaMA (vocabulary 8, 4 layers) with a shallow exit after 2; the LM head is scaled so that the
    deep distributions are neither flat nor peaked and the shallow exit's differ from them."""
    from conftest import build_tiny_llama

    model = from_llama(build_tiny_llama(vocab_size=EV, num_hidden_layers=4, seed=3), exit_layer=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model.eval()


@torch.no_grad()
def deep_joint(model, n: int, params: SamplingParams) -> dict[tuple, float]:
    """The deep model's exact distribution of its first ``n`` sampled tokens after ENGINE_PROMPT (every
    sequence of EV^n), from full forwards over every continuation of n - 1 tokens: P(t) = prod_j p(t_j | t_<j)
    with p the request's sampling distribution (temperature, top-p) of the deep logits."""
    conts = torch.tensor(list(itertools.product(range(EV), repeat=n - 1)))  # [C, n-1], lexicographic
    ids = torch.cat([torch.tensor(ENGINE_PROMPT).expand(conts.shape[0], -1), conts], 1)
    logits = model(ids).logits[:, len(ENGINE_PROMPT) - 1 :]  # [C, n, EV]: after the prompt and each token
    probs = sampling_probs(logits.flatten(0, 1), [params] * (logits.shape[0] * n)).view(-1, n, EV).double()
    seqs = torch.tensor(list(itertools.product(range(EV), repeat=n)))  # [EV^n, n]
    row = (seqs[:, :-1] * EV ** torch.arange(n - 2, -1, -1)).sum(1)  # the continuation holding t_<n-1
    joint = probs[row[:, None], torch.arange(n)[None, :], seqs].prod(1)  # p(t_j | t_<j) depends on t_<j only
    return {tuple(s): float(pr) for s, pr in zip(seqs.tolist(), joint, strict=True)}


def marginal(joint: dict[tuple, float], i: int) -> dict[tuple, float]:
    """The exact distribution of the neighbours (t_i, t_i+1)."""
    out: dict[tuple, float] = {}
    for seq, prob in joint.items():
        out[seq[i : i + 2]] = out.get(seq[i : i + 2], 0.0) + prob
    return out


def engine_samples(model, k: int, params: SamplingParams, seed: int) -> list[tuple[int, ...]]:
    llm = EarlyExitLLM(
        model,
        policy=EarlyExitPolicy(mode="speculative", draft_tokens=k),
        seed=seed,
        max_batch_items=512,
        max_num_seqs=512,
    )
    outs = llm.generate([ENGINE_PROMPT] * REQUESTS, params)
    st = llm.early_exit_stats
    assert 0 < st.accepted_tokens < st.drafted_tokens  # drafts were both accepted and rejected
    return [tuple(o.token_ids) for o in outs]


def worst_pair(samples: list[tuple[int, ...]], joint: dict[tuple, float], k: int) -> tuple[float, float, float, int]:
    """The largest chi2 / bound over the neighbouring pairs (t_i, t_i+1), i = 0..k, of the first k + 2 tokens
    (t_0 comes from the prefill, t_1..t_k+1 from the first verification round when it accepts every draft).
    Returns (statistic, bound, TV, i) of that pair."""
    worst = None
    for i in range(k + 1):
        stat, bound, tv = chi2(Counter(s[i : i + 2] for s in samples), marginal(joint, i), len(samples))
        if worst is None or stat / bound > worst[0] / worst[1]:
            worst = (stat, bound, tv, i)
    return worst


@pytest.mark.parametrize(("k", "top_p"), [(2, 1.0), (3, 1.0), (2, 0.8)])
def test_engine_speculative_sampling_matches_the_deep_distribution(tiny_ee_model, k, top_p):
    params = SamplingParams(max_new_tokens=k + 2, temperature=1.0, top_p=top_p, ignore_eos=True)
    joint = deep_joint(tiny_ee_model, k + 2, params)
    stat, bound, tv, i = worst_pair(engine_samples(tiny_ee_model, k, params, seed=k), joint, k)
    assert stat < bound, f"k={k} top_p={top_p}: tokens ({i}, {i + 1}) chi2 {stat:.1f} >= {bound:.1f} (TV {tv:.3f})"


@pytest.mark.parametrize("broken", [resample_from_target, bonus_from_last_draft_position])
def test_engine_check_fails_with_a_broken_acceptance_rule(tiny_ee_model, monkeypatch, broken):
    """The same check with the engine's rule replaced by a broken one must fail (the bonus token's error shows
    only in the last pair: the first k + 2 tokens are needed)."""
    import depthmux.engine.early_exit as ee

    monkeypatch.setattr(ee, "speculative_accept", broken)
    params = SamplingParams(max_new_tokens=4, temperature=1.0, ignore_eos=True)
    samples = engine_samples(tiny_ee_model, 2, params, seed=2)
    stat, bound, tv, i = worst_pair(samples, deep_joint(tiny_ee_model, 4, params), 2)
    assert stat > 2 * bound, f"{broken.__name__} passes: tokens ({i}, {i + 1}) chi2 {stat:.1f} (TV {tv:.3f})"
