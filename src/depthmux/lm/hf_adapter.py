"""A thin :class:`~depthmux.lm.protocol.CausalLM` adapter for transformers causal LMs (LLaMA family).

``HFCausalLMAdapter(model)`` forwards to the wrapped ``PreTrainedModel`` unchanged (its weights,
its ``save_pretrained`` folder) and adds what the protocol declares: an output with ``lm_loss``,
empty ``aux_losses`` / ``router_stats``, ``parameter_counts()``, and closed-form FLOPs per forward
from the config (SPEC 4 "FLOPs", conventions of :mod:`depthmux.utils.flops`)::

    linears per token, per layer:  2·(d·H·D + 2·d·Hk·D + H·D·d + 3·d·I)      (GQA: Hk KV heads)
    attention per layer:           4·pairs·H·D, pairs = causal (query, key) pairs inside each
                                   document of the packed block (position_ids restart at 0)
    LM head:                       2·d·V per token (embedding=True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from depthmux.errors import DepthmuxError
from depthmux.lm.protocol import CausalLM
from depthmux.utils.flops import add_flops, attention_flops, counting, linear_flops

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
"""``model_type`` values whose decoder layer is LLaMA's (RMSNorm, RoPE, GQA attention, SwiGLU MLP)."""


@dataclass
class HFCausalLMOutput:
    """:class:`~depthmux.lm.protocol.CausalLMOutput` of a transformers model (no aux losses, no router)."""

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    logits: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    router_stats: dict[str, Any] = field(default_factory=dict)


def causal_pairs(position_ids: torch.Tensor) -> int:
    """Allowed (query, key) pairs of causal attention over packed documents ``[B, T]``:
    ``sum s·(s+1)/2`` over documents of length s (a document starts where a position is 0)."""
    starts = position_ids == 0
    starts[:, 0] = True
    doc_index = (
        starts.long().cumsum(-1)
        + torch.arange(position_ids.shape[0], device=position_ids.device)[:, None] * position_ids.shape[1]
    )
    lengths = torch.bincount(doc_index.flatten()).double()
    return int((lengths * (lengths + 1) / 2).sum())


class HFCausalLMAdapter(nn.Module):
    """Wrap a transformers LLaMA-family ``*ForCausalLM`` as a :class:`~depthmux.lm.protocol.CausalLM`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model_type = model.config.model_type
        if model_type not in LLAMA_FAMILY:
            raise DepthmuxError(f"unsupported causal LM type {model_type!r}: expected one of {', '.join(LLAMA_FAMILY)}")
        self.model = model
        self.config = model.config

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        routing: str | None = None,
        use_cache: bool = False,
    ) -> HFCausalLMOutput:
        """input_ids / position_ids / labels ``[B, T]`` -> logits ``[B, T, V]`` (labels shifted inside)."""
        if routing is not None:
            raise DepthmuxError(
                f"routing={routing!r} needs a Mixture-of-Recursions model, not a {self.config.model_type}"
            )
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        if counting():
            self._declare_flops(position_ids)
        out = self.model(input_ids=input_ids, position_ids=position_ids, labels=labels, use_cache=use_cache)
        return HFCausalLMOutput(loss=out.loss, lm_loss=out.loss, logits=out.logits)

    def _declare_flops(self, position_ids: torch.Tensor) -> None:
        c = self.config
        d, inter, V, L = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
        H, Hk = c.num_attention_heads, c.num_key_value_heads
        D = c.head_dim
        rows = position_ids.numel()
        per_layer = (
            linear_flops(rows, d, H * D)
            + 2 * linear_flops(rows, d, Hk * D)
            + linear_flops(rows, H * D, d)
            + 2 * linear_flops(rows, d, inter)
            + linear_flops(rows, inter, d)
        )
        add_flops(L * (per_layer + attention_flops(causal_pairs(position_ids), 1, H * D)))
        add_flops(linear_flops(rows, d, V), embedding=True)

    def parameter_counts(self) -> dict[str, int]:
        """Unique parameters: ``total``, ``embedding`` (input embeddings + an untied LM head), ``non_embedding``."""
        total = sum(p.numel() for p in self.model.parameters())  # parameters() yields tied weights once
        embeddings = {
            id(m.weight): m.weight.numel()
            for m in (self.model.get_input_embeddings(), self.model.get_output_embeddings())
        }
        embedding = sum(embeddings.values())
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """The wrapped model's own ``save_pretrained`` folder (state dict keys without the adapter prefix)."""
        if "state_dict" in kwargs and kwargs["state_dict"] is not None:
            prefix = "model."
            kwargs["state_dict"] = {
                k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in kwargs["state_dict"].items()
            }
        self.model.save_pretrained(str(save_directory), **kwargs)


def as_causal_lm(model: nn.Module) -> CausalLM:
    """``model`` itself when it declares the :class:`~depthmux.lm.protocol.CausalLM` contract, else a
    transformers LLaMA-family model wrapped in :class:`HFCausalLMAdapter` (an unsupported one is a
    one-line error)."""
    if isinstance(model, CausalLM):
        return model
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return HFCausalLMAdapter(model)
    raise DepthmuxError(
        f"{type(model).__name__} is not a causal LM: expected a depthmux.lm.protocol.CausalLM "
        "or a transformers LLaMA-family model"
    )
