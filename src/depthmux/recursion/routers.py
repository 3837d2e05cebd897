"""Mixture-of-Recursions routers, their decisions, update rules and auxiliary losses (SPEC 4).

* Expert-choice: one linear router per recursion r scores every candidate token,
  ``g_t = alpha * sigmoid(theta_r^T H_t^r)``; in training the top-k candidates of each sequence
  continue, ``k = floor(capacity_r * T_valid)`` as in the public MoR code, but at least 1 when the
  row has a candidate (:func:`capacity_k`). An auxiliary BCE loss trains ``sigmoid(logit)`` to
  predict that selection, so that decoding can use the causal rule ``sigmoid(logit) > 0.5``.
  Hierarchical filtering: only tokens selected at r are candidates at r + 1.
* Token-choice: one linear router on H^1 gives a softmax over N_r depths; the top-1 depth is fixed
  per token; balancing loss ``sum_i P_i f_i`` with ``f_i = N_r * routed fraction`` and z-loss
  ``mean(logsumexp(logits)^2)``.

A :class:`RouteDecision` says which tokens run recursion r and how its output re-enters the
residual stream; :func:`expert_choice_update` and :func:`token_choice_update` are the update
rules (``mor_update`` "published" or "gated_delta", see :mod:`depthmux.recursion.modeling`).
All functions work on [B, T] masks and never look across rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from depthmux.utils.flops import add_flops, counting, linear_flops


class ExpertChoiceRouter(nn.Module):
    """N_r linear routers d -> 1 (no bias). ``forward(h, r)`` -> logits [B, T] (float32).

    With ``aux_router=True`` a second set of N_r linear routers (``aux_routers``) predicts the
    selection for causal decoding (``aux_logits(h, r)``, called on detached hidden states).
    """

    def __init__(self, hidden_size: int, num_recursions: int, aux_router: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.routers = nn.ModuleList(nn.Linear(hidden_size, 1, bias=False) for _ in range(num_recursions))
        self.aux_routers = (
            nn.ModuleList(nn.Linear(hidden_size, 1, bias=False) for _ in range(num_recursions)) if aux_router else None
        )

    def forward(self, h: torch.Tensor, r: int) -> torch.Tensor:
        if counting():
            add_flops(linear_flops(h.numel() // self.hidden_size, self.hidden_size, 1))
        return self.routers[r](h).squeeze(-1).float()

    def aux_logits(self, h: torch.Tensor, r: int) -> torch.Tensor:
        if counting():
            add_flops(linear_flops(h.numel() // self.hidden_size, self.hidden_size, 1))
        return self.aux_routers[r](h).squeeze(-1).float()


class TokenChoiceRouter(nn.Module):
    """One linear router d -> N_r (no bias). ``forward(h)`` -> logits [B, T, N_r] (float32)."""

    def __init__(self, hidden_size: int, num_recursions: int):
        super().__init__()
        self.hidden_size, self.num_recursions = hidden_size, num_recursions
        self.router = nn.Linear(hidden_size, num_recursions, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if counting():
            add_flops(linear_flops(h.numel() // self.hidden_size, self.hidden_size, self.num_recursions))
        return self.router(h).float()


# ---------------------------------------------------------------------------------------------
# decisions and update rules


@dataclass
class RouteDecision:
    """The router's decision for recursion ``recursion`` (0-based) over a chunk's tokens, all [B, T].

    Attributes:
        recursion: r, the recursion this decision is for.
        kind: "expert", "token" or "none" (no router: every token of the previous step continues).
        selected: bool, tokens that run recursion r (the candidates of recursion r + 1).
        gate: expert-choice ``g = alpha * sigmoid(logit)`` (float32); None otherwise.
        depth: token-choice, each token's last recursion (0-based, long); None otherwise.
        weight: token-choice ``w = alpha * p_depth``, the router probability of that depth (float32).
        first_state: token-choice H^1 [B, T, d], the state entering the first recursion.
        aux_losses: this recursion's unweighted router losses ("router_bce", "z_loss", "balance").
        stats: this recursion's detached router statistics (see :func:`collect_router_outputs`).
    """

    recursion: int
    kind: str
    selected: torch.Tensor
    gate: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    first_state: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def gather(self, index: torch.Tensor) -> RouteDecision:
        """The decision restricted to the tokens ``index`` [B, M] (a compact subset of the chunk)."""

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if t.dim() == 2:
                return t.gather(1, index)
            return t.gather(1, index[..., None].expand(*index.shape, t.shape[-1]))

        return RouteDecision(
            self.recursion,
            self.kind,
            take(self.selected),
            take(self.gate),
            take(self.depth),
            take(self.weight),
            take(self.first_state),
            self.aux_losses,
            self.stats,
        )


def expert_choice_update(h: torch.Tensor, f: torch.Tensor, gate: torch.Tensor, rule: str) -> torch.Tensor:
    """Expert-choice output of a selected token (SPEC 4). h, f: [B, M, d]; gate: [B, M].

    ``f = block(h)`` is the shared block's full output (it already contains the block's residual).
    "published" (paper and public code): ``h + g * f``; "gated_delta": ``h + g * (f - h)``.
    """
    g = gate[..., None].to(f.dtype)
    if rule == "published":
        return h + g * f
    return h + g * (f - h)


def token_choice_update(
    h: torch.Tensor,
    f: torch.Tensor,
    recursion: int,
    depth: torch.Tensor,
    weight: torch.Tensor,
    first_state: torch.Tensor,
    rule: str,
) -> torch.Tensor:
    """Token-choice output of a token that runs recursion r (SPEC 4). h, f, first_state: [B, M, d].

    Before its last recursion (``depth > r``) a token takes the block's full output un-gated
    (``f``). At its last (``depth == r``): "published" (public code) ``H^1 + w * f^{(d)}(H^1)``,
    where ``f`` is now the end of the chain of d full outputs started at ``first_state`` = H^1;
    "gated_delta": ``h + w * (f - h)``.
    """
    w = weight[..., None].to(f.dtype)
    last = (depth == recursion)[..., None]
    if rule == "published":
        final = first_state + w * f
    else:
        final = h + w * (f - h)
    return torch.where(last, final, f)


def collect_router_outputs(decisions: list[RouteDecision]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Aux losses and router stats of a forward pass from its per-recursion decisions.

    Returns ``(aux_losses, stats)``: expert-choice ``router_bce`` is summed over recursions (as in
    the public MoR code; a mean would divide the effective coefficient by N_r) and ``z_loss``
    averaged; token-choice ``balance`` and ``z_loss`` come from the one router call. Stats:
    ``tokens_per_recursion`` [N_r], ``selected`` [B, N_r, T]; expert-choice ``causal_agreement``
    [N_r] and ``capacity_k`` [B, N_r]; token-choice ``tokens_per_depth`` [N_r].
    """
    aux: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {
        "tokens_per_recursion": torch.stack([d.selected.sum() for d in decisions]).detach(),
        "selected": torch.stack([d.selected for d in decisions], dim=1).detach(),
    }
    kind = decisions[0].kind
    if kind == "expert":
        aux["router_bce"] = torch.stack([d.aux_losses["router_bce"] for d in decisions]).sum()
        aux["z_loss"] = torch.stack([d.aux_losses["z_loss"] for d in decisions]).mean()
        stats["causal_agreement"] = torch.stack([d.stats["causal_agreement"] for d in decisions])
        stats["capacity_k"] = torch.stack([d.stats["capacity_k"] for d in decisions], dim=1)
    elif kind == "token":
        aux.update(decisions[0].aux_losses)
        stats.update(decisions[0].stats)
    return aux, stats


