"""Sampling parameters and the batched sampler of the decode engine (SPEC 5).

:class:`SamplingParams` is validated when built (a bad value is a one-line
:class:`~depthmux.errors.DepthmuxError`). :func:`sample_next_tokens` turns the last-position logits
of a batch of sequences ([N, V]) into their next tokens: greedy rows take one batched argmax;
temperature / top-p rows are sampled together from the engine's generator, except rows with their
own ``seed``, which draw from a per-request generator (so a seeded request gives the same tokens
whatever else is in the batch). :func:`sampling_probs` is the one definition of a sampled request's
distribution (temperature, then the top-p nucleus); speculative decoding uses it too.

A temperature below :data:`TEMPERATURE_FLOOR` (e.g. 1e-300, whose division overflows) is greedy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from depthmux.errors import DepthmuxError

TEMPERATURE_FLOOR = 1e-5
"""Temperatures below this decode greedily (``logits / T`` would overflow; the limit is the argmax)."""
SEED_LIMIT = 1 << 63
"""Seeds must lie in [0, 2^63) (torch generators take int64)."""


def check_seed(name: str, seed) -> None:
    """A seed is an integer in [0, 2^63); anything else is a one-line error."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise DepthmuxError(f"{name} must be an integer in [0, 2^63), got {seed!r}")


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    Attributes:
        max_new_tokens: tokens to generate at most (>= 1).
        temperature: 0 = greedy (argmax); > 0 divides the logits before the softmax (below
            :data:`TEMPERATURE_FLOOR`: greedy).
        top_p: nucleus sampling, keep the smallest set of tokens whose probability reaches top_p (0, 1].
        seed: per-request random seed in [0, 2^63) (None: the engine's generator).
        stop_token_ids: generation stops after emitting one of these (the stop token is kept in the output).
        stop: stop strings: generation stops when the output text contains one; it is matched on the
            text across token boundaries and cut from the output text with everything after it
            (OpenAI's convention; needs a tokenizer).
        ignore_eos: do not stop at the model's end-of-sequence token (it is a stop token unless set).
    """

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()

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
        if self.seed is not None:
            check_seed("seed", self.seed)
        if isinstance(self.stop_token_ids, (str, bytes, int)) or not hasattr(self.stop_token_ids, "__iter__"):
            raise DepthmuxError(f"stop_token_ids must be a list of token ids, got {self.stop_token_ids!r}")
        stops = tuple(self.stop_token_ids)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in stops):
            raise DepthmuxError(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        object.__setattr__(self, "stop_token_ids", stops)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if isinstance(stop, bytes) or not isinstance(stop, (list, tuple)):
            raise DepthmuxError(f"stop must be a string or a list of strings, got {self.stop!r}")
        if not all(isinstance(x, str) and x for x in stop):
            raise DepthmuxError(f"stop must hold non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))

    @property
    def greedy(self) -> bool:
        return self.temperature < TEMPERATURE_FLOOR


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row of ``probs`` [N, V] outside its top-p nucleus ([N] thresholds)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
    keep_sorted = before < top_p[:, None]
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return probs * keep


def sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The distributions sampled requests draw from: ``softmax(logits / T)`` cut to each row's top-p
    nucleus and renormalised. logits [N, V] (any float dtype), one params per row -> [N, V] float32."""
    temp = torch.tensor([p.temperature for p in params], device=logits.device, dtype=torch.float32)
    probs = (logits.float() / temp[:, None]).softmax(-1)
    if any(p.top_p < 1.0 for p in params):
        # top_p = 1 keeps every token (an infinite threshold: no rounding of the cumulative sum drops a tail)
        top_p = torch.tensor([p.top_p if p.top_p < 1.0 else math.inf for p in params], device=logits.device)
        probs = _nucleus(probs, top_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


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
        probs = sampling_probs(logits[idx], [params[i] for i in sampled])
        shared = [j for j, i in enumerate(sampled) if generators[i] is None]
        if shared:
            rows = torch.tensor(shared, device=logits.device)
            picks = torch.multinomial(probs[rows], 1, generator=default).squeeze(1)
            out[idx[rows]] = picks
        for j, i in enumerate(sampled):  # seeded requests: their own generator, one row each
            if generators[i] is not None:
                out[i] = torch.multinomial(probs[j : j + 1], 1, generator=generators[i]).squeeze()
    return out.tolist()
