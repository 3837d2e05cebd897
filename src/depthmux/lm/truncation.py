"""The honest baseline: a pretrained LLaMA with layers dropped (issue 19 point 4).

A depth method (MoR, early exit) must beat the simplest way to spend the same inference FLOPs:
the original model with fewer layers. :func:`truncate_llama` keeps ``K`` of the ``L`` decoder
layers (embeddings, final norm and LM head unchanged) and returns a transformers model of the
same family, so everything that serves SmolLM2 serves it (``load_lm``, the engine, ``lm train``
for uptraining with the same budget and distillation).

Which layers: ``keep="ends"`` (default) keeps the first ``K - 1`` layers and the last one (the last
layer shapes the output distribution; dropping deep middle layers is the cheapest cut in the
layer-pruning literature), ``keep="first"`` the first ``K``.

:func:`layers_for_flops` picks ``K`` so the truncated model's declared forward FLOPs per token match
a target (e.g. an MoR model's, measured under its decoding rule): per token a LLaMA costs
``head + K * layer`` (attention over a fixed context included in ``layer``).
"""

from __future__ import annotations

import torch
from torch import nn

from depthmux.errors import DepthmuxError
from depthmux.lm.hf_adapter import LLAMA_FAMILY
from depthmux.utils.flops import FlopCounter

KEEP_STRATEGIES = ("ends", "first")


def kept_layers(num_layers: int, k: int, keep: str = "ends") -> list[int]:
    """Indices of the ``k`` layers kept out of ``num_layers`` (module docstring)."""
    if keep not in KEEP_STRATEGIES:
        raise DepthmuxError(f"unknown --keep {keep!r}: use {' or '.join(KEEP_STRATEGIES)}")
    if not isinstance(k, int) or not 1 <= k <= num_layers:
        raise DepthmuxError(f"--layers must be in 1..{num_layers}, got {k!r}")
    if keep == "first" or k == num_layers or k == 1:
        return list(range(k))
    return list(range(k - 1)) + [num_layers - 1]


def truncate_llama(model: nn.Module, k: int, keep: str = "ends") -> nn.Module:
    """A new transformers LLaMA-family ``*ForCausalLM`` with ``k`` of ``model``'s layers (same weights)."""
    cfg = model.config
    if cfg.model_type not in LLAMA_FAMILY:
        raise DepthmuxError(f"truncation needs a LLaMA-family model, got {cfg.model_type!r}")
    keep_idx = kept_layers(cfg.num_hidden_layers, k, keep)
    new_cfg = type(cfg).from_dict({**cfg.to_dict(), "num_hidden_layers": k})
    if getattr(new_cfg, "layer_types", None) is not None:
        new_cfg.layer_types = [cfg.layer_types[i] for i in keep_idx]
    state = model.state_dict()
    remap = {f"model.layers.{old}.": f"model.layers.{new}." for new, old in enumerate(keep_idx)}
    new_state = {}
    for key, value in state.items():
        if key.startswith("model.layers."):
            prefix = ".".join(key.split(".")[:3]) + "."
            if prefix not in remap:
                continue
            key = remap[prefix] + key[len(prefix) :]
        new_state[key] = value
    out = type(model)(new_cfg)
    missing, unexpected = out.load_state_dict(new_state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and new_cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise DepthmuxError(f"truncation lost weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return out.to(next(model.parameters()).dtype).eval()


@torch.no_grad()
def forward_flops_per_token(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> float:
    """Declared forward FLOPs per token of a :class:`~depthmux.lm.protocol.CausalLM` in eval mode
    (MoR: the decoding rule) on ``input_ids`` ``[B, T]``."""
    was = model.training
    model.eval()
    with FlopCounter() as fc:
        model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    model.train(was)
    return fc.flops / input_ids.numel()


def layers_for_flops(target: float, per_token_at: dict[int, float]) -> int:
    """``K`` whose FLOPs per token are nearest ``target``, from two measured points ``{K1: f1, K2: f2}``
    of the same model family (linear in K: ``f(K) = head + K * layer``)."""
    (k1, f1), (k2, f2) = sorted(per_token_at.items())
    layer = (f2 - f1) / (k2 - k1)
    if layer <= 0:
        raise DepthmuxError("FLOPs do not grow with the layers: cannot match a target")
    head = f1 - k1 * layer
    return max(1, round((target - head) / layer))
