"""Sampling parameters and the batched sampler of the decode engine (SPEC 5).

:class:`SamplingParams` is validated when built (a bad value is a one-line
:class:`~depthmux.errors.DepthmuxError`). :func:`sample_next_tokens` turns the last-position logits
of a batch of sequences ([N, V]) into their next tokens: greedy rows take one batched argmax;
temperature / top-p rows are sampled together from the engine's generator, except rows with their
own ``seed``, which draw from a per-request generator (so a seeded request gives the same tokens
whatever else is in the batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from depthmux.errors import DepthmuxError


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    Attributes:
        max_new_tokens: tokens to generate at most (>= 1).
        temperature: 0 = greedy (argmax); > 0 divides the logits before the softmax.
        top_p: nucleus sampling, keep the smallest set of tokens whose probability reaches top_p (0, 1].
        seed: per-request random seed (None: the engine's generator).
        stop_token_ids: generation stops after emitting one of these (the stop token is kept in the output).
        ignore_eos: do not stop at the model's end-of-sequence token (it is a stop token unless set).
    """

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise DepthmuxError(f"max_new_tokens must be a positive integer, got {n!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t) or math.isinf(t) or t < 0:
            raise DepthmuxError(f"temperature must be a finite number >= 0, got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 < p <= 1.0:
            raise DepthmuxError(f"top_p must be in (0, 1], got {p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise DepthmuxError(f"seed must be an integer or None, got {self.seed!r}")
        stops = tuple(self.stop_token_ids)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in stops):
            raise DepthmuxError(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        object.__setattr__(self, "stop_token_ids", stops)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row of ``probs`` [N, V] outside its top-p nucleus ([N] thresholds)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
    keep_sorted = before < top_p[:, None]
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return probs * keep


def sample_next_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    default: torch.Generator | None,
) -> list[int]:
    """Next token of each row. logits [N, V] (any float dtype); ``params`` / ``generators`` one per row
    (a request's own generator when it has a seed). Returns N token ids (one host transfer)."""
    N = logits.shape[0]
    if N == 0:
        return []
    out = logits.argmax(-1)
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if sampled:
        idx = torch.tensor(sampled, device=logits.device)
        temp = torch.tensor([params[i].temperature for i in sampled], device=logits.device, dtype=torch.float32)
        top_p = torch.tensor([params[i].top_p for i in sampled], device=logits.device, dtype=torch.float32)
        probs = _nucleus((logits[idx].float() / temp[:, None]).softmax(-1), top_p)
        shared = [j for j, i in enumerate(sampled) if generators[i] is None]
        if shared:
            rows = torch.tensor(shared, device=logits.device)
            picks = torch.multinomial(probs[rows], 1, generator=default).squeeze(1)
            out[idx[rows]] = picks
        for j, i in enumerate(sampled):  # seeded requests: their own generator, one row each
            if generators[i] is not None:
                out[i] = torch.multinomial(probs[j : j + 1], 1, generator=generators[i]).squeeze()
    return out.tolist()
