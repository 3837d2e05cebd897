"""Mixture-of-Recursions routers and their auxiliary losses (SPEC 4).

* Expert-choice: one linear router per recursion r scores every candidate token,
  ``g_t = alpha * sigmoid(theta_r^T H_t^r)``; in training the top-k candidates of each sequence
  (k = ceil(capacity_r * T_valid), at most the number of candidates) continue, and an auxiliary
  BCE loss trains ``sigmoid(logit)`` to predict that selection, so that decoding can use the causal
  rule ``sigmoid(logit) > 0.5``. Hierarchical filtering: only tokens selected at r are
  candidates at r + 1.
* Token-choice: one linear router on H^1 gives a softmax over N_r depths; the top-1 depth is fixed
  per token; balancing loss ``sum_i P_i f_i`` and z-loss ``mean(logsumexp(logits)^2)``.

All functions work on [B, T] masks and never look across rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ExpertChoiceRouter(nn.Module):
    """N_r linear routers d -> 1 (no bias). ``forward(h, r)`` -> logits [B, T] (float32).

    With ``aux_router=True`` a second set of N_r linear routers (``aux_routers``) predicts the
    selection for causal decoding (``aux_logits(h, r)``, called on detached hidden states).
    """

    def __init__(self, hidden_size: int, num_recursions: int, aux_router: bool = False):
        super().__init__()
        self.routers = nn.ModuleList(nn.Linear(hidden_size, 1, bias=False) for _ in range(num_recursions))
        self.aux_routers = (nn.ModuleList(nn.Linear(hidden_size, 1, bias=False) for _ in range(num_recursions))
                            if aux_router else None)

    def forward(self, h: torch.Tensor, r: int) -> torch.Tensor:
        return self.routers[r](h).squeeze(-1).float()

    def aux_logits(self, h: torch.Tensor, r: int) -> torch.Tensor:
        return self.aux_routers[r](h).squeeze(-1).float()


class TokenChoiceRouter(nn.Module):
    """One linear router d -> N_r (no bias). ``forward(h)`` -> logits [B, T, N_r] (float32)."""

    def __init__(self, hidden_size: int, num_recursions: int):
        super().__init__()
        self.router = nn.Linear(hidden_size, num_recursions, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.router(h).float()


def capacity_k(capacity: float, num_tokens: torch.Tensor) -> torch.Tensor:
    """Tokens kept at a recursion: ``ceil(capacity * T_valid)`` per row ([B] long).

    A tiny epsilon guards float error (capacity 2/3 of 12 tokens is exactly 8, not 9).
    """
    return torch.ceil(num_tokens.to(torch.float64) * capacity - 1e-9).clamp(min=0).long()


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


def causal_select(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Causal expert-choice rule for decoding: continue iff ``sigmoid(logit) > 0.5``. [B, T] bool."""
    return candidates & (logits > 0)


def router_bce(logits: torch.Tensor, selected: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Mean BCE of ``sigmoid(logit)`` against the selection, over candidate tokens (scalar)."""
    if not bool(candidates.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[candidates], selected[candidates].float())


def balance_loss(probs: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Token-choice balancing loss ``sum_i P_i f_i`` (SPEC 4), over valid tokens.

    Args:
        probs: [B, T, N_r] router softmax; depth: [B, T] chosen depth (0-based); valid: [B, T].
    P_i is the mean router probability of depth i, f_i the fraction of tokens assigned to it.
    """
    n = probs.shape[-1]
    w = valid.float()
    denom = w.sum().clamp(min=1.0)
    P = (probs * w[..., None]).sum((0, 1)) / denom
    f = (F.one_hot(depth, n).float() * w[..., None]).sum((0, 1)) / denom
    return (P * f.detach()).sum()


def z_loss(logits: torch.Tensor, valid: torch.Tensor, token_choice: bool) -> torch.Tensor:
    """Router z-loss: ``mean(logsumexp(logits)^2)`` (token-choice) or ``mean(logit^2)``."""
    if not bool(valid.any()):
        return logits.sum() * 0.0
    z = torch.logsumexp(logits, dim=-1) if token_choice else logits
    return (z[valid] ** 2).mean()


def expected_counts(capacities: list[float], seq_len: int) -> list[int]:
    """Training top-k sizes per recursion for one full sequence of ``seq_len`` tokens."""
    out, prev = [], seq_len
    for c in capacities:
        prev = min(prev, math.ceil(seq_len * c - 1e-9))
        out.append(prev)
    return out
