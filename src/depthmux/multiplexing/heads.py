"""Frozen task heads: the read-out vector of one input -> class logits (SPEC 1.2).

The teacher and the multiplexed classifier share one head; it never trains while the adapters
do. Every head has the same interface, :class:`TaskHead`: ``forward(readout [B, d]) -> [B, C]``,
a JSON ``description()`` stored in checkpoints, and ``from_description(description, backbone)``
that rebuilds it (its tensors, if any, are loaded afterwards with ``load_state_dict``).

Today: :class:`LinearProbeHead` (logistic regression trained once on the teacher's read-outs).
The interface also fits the heads planned for decoders: a verbalizer is the frozen LM head
restricted to label words (no tensors of its own; it takes the LM head from the backbone in
``from_description``), applied to the last-token read-out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from depthmux.backbones import FrozenBackbone
from depthmux.errors import DepthmuxError


class TaskHead(nn.Module, ABC):
    """Interface: a frozen map from the read-out ``[B, d]`` to logits ``[B, num_labels]``."""

    #: the name stored in checkpoints (``description()["kind"]``), key of :data:`HEADS`.
    kind: ClassVar[str]
    num_labels: int

    @abstractmethod
    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, C]."""

    @abstractmethod
    def description(self) -> dict:
        """JSON-able arguments that rebuild this head (its tensors are saved separately)."""

    @classmethod
    @abstractmethod
    def from_description(cls, description: dict, backbone: FrozenBackbone) -> TaskHead:
        """Rebuild an (untrained) head from :meth:`description`; load its tensors afterwards."""

    def freeze(self) -> TaskHead:
        for p in self.parameters():
            p.requires_grad_(False)
        return self


class LinearProbeHead(TaskHead):
    """``logits = readout @ W^T + b``, W [C, d], trained once by :func:`~depthmux.multiplexing.train_probe`."""

    kind = "linear_probe"

    def __init__(self, d_model: int, num_labels: int) -> None:
        super().__init__()
        self.d_model, self.num_labels = d_model, num_labels
        self.weight = nn.Parameter(torch.zeros(num_labels, d_model))
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        return F.linear(readout, self.weight, self.bias)

    def description(self) -> dict:
        return {"kind": self.kind, "d_model": self.d_model, "num_labels": self.num_labels}

    @classmethod
    def from_description(cls, description: dict, backbone: FrozenBackbone) -> LinearProbeHead:
        if description.get("d_model") != backbone.hidden_size:
            raise DepthmuxError(
                f"the linear probe reads width {description.get('d_model')}, but the backbone's "
                f"hidden size is {backbone.hidden_size}"
            )
        return cls(backbone.hidden_size, int(description["num_labels"]))


HEADS: dict[str, type[TaskHead]] = {LinearProbeHead.kind: LinearProbeHead}


def head_from_description(description: dict, backbone: FrozenBackbone) -> TaskHead:
    """Rebuild a head of any registered kind (see :data:`HEADS`)."""
    kind = description.get("kind")
    if kind not in HEADS:
        raise DepthmuxError(f"unknown task head {kind!r}: choose one of {list(HEADS)}")
    return HEADS[kind].from_description(description, backbone)
