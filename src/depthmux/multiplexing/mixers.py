"""Multiplexers: N slot tensors -> one composite, and back (SPEC 1.1 steps 3 and 5, SPEC 1.7).

Every mixer works position-wise on stacked slots ``[N, ..., w]`` and composites ``[..., d]``:

* :class:`ReversibleMultiplexer` -- RevMUX: an additive coupling chain, demultiplexed by its
  exact inverse with the same ``F_k`` (block layout: slot k fills features ``k*w..(k+1)*w-1``);
* :class:`VanillaMultiplexer` -- non-reversible MLP mixer + a separate MLP demux per slot;
* :class:`DataMuxMultiplexer` -- fixed random Gaussian keys (Hadamard product), averaged;
  demux by an MLP over ``[slot key; hidden state]`` (DataMUX-style);
* :class:`ReversibleMuxMLPDemux` -- reversible mux, MLP demux ("ORA").
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from depthmux.errors import require
from depthmux.multiplexing.adapters import mlp


class Multiplexer(nn.Module, ABC):
    """Interface. ``n`` slots of width ``slot_width`` mix into a composite of width ``d_model``."""

    def __init__(self, n: int, d_model: int) -> None:
        super().__init__()
        require(n >= 2, f"a multiplexer needs N >= 2 inputs, got N={n}")
        self.n = n
        self.d_model = d_model

    @staticmethod
    def slot_width(d_model: int, n: int) -> int:
        """Width of one slot after ``f_down``: d/N for block layouts."""
        require(
            d_model % n == 0,
            f"N={n} does not divide the hidden size {d_model}: choose N among "
            f"{[k for k in range(2, min(d_model, 64) + 1) if d_model % k == 0][:12]}",
        )
        return d_model // n

    @abstractmethod
    def mux(self, slots: torch.Tensor) -> torch.Tensor:
        """[N, ..., w] -> [..., d]."""

    @abstractmethod
    def demux(self, composite: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [N, ..., w]."""


class ReversibleMultiplexer(Multiplexer):
    """RevMUX reversible multiplexer (SPEC 1.1 step 3) and its exact inverse (step 5).

    With ``o_0 := i_N``: ``o_k = i_k + F_k(o_{k-1})`` for k = 1..N, composite ``[o_1; ...; o_N]``.
    Inverse: ``î_k = ô_k - F_k(ô_{k-1})`` for k = N..2, then ``î_1 = ô_1 - F_1(î_N)``.
    At N = 2 this is ``o_1 = i_1 + F(i_2)``, ``o_2 = i_2 + G(o_1)``.
    """

    def __init__(self, n: int, d_model: int) -> None:
        super().__init__(n, d_model)
        w = self.slot_width(d_model, n)
        self.couplings = nn.ModuleList(mlp(w, w, w) for _ in range(n))  # F_1..F_N

    def mux(self, slots: torch.Tensor) -> torch.Tensor:
        prev = slots[-1]
        outs = []
        for i_k, f_k in zip(slots, self.couplings, strict=True):
            prev = i_k + f_k(prev)
            outs.append(prev)
        return torch.cat(outs, dim=-1)

    def demux(self, composite: torch.Tensor) -> torch.Tensor:
        o = composite.chunk(self.n, dim=-1)
        slots: list[torch.Tensor] = [None] * self.n  # type: ignore[list-item]
        for k in range(self.n - 1, 0, -1):
            slots[k] = o[k] - self.couplings[k](o[k - 1])
        slots[0] = o[0] - self.couplings[0](slots[-1])
        return torch.stack(slots)


class _PerSlotMLPDemux(nn.Module):
    """N separate MLPs, each reading the whole composite: [..., d] -> [N, ..., w]."""

    def __init__(self, n: int, d_model: int, w: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(mlp(d_model, d_model, w) for _ in range(n))

    def forward(self, composite: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(composite) for h in self.heads])


class VanillaMultiplexer(Multiplexer):
    """Non-reversible baseline (SPEC 1.7): MLP over the concatenated slots, MLP demux per slot."""

    def __init__(self, n: int, d_model: int) -> None:
        super().__init__(n, d_model)
        w = self.slot_width(d_model, n)
        self.mixer = mlp(n * w, d_model, d_model)
        self.demuxer = _PerSlotMLPDemux(n, d_model, w)

    def mux(self, slots: torch.Tensor) -> torch.Tensor:
        return self.mixer(torch.cat(list(slots), dim=-1))

    def demux(self, composite: torch.Tensor) -> torch.Tensor:
        return self.demuxer(composite)


class ReversibleMuxMLPDemux(ReversibleMultiplexer):
    """ "Only-mux-reversible" baseline (SPEC 1.7): reversible mux, learned MLP demux per slot."""

    def __init__(self, n: int, d_model: int) -> None:
        super().__init__(n, d_model)
        self.demuxer = _PerSlotMLPDemux(n, d_model, self.slot_width(d_model, n))

    def demux(self, composite: torch.Tensor) -> torch.Tensor:
        return self.demuxer(composite)


class DataMuxMultiplexer(Multiplexer):
    """DataMUX-style baseline (SPEC 1.7): ``o = (1/N) Σ_k v_k ⊙ i_k`` with fixed Gaussian keys
    ``v_k`` in R^d (slots keep the full width d); demux ``î_k = MLP([v_k; ô])``."""

    def __init__(self, n: int, d_model: int, seed: int = 0) -> None:
        super().__init__(n, d_model)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", torch.randn(n, d_model, generator=g))
        self.demuxer = mlp(2 * d_model, d_model, d_model)

    @staticmethod
    def slot_width(d_model: int, n: int) -> int:
        return d_model

    def mux(self, slots: torch.Tensor) -> torch.Tensor:
        keys = self.keys.view(self.n, *([1] * (slots.dim() - 2)), self.d_model)
        return (keys * slots).mean(0)

    def demux(self, composite: torch.Tensor) -> torch.Tensor:
        keys = self.keys.view(self.n, *([1] * (composite.dim() - 1)), self.d_model).expand(self.n, *composite.shape)
        return self.demuxer(torch.cat([keys, composite.expand(self.n, *composite.shape)], dim=-1))


MIXERS: dict[str, type[Multiplexer]] = {
    "reversible": ReversibleMultiplexer,
    "vanilla": VanillaMultiplexer,
    "datamux": DataMuxMultiplexer,
    "ora": ReversibleMuxMLPDemux,
}


def build_multiplexer(kind: str, n: int, d_model: int) -> Multiplexer:
    """Construct a mixer by name (``reversible``, ``vanilla``, ``datamux``, ``ora``)."""
    require(kind in MIXERS, f"unknown mixer {kind!r}: choose one of {list(MIXERS)}")
    return MIXERS[kind](n, d_model)
