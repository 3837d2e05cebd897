"""Held-out evaluation of causal LMs: next-token NLL, perplexity, MoR router statistics (SPEC 4).

``evaluate_lm(model, blocks)`` runs any :class:`~depthmux.lm.protocol.CausalLM` over packed
held-out blocks ``[N, T]`` (:mod:`depthmux.data.text`) and computes the NLL from the logits, the
same definition for every model. ``measure_forward_flops(model, blocks)`` reports the FLOPs per
token that the model declares (:mod:`depthmux.utils.flops`) on one batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from depthmux.data.text import IGNORE_INDEX, PackedBlocks
from depthmux.errors import DepthmuxError
from depthmux.lm.hf_adapter import as_causal_lm
from depthmux.recursion.stats import RouterStatsAccumulator
from depthmux.utils.flops import FlopCounter
from depthmux.utils.progress import progress_bar


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and the number of targets: logits ``[B, T, V]``, labels ``[B, T]``
    (shifted here: logit t predicts label t+1; ``-100`` ignored)."""
    lg = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    tg = labels[:, 1:].reshape(-1)
    nll = F.cross_entropy(lg, tg, ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, (tg != IGNORE_INDEX).sum()


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    blocks: PackedBlocks,
    batch_size: int = 8,
    max_batches: int | None = None,
    accelerator=None,
    routing: str | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    """Held-out next-token NLL (nats per target token), perplexity and MoR router stats.

    Args:
        model: a :class:`~depthmux.lm.protocol.CausalLM` (a transformers LLaMA is wrapped).
        blocks: packed held-out blocks ``[N, T]``.
        batch_size: blocks per forward.
        max_batches: evaluate only the first ``max_batches`` batches.
        accelerator: when given (several processes), each process takes a strided share of
            the batches and sums are reduced across processes.
        routing: MoR expert-choice only: ``"topk"`` (the training rule; ``causal_agreement``
            then measures how often ``sigmoid(logit) > 0.5`` matches top-k) or ``"causal"``
            (the decoding rule). ``None``: the model's eval default (causal for MoR).
        progress: show a progress bar over the batches (stderr, removed when done), labelled ``desc``.

    Returns:
        ``{"nll", "ppl", "targets", "model_loss", "router_stats"}``; ``model_loss`` is the mean of
        the model's own ``lm_loss`` for comparison; ``router_stats`` is empty without routing.
    """
    if len(blocks) == 0:
        raise DepthmuxError("no evaluation blocks")
    if batch_size < 1:
        raise DepthmuxError(f"--batch-size must be >= 1, got {batch_size}")
    lm = as_causal_lm(model)
    was_training = lm.training
    lm.eval()
    rng = torch.get_rng_state()
    device = next(lm.parameters()).device
    n_batches = math.ceil(len(blocks) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_tgt = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    router = RouterStatsAccumulator()
    mine = range(rank, n_batches, world)
    bar = progress_bar(len(mine), desc, "batch", progress, leave=False)
    for i in mine:
        batch = {k: v.to(device) for k, v in blocks.batch(slice(i * batch_size, (i + 1) * batch_size)).items()}
        out = lm(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            labels=batch["labels"],
            routing=routing,
            use_cache=False,
        )
        nll, cnt = token_nll(out.logits, batch["labels"])
        nll_sum += nll.double()
        n_tgt += cnt.double()
        loss_sum += float(out.lm_loss) * float(cnt)
        router.add(out.router_stats, float(batch["input_ids"].numel()))
        bar.update()
    bar.close()
    if accelerator is not None and world > 1:
        nll_sum, n_tgt, loss_sum = (accelerator.reduce(t, reduction="sum") for t in (nll_sum, n_tgt, loss_sum))
        router = router.across_processes(accelerator)
    torch.set_rng_state(rng)
    lm.train(was_training)
    if float(n_tgt) == 0:
        raise DepthmuxError("evaluation blocks contain no targets")
    nll_mean = float(nll_sum / n_tgt)
    return {
        "nll": nll_mean,
        "ppl": math.exp(min(nll_mean, 50.0)),
        "targets": int(n_tgt),
        "model_loss": float(loss_sum / n_tgt),
        "router_stats": router.result(),
        **({"routing": routing} if routing else {}),
    }


@torch.no_grad()
def measure_forward_flops(model: torch.nn.Module, blocks: PackedBlocks, batch_size: int = 4) -> dict[str, float]:
    """Declared forward FLOPs per token on the first ``batch_size`` blocks (model in train mode, so
    MoR routing uses its training rule). Returns ``flops_per_token`` (forward),
    ``train_flops_per_token`` (3 x forward: backward ~ 2 x forward) and ``approx_6n_per_token``
    (6 x non-embedding multiply-adds per token, recursion counted as often as applied)."""
    lm = as_causal_lm(model)
    batch = blocks.batch(slice(0, batch_size))
    was_training = lm.training
    lm.train()
    state = torch.get_rng_state()
    with FlopCounter() as counter:
        lm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    torch.set_rng_state(state)
    lm.train(was_training)
    tokens = batch["input_ids"].numel()
    return {
        "flops_per_token": counter.flops / tokens,
        "train_flops_per_token": 3 * counter.flops / tokens,
        "approx_6n_per_token": 6 * counter.non_embedding_macs / tokens,
    }