# ---------------------------------------------------------------------------------------------
# selection and losses


def capacity_k(capacity: float, num_tokens: torch.Tensor) -> torch.Tensor:
    """Tokens kept at a recursion: ``max(1, floor(capacity * T_valid))`` per row ([B] long); 0 for an empty row.

    ``floor`` as in the public MoR code (``int(capacity * T)``); a tiny epsilon guards float error
    (capacity 2/3 of 12 tokens is exactly 8, not 7). Where the floor is 0 (a short row, e.g. one
    decoding token at capacity 1/3) we keep 1 token instead, so a recursion never silently drops
    a row that has candidates; ``topk_select`` then clips k to the candidates left.
    """
    k = torch.floor(num_tokens.to(torch.float64) * capacity + 1e-9).long()
    return torch.where(num_tokens > 0, k.clamp(min=1), torch.zeros_like(k))


def topk_select(logits: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-row top-k among candidates (non-causal; training). Returns a bool mask [B, T].

    Args:
        logits: [B, T] router logits.
        candidates: [B, T] bool, tokens allowed to be chosen.
        k: [B] tokens to keep per row (clipped to the number of candidates).
    """
    B, T = logits.shape
    k = torch.minimum(k, candidates.long().sum(1))
    if T == 0:
        return candidates.clone()
    scores = logits.detach().masked_fill(~candidates, float("-inf"))
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(T, device=logits.device).expand(B, T))
    return (rank < k[:, None]) & candidates


def causal_select(logits: torch.Tensor, candidates: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Causal expert-choice rule for decoding: continue iff ``logit > threshold`` (0: ``sigmoid(logit) > 0.5``;
    a calibrated threshold per recursion: ``RecursiveConfig.mor_causal_thresholds``). [B, T] bool."""
    return candidates & (logits > threshold)


def router_bce(logits: torch.Tensor, selected: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Mean BCE of ``sigmoid(logit)`` against the selection, over candidate tokens (scalar)."""
    if not bool(candidates.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[candidates], selected[candidates].float())


def balance_loss(probs: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Token-choice balancing loss ``sum_i P_i f_i`` (SPEC 4), over valid tokens.

    Args:
        probs: [B, T, N_r] router softmax; depth: [B, T] chosen depth (0-based); valid: [B, T].
    ``P_i`` is the mean router probability of depth i and ``f_i = N_r *`` (fraction of tokens whose
    top-1 is i), as in the public MoR code, so a perfectly balanced router scores 1. ``f`` carries
    no gradient (an argmax count).
    """
    n = probs.shape[-1]
    w = valid.float()
    denom = w.sum().clamp(min=1.0)
    P = (probs * w[..., None]).sum((0, 1)) / denom
    f = n * (F.one_hot(depth, n).float() * w[..., None]).sum((0, 1)) / denom
    return (P * f.detach()).sum()


def z_loss(logits: torch.Tensor, valid: torch.Tensor, token_choice: bool) -> torch.Tensor:
    """Router z-loss: ``mean(logsumexp(logits)^2)`` (token-choice) or ``mean(logit^2)``."""
    if not bool(valid.any()):
        return logits.sum() * 0.0
    z = torch.logsumexp(logits, dim=-1) if token_choice else logits
    return (z[valid] ** 2).mean()


def expected_counts(capacities: list[float], seq_len: int) -> list[int]:
    """Training top-k sizes per recursion for one full sequence of ``seq_len`` tokens (:func:`capacity_k`
    with hierarchical filtering)."""
    out, prev = [], seq_len
    for c in capacities:
        k = max(1, math.floor(seq_len * c + 1e-9)) if seq_len > 0 else 0
        prev = min(prev, k)
        out.append(prev)
    return out
