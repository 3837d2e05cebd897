"""The frozen-backbone interface used by multiplexing (SPEC 1.1, 1.6)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from depthmux.errors import DepthmuxError, require


@dataclass
class EncodedBatch:
    """Tokenised inputs. ``input_ids``, ``attention_mask``, ``token_type_ids``: [B, S] int64."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor | slice) -> EncodedBatch:
        tt = None if self.token_type_ids is None else self.token_type_ids[index]
        return EncodedBatch(self.input_ids[index], self.attention_mask[index], tt)


class FrozenBackbone(nn.Module, ABC):
    """A pretrained transformer whose weights never change.

    Layer indices follow SPEC 1.1: layer 0 is the embeddings, layers ``1..L`` the blocks, so
    ``run_layers(h, mask, l, L)`` runs blocks ``l+1..L`` on the output of ``Encoder_{0:l}``.
    """

    #: "cls" (first position), "mean" (masked mean) or "last" (last real token, decoders).
    readout_mode: str

    def __init__(self) -> None:
        super().__init__()

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenBackbone:
        return super().train(False)

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    @abstractmethod
    def tokenize(self, texts: list, max_length: int | None = None) -> EncodedBatch:
        """Tokenise sentences or (a, b) pairs; empty or over-long texts raise DepthmuxError."""

    @abstractmethod
    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        """Layer 0: [B, S] tokens -> [B, S, d] hidden states."""

    @abstractmethod
    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Blocks ``start+1..end`` (i.e. ``Encoder_{start:end}``): [B, S, d] -> [B, S, d]."""

    def check_prefill(self, prefill_layers: int) -> None:
        require(
            0 <= prefill_layers < self.num_layers,
            f"prefill layers l={prefill_layers} must satisfy 0 <= l < {self.num_layers} "
            f"(the backbone has {self.num_layers} layers)",
        )

    def prefill(self, batch: EncodedBatch, prefill_layers: int) -> torch.Tensor:
        """``h = Encoder_{0:l}(X)``: [B, S] -> [B, S, d] (SPEC 1.1 step 1)."""
        self.check_prefill(prefill_layers)
        return self.run_layers(self.embed(batch), batch.attention_mask, 0, prefill_layers)

    def readout(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool [.., S, w] hidden states to [.., w] with each input's own mask [.., S]."""
        if self.readout_mode == "cls":
            return hidden[..., 0, :]
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        if self.readout_mode == "mean":
            return (hidden * mask).sum(-2) / mask.sum(-2).clamp_min(1.0)
        if self.readout_mode == "last":
            last = attention_mask.long().sum(-1).clamp_min(1) - 1
            return torch.gather(
                hidden, -2, last[..., None, None].expand(*hidden.shape[:-2], 1, hidden.shape[-1])
            ).squeeze(-2)
        raise DepthmuxError(f"unknown readout {self.readout_mode!r}: choose cls, mean or last")

    @torch.no_grad()
    def encode(self, batch: EncodedBatch) -> torch.Tensor:
        """The teacher's read-out: full frozen model, N = 1. [B, S] -> [B, d]."""
        hidden = self.run_layers(self.embed(batch), batch.attention_mask, 0, self.num_layers)
        return self.readout(hidden, batch.attention_mask)
