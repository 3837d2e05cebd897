"""MoR update rules (SPEC 4): expert-choice and token-choice as published, the "gated_delta" option,
the gate-only control, and the token-choice balancing loss. Each rule is recomputed here by hand
from the public stages (route for the decision, run_block for f on a hand-gathered subset)."""

from __future__ import annotations

import pytest
import torch

from depthmux.errors import DepthmuxError
from depthmux.recursion import RecursiveConfig
from depthmux.recursion.routers import balance_loss

VOCAB = 61


def make(factory, **kw):
    model = factory(vocab_size=VOCAB, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router" in name:
                p.normal_(0, 1.0)
    return model.eval()


def ids(B=2, T=12, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def block_on(body, h, r, ctx, selected):
    """f = block(H) on the selected tokens only (same count in every row), gathered by hand."""
    index = torch.stack([row.nonzero().squeeze(1) for row in selected])  # [B, M]
    rows = index[..., None].expand(-1, -1, h.shape[-1])
    f = body.run_block(h.gather(1, rows), r, ctx.subset(index, torch.ones_like(index, dtype=torch.bool)))
    return index, rows, f


def expert_by_hand(model, x, routing="topk"):
    body = model.model
    ctx = body.make_context(x)
    h = body.prefix(body.embed(x), ctx)
    decision = None
    for r in range(model.config.num_recursions):
        decision = body.route(h, r, ctx, decision, routing)
        index, rows, f = block_on(body, h, r, ctx, decision.selected)
        hs = h.gather(1, rows)
        g = model.config.mor_alpha * torch.sigmoid(body.router(h, r)).gather(1, index)[..., None]
        if model.config.mor_update == "published":
            new = hs + g * f  # paper: H^{r+1} = g * f(H^r) + H^r, f the block's full output
        else:
            new = hs + g * (f - hs)
        h = h.scatter(1, rows, new)
    return model.logits(body.suffix(h, ctx)), decision


@pytest.mark.parametrize("rule", ["published", "gated_delta"])
@pytest.mark.parametrize("kv", ["recursion_wise", "share_first"])
def test_expert_choice_update_by_hand(tiny_recursive_factory, rule, kv):
    model = make(
        tiny_recursive_factory, num_hidden_layers=8, num_recursions=3, mor_router="expert", mor_update=rule, mor_kv=kv
    )
    x = ids()
    with torch.no_grad():
        ref = model(x, use_cache=False, routing="topk")
        got, _ = expert_by_hand(model, x)
    assert ref.router_stats["tokens_per_recursion"].tolist() == [24, 16, 8]
    assert (got - ref.logits).abs().max().item() < 1e-5


def test_published_is_the_default_and_differs_from_gated_delta(tiny_recursive_factory):
    assert (
        RecursiveConfig(num_hidden_layers=4, num_recursions=2, sharing="middle_cycle", mor_router="expert").mor_update
        == "published"
    )
    x = ids()
    with torch.no_grad():
        a = make(tiny_recursive_factory, mor_router="expert")(x).logits
        b = make(tiny_recursive_factory, mor_router="expert", mor_update="gated_delta")(x).logits
    assert (a - b).abs().max().item() > 1e-3


@pytest.mark.parametrize("rule", ["published", "gated_delta"])
@pytest.mark.parametrize("routing", ["topk", "causal"])
def test_gate_only_control(tiny_recursive_factory, rule, routing):
    """Capacities [1, 1]: every token runs every recursion (no routing), the gate still applies."""
    model = make(
        tiny_recursive_factory,
        num_hidden_layers=6,
        num_recursions=2,
        mor_router="expert",
        mor_capacity=[1.0, 1.0],
        mor_update=rule,
    )
    x = ids()
    with torch.no_grad():
        out = model(x, use_cache=False, routing=routing)
        got, _ = expert_by_hand(model, x, routing)
        plain = make(tiny_recursive_factory, num_hidden_layers=6, num_recursions=2)(x).logits  # same weights
    assert bool(out.router_stats["selected"].all())
    assert (got - out.logits).abs().max().item() < 1e-5
    assert (plain - out.logits).abs().max().item() > 1e-3  # the gate changes the model


def token_by_hand(model, x):
    """Token-choice with B = 1 (no ragged subsets): depth d = argmax of the router on H^1."""
    body, cfg = model.model, model.config
    ctx = body.make_context(x)
    h1 = body.prefix(body.embed(x), ctx)
    probs = body.router(h1).softmax(-1)  # [1, T, N_r]
    depth = probs.argmax(-1)
    w = cfg.mor_alpha * probs.gather(-1, depth[..., None])  # [1, T, 1]
    h = h1
    for r in range(cfg.num_recursions):
        sel = depth >= r
        if not bool(sel.any()):
            continue
        index, rows, f = block_on(body, h, r, ctx, sel)
        hs = h.gather(1, rows)
        if cfg.mor_update == "published":
            new = f  # every recursion un-gated; the weight is applied to the whole chain below
        else:
            last = (depth.gather(1, index) == r)[..., None]
            new = torch.where(last, hs + w.gather(1, index[..., None]) * (f - hs), f)
        h = h.scatter(1, rows, new)
    if cfg.mor_update == "published":
        h = h1 + w * h  # H^1 + w * f^{(d)}(H^1)
    return model.logits(body.suffix(h, ctx)), depth


@pytest.mark.parametrize("rule", ["published", "gated_delta"])
@pytest.mark.parametrize("kv", ["recursion_wise", "share_first"])
def test_token_choice_update_by_hand(tiny_recursive_factory, rule, kv):
    model = make(
        tiny_recursive_factory, num_hidden_layers=8, num_recursions=3, mor_router="token", mor_update=rule, mor_kv=kv
    )
    x = ids(B=1, T=16, seed=2)
    with torch.no_grad():
        ref = model(x, use_cache=False)
        got, depth = token_by_hand(model, x)
    assert len(depth.unique()) >= 2  # several depths, so the per-token rule matters
    assert ref.router_stats["tokens_per_depth"].tolist() == [int((depth == i).sum()) for i in range(3)]
    assert (got - ref.logits).abs().max().item() < 1e-5


def test_token_choice_balance_loss_by_hand():
    probs = torch.tensor([[[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]]])
    depth = probs.argmax(-1)  # [0, 0, 1, 0]
    valid = torch.ones(1, 4, dtype=torch.bool)
    # P = (0.6, 0.4); f = N_r * routed fraction = 2 * (3/4, 1/4) = (1.5, 0.5); sum P_i f_i = 1.1
    torch.testing.assert_close(balance_loss(probs, depth, valid), torch.tensor(1.1))
    # padding does not count; a perfectly balanced router scores exactly 1
    even = torch.tensor([[[0.5, 0.5], [0.5, 0.5], [0.1, 0.9]]])
    torch.testing.assert_close(
        balance_loss(even, torch.tensor([[0, 1, 0]]), torch.tensor([[True, True, False]])), torch.tensor(1.0)
    )


@pytest.mark.parametrize("bad", ["paper", "", None, "Published"])
def test_unknown_update_rule_is_one_line(bad):
    with pytest.raises(DepthmuxError) as e:
        RecursiveConfig(
            num_hidden_layers=4, num_recursions=2, sharing="middle_cycle", mor_router="expert", mor_update=bad
        )
    assert "mor_update" in str(e.value) and "\n" not in str(e.value)


def test_config_saved_before_mor_update_keeps_gated_delta(tiny_recursive_factory, tmp_path):
    from depthmux.recursion import load_recursive_model

    model = make(tiny_recursive_factory, mor_router="expert", mor_update="gated_delta")
    model.save_pretrained(tmp_path)
    cfg_file = tmp_path / "config.json"
    import json

    data = json.loads(cfg_file.read_text())
    del data["mor_update"]  # as written by an earlier version
    cfg_file.write_text(json.dumps(data))
    loaded = load_recursive_model(tmp_path).eval()
    assert loaded.config.mor_update == "gated_delta"
    x = ids()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    fresh = RecursiveConfig.from_dict({k: v for k, v in data.items() if k != "mor_router"})
    assert fresh.mor_update == "published"  # no router: nothing to keep
