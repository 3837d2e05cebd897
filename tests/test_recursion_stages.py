"""Public model stages (SPEC 5 model runner): driving them one by one reproduces ``forward``."""

from __future__ import annotations

import pytest
import torch

from depthmux.recursion import RecursiveCache, RouteDecision, TokenContext

VOCAB = 61

MODELS = {
    "recursive": dict(num_hidden_layers=6, num_recursions=2, relaxation_rank=2),
    "recursive_share_kv": dict(num_hidden_layers=6, num_recursions=2, mor_kv="share_first"),
    "vanilla": dict(sharing="none", num_hidden_layers=3, num_recursions=1),
    "sequence": dict(sharing="middle_sequence", num_hidden_layers=6, num_recursions=2),
    "expert": dict(num_hidden_layers=8, num_recursions=3, mor_router="expert"),
    "expert_share_kv": dict(num_hidden_layers=8, num_recursions=3, mor_router="expert", mor_kv="share_first"),
    "token": dict(num_hidden_layers=8, num_recursions=3, mor_router="token"),
    "token_share_kv": dict(num_hidden_layers=8, num_recursions=3, mor_router="token", mor_kv="share_first"),
}


def make(factory, kind: str):
    model = factory(vocab_size=VOCAB, **MODELS[kind])
    with torch.no_grad():  # decisive routers and non-trivial LoRA, so every path matters
        for name, p in model.named_parameters():
            if "router" in name:
                p.normal_(0, 1.0)
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def staged_logits(model, input_ids, attention_mask=None, cache=None, routing="topk"):
    """One forward pass through the public stages only."""
    body = model.model
    ctx = body.make_context(input_ids, attention_mask=attention_mask, cache=cache)
    assert isinstance(ctx, TokenContext) and ctx.positions.shape == input_ids.shape
    x = body.prefix(body.embed(input_ids), ctx)
    decision = None
    for r in range(body.num_recursion_steps):
        decision = body.route(x, r, ctx, previous=decision, routing=routing)
        assert isinstance(decision, RouteDecision) and decision.recursion == r
        assert decision.selected.shape == input_ids.shape
        x = body.recursion(x, decision, ctx)
    return model.logits(body.suffix(x, ctx))


def ids(B=2, T=12, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("routing", ["topk", "causal"])
def test_stages_reproduce_forward(tiny_recursive_factory, kind, routing):
    model = make(tiny_recursive_factory, kind).eval()
    x = ids()
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding in one row
    with torch.no_grad():
        ref = model(x, attention_mask=mask, use_cache=False, routing=routing).logits
        got = staged_logits(model, x, attention_mask=mask, routing=routing)
    assert (got - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", ["expert", "token", "expert_share_kv", "recursive"])
def test_stages_with_a_cache_reproduce_incremental_forward(tiny_recursive_factory, kind):
    model = make(tiny_recursive_factory, kind).eval()
    x = ids(T=9)
    with torch.no_grad():
        out = model(x[:, :5], use_cache=True)
        ref = [out.logits, model(x[:, 5:], past_key_values=out.cache, use_cache=True).logits]
        cache = RecursiveCache()
        got = [
            staged_logits(model, x[:, :5], cache=cache, routing="causal"),
            staged_logits(model, x[:, 5:], cache=cache, routing="causal"),
        ]
    assert cache.seq_len == 9
    assert (torch.cat(got, 1) - torch.cat(ref, 1)).abs().max().item() < 1e-5


def test_route_selects_a_subset_and_run_block_sees_only_it(tiny_recursive_factory):
    """route -> hierarchical subsets; run_block on a compact subset writes KV for those tokens only."""
    model = make(tiny_recursive_factory, "expert").train()
    body = model.model
    x = ids(B=2, T=12)
    with torch.no_grad():
        ctx = body.make_context(x)
        h = body.prefix(body.embed(x), ctx)
        d0 = body.route(h, 0, ctx)
        h = body.recursion(h, d0, ctx)
        d1 = body.route(h, 1, ctx, previous=d0)
        assert bool((d1.selected <= d0.selected).all())
        counts = d1.selected.sum(1)
        assert counts.tolist() == [8, 8]  # capacity 2/3 of 12
        index = torch.stack([row.nonzero().squeeze(1) for row in d1.selected])  # [B, 8]
        sub = ctx.subset(index, torch.ones_like(index, dtype=torch.bool))
        f = body.run_block(h.gather(1, index[..., None].expand(-1, -1, h.shape[-1])), 1, sub)
    assert f.shape == (2, 8, h.shape[-1])
    pre, K = model.config.num_prefix_layers, model.config.block_size
    # recursion-wise KV: recursion 1's positions hold exactly the 8 routed tokens per row
    assert ctx.cache.layers[pre + K].length.tolist() == [8, 8]
    assert torch.equal(ctx.cache.layers[pre + K].slot[:, :8], index)
