"""Expert-choice router auxiliary BCE (SPEC 4): target, candidates, gradient, agreement; clean loading."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from depthmux.recursion import RecursiveConfig, RecursiveForCausalLM, load_recursive_model
from depthmux.recursion.routers import capacity_k, topk_select

VOCAB = 37


def expert_model(n: int = 3, seed: int = 0, **kw) -> RecursiveForCausalLM:
    torch.manual_seed(seed)
    cfg = RecursiveConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_hidden_layers=2 + n,
        num_recursions=n,
        sharing="middle_cycle",
        mor_router="expert",
        max_position_embeddings=64,
        **kw,
    )
    model = RecursiveForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router" in name:
                p.normal_(0, 1.0)
    return model


def run_capturing_logits(model, x, **kw):
    """Forward pass that also returns the router logits of every recursion (in call order)."""
    seen = []
    hook = model.model.router.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        out = model(x, labels=x, **kw)
    finally:
        hook.remove()
    return out, seen


@pytest.mark.parametrize("n", [2, 3])
def test_bce_target_is_the_topk_selection_over_candidates(n):
    model = expert_model(n).train()
    x = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    out, logits = run_capturing_logits(model, x)
    assert len(logits) == n
    sel = out.router_stats["selected"]  # [B, N_r, T]
    valid = torch.ones_like(x, dtype=torch.bool)
    cand = valid
    expected_bce, expected_agree = [], []
    for r, lg in enumerate(logits):
        k = capacity_k(model.config.capacities()[r], valid.long().sum(1))
        topk = topk_select(lg, cand, k)
        assert torch.equal(sel[:, r], topk), f"selection at recursion {r} is not the top-k of the candidates"
        # the BCE uses the raw logit (before the alpha * sigmoid gate), the detached selection
        # mask as target, and only the candidate tokens (hierarchical filtering)
        expected_bce.append(F.binary_cross_entropy_with_logits(lg[cand], topk[cand].float()))
        expected_agree.append((((lg > 0) == topk) & cand).sum() / cand.sum())
        cand = topk
    torch.testing.assert_close(out.aux_losses["router_bce"], torch.stack(expected_bce).sum())
    torch.testing.assert_close(out.router_stats["causal_agreement"], torch.stack(expected_agree))
    assert not out.router_stats["causal_agreement"].requires_grad


def test_bce_gradient_reaches_every_router():
    model = expert_model(3).train()
    x = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    out = model(x, labels=x)
    out.aux_losses["router_bce"].backward()
    for r in model.model.router.routers:
        assert r.weight.grad is not None and float(r.weight.grad.abs().sum()) > 0


def test_bce_coefficient_changes_router_gradient():
    x = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    grads = []
    for coef in (0.0, 1.0):
        model = expert_model(2, mor_bce_coef=coef).train()
        out = model(x, labels=x)
        out.loss.backward()
        grads.append(model.model.router.routers[1].weight.grad.clone())
        if coef:
            torch.testing.assert_close(out.loss, out.lm_loss + coef * out.aux_losses["router_bce"])
    assert not torch.allclose(grads[0], grads[1])


def test_bce_training_drives_agreement_up():
    """Training the routers on the BCE alone moves the causal rule towards top-k."""
    model = expert_model(3, seed=4).train()
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.model.router.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=3e-2)
    x = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(5))
    before = model(x, labels=x)
    for _ in range(150):
        opt.zero_grad()
        model(x, labels=x).aux_losses["router_bce"].backward()
        opt.step()
    after = model(x, labels=x)
    assert float(after.aux_losses["router_bce"].detach()) < 0.8 * float(before.aux_losses["router_bce"].detach())
    agree0, agree = before.router_stats["causal_agreement"], after.router_stats["causal_agreement"]
    # a frozen random toy model (repeated token ids, no router bias) cannot separate every token
    assert float(agree.mean()) > float(agree0.mean()) and float(agree.min()) >= 0.8, (agree0, agree)


def test_load_is_clean(tmp_path, capfd, caplog):
    model = expert_model(2)
    model.save_pretrained(tmp_path)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        loaded = load_recursive_model(tmp_path)
    assert isinstance(loaded, RecursiveForCausalLM)
    text = capfd.readouterr().err + caplog.text
    assert "instantiate a model of type" not in text


def test_config_round_trip_keeps_model_type(tmp_path):
    cfg = expert_model(2).config
    cfg.save_pretrained(tmp_path)
    again = RecursiveConfig.from_pretrained(tmp_path)
    assert again.model_type == "depthmux_recursive" and again.mor_bce_coef == cfg.mor_bce_coef
    assert math.isclose(again.mor_alpha, 0.1)


def test_aux_router_is_trained_only_by_bce_and_drives_causal_rule():
    model = expert_model(3, mor_aux_router=True).train()
    router = model.model.router
    assert router.aux_routers is not None and len(router.aux_routers) == 3
    x = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(6))
    out, _ = run_capturing_logits(model, x)
    # the LM loss never reaches the auxiliary router; the BCE never reaches the backbone through it
    out.lm_loss.backward(retain_graph=True)
    assert all(r.weight.grad is None or float(r.weight.grad.abs().sum()) == 0 for r in router.aux_routers)
    model.zero_grad()
    out.aux_losses["router_bce"].backward()
    assert all(float(r.weight.grad.abs().sum()) > 0 for r in router.aux_routers)
    assert all(r.weight.grad is None or float(r.weight.grad.abs().sum()) == 0 for r in router.routers)
    assert model.model.embed_tokens.weight.grad is None or float(model.model.embed_tokens.weight.grad.abs().sum()) == 0
    # causal decoding follows the auxiliary router's sign
    with torch.no_grad():
        for r in router.aux_routers:
            r.weight.zero_()
    model.eval()
    out = model(x, routing="causal")
    # zero logits: sigmoid = 0.5, not > 0.5, so nobody continues past the capacity-1 recursion
    assert out.router_stats["tokens_per_recursion"].tolist()[1:] == [0, 0]


def test_aux_router_parameter_count_and_round_trip(tmp_path):
    from depthmux.recursion import count_parameters_formula

    model = expert_model(2, mor_aux_router=True)
    assert count_parameters_formula(model.config) == sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp_path)
    loaded = load_recursive_model(tmp_path)
    assert loaded.config.mor_aux_router and loaded.model.router.aux_routers is not None
    torch.testing.assert_close(loaded.model.router.aux_routers[1].weight, model.model.router.aux_routers[1].weight)
    with pytest.raises(Exception, match="mor_aux_router"):
        RecursiveConfig(
            num_hidden_layers=4, num_recursions=2, sharing="middle_cycle", mor_router="token", mor_aux_router=True
        )
