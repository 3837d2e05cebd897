"""Declared FLOP accounting: models report their own cost while they run.

A model (or a thin adapter around a Hugging Face model) calls :func:`add_flops` for the work it
actually does (a linear on the rows it was given, attention over the keys it actually read);
nobody outside the model guesses its cost from class names or hooks. Counting is off unless a
:class:`FlopCounter` is active, so the calls cost nothing in normal runs::

    with FlopCounter() as fc:
        model(**batch)
    fc.flops                   # forward FLOPs (2 per multiply-add)
    fc.non_embedding_macs      # multiply-adds outside the LM head / embeddings (for 6·N·D)

Conventions (SPEC 4 "FLOPs"): a linear ``[rows, in] -> [rows, out]`` costs ``2·rows·in·out``;
attention of ``Tq`` queries over ``Tk`` keys with total head width ``d_attn`` costs
``4·Tq·Tk·d_attn`` (scores and weighted sum). Counters nest: an inner counter's FLOPs are also
added to every enclosing one.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

_ACTIVE: contextvars.ContextVar[tuple[FlopCounter, ...]] = contextvars.ContextVar("depthmux_flop_counters", default=())


@dataclass
class FlopCounter:
    """Accumulates the FLOPs that models declare with :func:`add_flops` while it is active."""

    flops: float = 0.0
    non_embedding_macs: float = 0.0

    def __enter__(self) -> FlopCounter:
        self._token = _ACTIVE.set(_ACTIVE.get() + (self,))
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)


def counting() -> bool:
    """Whether any :class:`FlopCounter` is active (skip computing a cost that nobody reads)."""
    return bool(_ACTIVE.get())


def add_flops(flops: float, *, embedding: bool = False) -> None:
    """Declare ``flops`` of work; ``embedding=True`` for the LM head (not part of 6·N·D's N)."""
    for counter in _ACTIVE.get():
        counter.flops += flops
        if not embedding:
            counter.non_embedding_macs += flops / 2.0


def linear_flops(rows: int, in_features: int, out_features: int) -> float:
    """``2·rows·in·out``: a dense linear map applied to ``rows`` vectors."""
    return 2.0 * rows * in_features * out_features


def attention_flops(queries: int, keys: int, d_attn: int) -> float:
    """``4·Tq·Tk·d_attn``: scores ``QK^T`` and the weighted sum ``AV`` for ``queries`` x ``keys``
    pairs (pass the number of (query, key) pairs actually computed as ``queries * keys``)."""
    return 4.0 * queries * keys * d_attn
