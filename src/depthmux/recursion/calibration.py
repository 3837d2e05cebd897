"""Calibrating the causal expert-choice rule so decoding spends what the capacities say (SPEC 4, issue 19).

Training routes with per-sequence top-k (capacity ``c_r`` of the tokens run recursion r); decoding
cannot see the future, so it uses the causal rule ``logit_r > threshold_r`` (``sigmoid > 0.5`` by
default). With a briefly trained router the two disagree and decoding sends more (or fewer) tokens
deep than the capacities (SmolLM2 MoR-4: 0.764 of the block's (token, recursion) pairs instead of
0.625). :func:`calibrate_causal_thresholds` chooses one logit threshold per recursion on held-out
tokens, in order r = 1, 2, ...: with the thresholds of the earlier recursions fixed, it runs the
causal routing up to recursion r and sets ``threshold_r`` between the ``k``-th and ``(k+1)``-th
largest router logit among the tokens that reach it, ``k = round(c_r * valid tokens)``, so the
share of held-out tokens that run recursion r is ``c_r`` (exactly, up to ties). A recursion of
capacity 1 keeps every candidate (no threshold needed). The thresholds are stored in
``config.mor_causal_thresholds``; the model's ``route`` stage (which ``forward``, ``generate`` and the
engine call) uses them, so nothing else changes.

Text the thresholds are fitted on matters: decoding routes the model's *own* continuations, and a
router trained on corpus text may send them deeper or shallower. :func:`generated_blocks` makes that
text (greedy continuations of held-out prompts, generated under the current rule) and a ``counted``
mask of the generated tokens; both functions below take ``counted`` to fit and measure on those tokens
only (every token is still routed, as in decoding).

:func:`depth_distribution` measures, under causal routing, the share of tokens that run each
recursion and the average depth, for the before/after report.
"""

from __future__ import annotations

from typing import Any

import torch

from depthmux.data.text import PackedBlocks
from depthmux.errors import DepthmuxError
from depthmux.recursion.kv_cache import RecursiveCache
from depthmux.recursion.modeling import RecursiveForCausalLM


def _require_expert(model: RecursiveForCausalLM) -> None:
    if not isinstance(model, RecursiveForCausalLM) or model.config.mor_router != "expert":
        raise DepthmuxError("router calibration needs an expert-choice MoR model (mor_router='expert')")


