"""The causal-LM contract that the training loop, evaluation and recipes rely on (SPEC 3, SPEC 4).

A model satisfies :class:`CausalLM` by declaring these members, not by being probed::

    out = model(input_ids=[B, T], position_ids=[B, T], labels=[B, T] | None,
                routing=None | "topk" | "causal", use_cache=False)
    out.loss           # scalar: LM loss + weighted auxiliary losses (what is optimised); None without labels
    out.lm_loss        # scalar next-token loss (labels shifted inside, -100 ignored); None without labels
    out.logits         # [B, T, V]
    out.aux_losses     # dict[str, scalar], unweighted (logged), {} when the model has none
    out.router_stats   # dict (MoR: tokens per recursion, causal agreement, ...), {} otherwise
    model.parameter_counts()   # {"total", "embedding", "non_embedding"}: unique parameters
    model.save_pretrained(dir) # a folder that depthmux.lm.loading.load_lm reads back

While a :class:`depthmux.utils.flops.FlopCounter` is active, a forward declares its own FLOPs with
:func:`depthmux.utils.flops.add_flops` (the LM head with ``embedding=True``).
:class:`depthmux.recursion.RecursiveForCausalLM` satisfies the protocol natively; transformers
causal LMs (LLaMA family) through :class:`depthmux.lm.hf_adapter.HFCausalLMAdapter`.
Packed blocks leave the attention mask out: document boundaries come from ``position_ids``.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class CausalLMOutput(Protocol):
    """What a :class:`CausalLM` forward returns (see the module docstring for shapes)."""

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    logits: torch.Tensor
    aux_losses: dict[str, torch.Tensor]
    router_stats: dict[str, Any]


@runtime_checkable
class CausalLM(Protocol):
    """A causal LM with auxiliary losses that counts its own parameters and declares its FLOPs."""

    training: bool

    def __call__(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        routing: str | None = None,
        use_cache: bool = False,
    ) -> CausalLMOutput: ...

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        routing: str | None = None,
        use_cache: bool = False,
    ) -> CausalLMOutput: ...

    def parameter_counts(self) -> dict[str, int]: ...

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> Any: ...
