"""Mixture-of-Recursions router statistics aggregated over batches (SPEC 4).

A MoR forward returns ``out.router_stats`` for one batch; :class:`RouterStatsAccumulator` sums or
averages them over many batches (training log lines, held-out evaluation) and
:func:`summarize_router_stats` adds derived metrics such as ``dead_token_ratio``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class RouterStatsAccumulator:
    """Aggregate ``out.router_stats`` (SPEC 4) over batches.

    Entries named ``tokens_per_*`` (counts summed over a batch, one per recursion / depth) are
    summed; every other numeric entry (e.g. ``causal_agreement`` [N_r], a fraction) is averaged
    weighted by the batch's token count; entries with a batch dimension (``[B, N_r]``, e.g.
    ``capacity_k``) are first averaged over it. Non-numeric entries are left out.
    :meth:`result` adds shares and ``dead_token_ratio`` (see :func:`summarize_router_stats`).
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.weights: dict[str, float] = {}
        self.tokens = 0.0

    def add(self, stats: dict[str, Any] | None, tokens: float) -> None:
        """Add one batch's ``stats`` (tensors, numbers or lists) computed over ``tokens`` tokens."""
        if not stats:
            return
        self.tokens += tokens
        for k, v in stats.items():
            value = v.detach().float().cpu() if isinstance(v, torch.Tensor) else v
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):  # a non-numeric entry (e.g. a routing name)
                continue
            if arr.ndim > 1:
                arr = arr.mean(axis=0)
            if k in self.sums and self.sums[k].shape != arr.shape:
                continue  # a ragged entry (differs between batches) has no mean
            w = 1.0 if k.startswith("tokens_per") else tokens
            self.sums[k] = self.sums.get(k, 0.0) + w * arr
            self.weights[k] = self.weights.get(k, 0.0) + w

    def merge(self, other: RouterStatsAccumulator) -> None:
        """Add the batches ``other`` accumulated (e.g. another process's share)."""
        self.tokens += other.tokens
        for k, total in other.sums.items():
            if k in self.sums and self.sums[k].shape != total.shape:
                continue  # ragged between the two: no mean
            self.sums[k] = self.sums.get(k, 0.0) + total
            self.weights[k] = self.weights.get(k, 0.0) + other.weights[k]

    def across_processes(self, accelerator) -> RouterStatsAccumulator:
        """All processes' batches in one accumulator (an all-gather every process must call); ``self``
        with one process or no ``accelerator``."""
        if accelerator is None or accelerator.num_processes == 1:
            return self
        from accelerate.utils import gather_object

        merged = RouterStatsAccumulator()
        for part in gather_object([self]):
            merged.merge(part)
        return merged

    def result(self) -> dict[str, Any]:
        """Aggregated statistics (lists and floats, JSON-serialisable)."""
        out: dict[str, Any] = {}
        for k, total in self.sums.items():
            if k.startswith("tokens_per"):
                out[k] = total.tolist()
                if self.tokens > 0:
                    out[k.replace("tokens_per", "share_per", 1)] = (total / self.tokens).tolist()
            elif self.weights[k] > 0:
                out[k] = (total / self.weights[k]).tolist()
        return summarize_router_stats(out)


def summarize_router_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Add derived MoR metrics to aggregated router stats.

    ``dead_token_ratio``: share of tokens never selected beyond recursion 1, i.e.
    ``1 - n_2 / n_1`` with ``n_r`` the tokens that run recursion r (``tokens_per_recursion``;
    needs N_r >= 2). With expert-choice top-k routing it equals ``1 - capacity_2`` by
    construction; it is informative for the causal (decoding) rule and for token-choice.
    """
    out = dict(stats)
    v = stats.get("tokens_per_recursion")
    if isinstance(v, list) and len(v) >= 2 and v[0] > 0:
        out["dead_token_ratio"] = 1.0 - float(v[1]) / float(v[0])
    return out