def _batches(blocks: PackedBlocks, batch_size: int, max_batches: int | None, counted: torch.Tensor | None):
    """Batches of ``blocks`` with ``"counted"``: the tokens that count ([b, T] bool; all when None)."""
    if counted is not None and tuple(counted.shape) != tuple(blocks.input_ids.shape):
        raise DepthmuxError(f"counted has shape {tuple(counted.shape)}, the blocks {tuple(blocks.input_ids.shape)}")
    n = -(-len(blocks) // batch_size)
    if max_batches is not None:
        n = min(n, max_batches)
    for i in range(n):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        batch = blocks.batch(rows)
        batch["counted"] = None if counted is None else counted[rows].bool()
        yield batch


def _counted(ctx, batch) -> torch.Tensor:
    return ctx.write if batch["counted"] is None else ctx.write & batch["counted"].to(ctx.write.device)


@torch.no_grad()
def depth_distribution(
    model: RecursiveForCausalLM,
    blocks: PackedBlocks,
    batch_size: int = 4,
    max_batches: int | None = None,
    counted: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Causal routing on ``blocks`` ``[N, T]``: ``share_per_recursion`` (tokens that run recursion r / all
    tokens), ``capacities`` (the target), ``average_depth`` (recursions per token) and
    ``target_average_depth`` (sum of the capacities), ``block_share`` (average depth / N_r).
    ``counted`` ``[N, T]`` bool: measure on these tokens only (e.g. the generated part of
    :func:`generated_blocks`); every token is still routed, as in decoding."""
    _require_expert(model)
    body, n_r = model.model, model.config.num_recursions
    counts = torch.zeros(n_r, dtype=torch.float64)
    total = 0.0
    for batch in _batches(blocks, batch_size, max_batches, counted):
        ctx = body.make_context(batch["input_ids"], None, batch["position_ids"], RecursiveCache())
        mask = _counted(ctx, batch)
        x = body.prefix(body.embed(batch["input_ids"]), ctx)
        decision = None
        for r in range(n_r):
            decision = body.route(x, r, ctx, decision, "causal", losses=False)
            counts[r] += float((decision.selected & mask).sum())
            x = body.recursion(x, decision, ctx)
        total += float(mask.sum())
    if total == 0:
        raise DepthmuxError("no tokens to measure the depth distribution on")
    share = (counts / total).tolist()
    caps = model.config.capacities()
    return {
        "share_per_recursion": share,
        "capacities": caps,
        "average_depth": float(sum(share)),
        "target_average_depth": float(sum(caps)),
        "block_share": float(sum(share)) / n_r,
        "tokens": int(total),
    }


@torch.no_grad()
def calibrate_causal_thresholds(
    model: RecursiveForCausalLM,
    blocks: PackedBlocks,
    batch_size: int = 4,
    max_batches: int | None = None,
    counted: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Set ``model.config.mor_causal_thresholds`` from held-out ``blocks`` (module docstring); returns
    ``{"thresholds", "before", "after"}`` with the :func:`depth_distribution` before and after.
    ``counted`` ``[N, T]`` bool: the shares are fitted on these tokens only (all tokens are routed)."""
    _require_expert(model)
    was_training = model.training
    model.eval()
    cfg, body = model.config, model.model
    before = depth_distribution(model, blocks, batch_size, max_batches, counted)
    states = []
    for batch in _batches(blocks, batch_size, max_batches, counted):
        ctx = body.make_context(batch["input_ids"], None, batch["position_ids"], RecursiveCache())
        states.append([body.prefix(body.embed(batch["input_ids"]), ctx), ctx, None, _counted(ctx, batch)])
    valid = sum(float(mask.sum()) for *_, mask in states)
    thresholds = [0.0] * cfg.num_recursions
    cfg.mor_causal_thresholds = thresholds  # filled in place, recursion by recursion
    for r, capacity in enumerate(cfg.capacities()):
        if capacity < 1.0 and not (cfg.mor_kv == "share_first" and r == 0):
            logits = []
            for x, ctx, prev, mask in states:
                candidates = (prev.selected if prev is not None else ctx.write) & mask
                pred = body.router.aux_logits(x, r) if body.router.aux_routers is not None else body.router(x, r)
                logits.append(pred[candidates].double())
            values = torch.cat(logits).sort(descending=True).values
            k = round(capacity * valid)
            if k >= len(values):
                thresholds[r] = float(values[-1]) - 1.0 if len(values) else 0.0
            elif k <= 0:
                thresholds[r] = float(values[0]) + 1.0
            else:
                thresholds[r] = float((values[k - 1] + values[k]) / 2)
        for state in states:
            x, ctx, prev, _ = state
            decision = body.route(x, r, ctx, prev, "causal", losses=False)
            state[0], state[2] = body.recursion(x, decision, ctx), decision
    after = depth_distribution(model, blocks, batch_size, max_batches, counted)
    model.train(was_training)
    return {"thresholds": list(thresholds), "before": before, "after": after}


@torch.no_grad()
def generated_blocks(
    model: RecursiveForCausalLM, prompts: torch.Tensor, new_tokens: int, batch_size: int = 4
) -> tuple[PackedBlocks, torch.Tensor]:
    """The model's own greedy continuations: ``prompts`` ``[N, P]`` -> (blocks ``[N, P + new_tokens]`` of
    prompt + continuation, ``counted`` ``[N, P + new_tokens]`` bool, True on the generated tokens that
    are fed back, i.e. all but the last, as in decoding). Generation uses the model's current causal
    rule (its thresholds), so text and routing are what decoding would produce."""
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise DepthmuxError(f"prompts must be [N, P] with P >= 1, got shape {tuple(prompts.shape)}")
    if new_tokens < 2:
        raise DepthmuxError(f"new_tokens must be >= 2, got {new_tokens}")
    was_training = model.training
    model.eval()
    rows = []
    for i in range(0, len(prompts), batch_size):
        ids = prompts[i : i + batch_size]
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        rows.append(out[:, : ids.shape[1] + new_tokens])
    model.train(was_training)
    ids = torch.cat(rows)
    n, t = ids.shape
    positions = torch.arange(t).expand(n, t).clone()
    labels = ids.clone()
    labels[:, 0] = -100
    counted = torch.zeros(n, t, dtype=torch.bool)
    counted[:, prompts.shape[1] : t - 1] = True
    return PackedBlocks(ids, positions, labels, n), counted
