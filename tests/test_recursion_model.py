"""Recursive / relaxed / MoR decoders (SPEC 3, SPEC 4): tying, causality, caching, routing, I/O."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import build_tiny_recursive
from depthmux.recursion import (
    RecursiveCache,
    RecursiveConfig,
    RecursiveForCausalLM,
    count_parameters_formula,
    expected_counts,
    kv_cache_entries,
    load_recursive_model,
)

VOCAB = 61

KINDS = {
    "vanilla": dict(sharing="none", num_hidden_layers=4, num_recursions=1),
    "cycle": dict(sharing="cycle", num_hidden_layers=4, num_recursions=2),
    "sequence_lora": dict(sharing="sequence", num_hidden_layers=4, num_recursions=2, relaxation_rank=3),
    "middle_cycle_lora": dict(sharing="middle_cycle", num_hidden_layers=6, num_recursions=2, relaxation_rank=2),
    "middle_sequence": dict(sharing="middle_sequence", num_hidden_layers=6, num_recursions=2),
    "cycle_share_kv": dict(sharing="cycle", num_hidden_layers=4, num_recursions=2, mor_kv="share_first"),
    "mor_expert": dict(sharing="middle_cycle", num_hidden_layers=8, num_recursions=3, mor_router="expert"),
    "mor_expert_share": dict(
        sharing="middle_cycle", num_hidden_layers=5, num_recursions=3, mor_router="expert", mor_kv="share_first"
    ),
    "mor_token": dict(sharing="middle_cycle", num_hidden_layers=8, num_recursions=3, mor_router="token"),
    "mor_token_share": dict(
        sharing="middle_cycle", num_hidden_layers=5, num_recursions=3, mor_router="token", mor_kv="share_first"
    ),
}


def tiny_config(**kw) -> RecursiveConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    base.update(kw)
    return RecursiveConfig(**base)


def tiny_model(kind: str, seed: int = 0, **kw) -> RecursiveForCausalLM:
    model = build_tiny_recursive(vocab_size=VOCAB, seed=seed, **{**KINDS[kind], **kw})
    with torch.no_grad():  # non-trivial LoRA and routers, so every code path matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
            if "router" in name:
                p.normal_(0, 1.0)
    return model.eval()


def assert_greedy_under_full_recompute(model, seq: torch.Tensor, prompt_len: int, tol: float = 1e-4) -> None:
    """Every generated token is the argmax (up to float ties) of a no-cache forward of its prefix."""
    with torch.no_grad():
        logits = model(seq, use_cache=False).logits.float()
    for t in range(prompt_len, seq.shape[1]):
        step = logits[:, t - 1]
        chosen = step.gather(1, seq[:, t : t + 1]).squeeze(1)
        assert bool((chosen >= step.max(-1).values - tol).all()), f"token {t} is not greedy"


def ids(B=2, T=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (B, T), generator=g)


# ------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_formula(kind, tied):
    model = tiny_model(kind, tie_word_embeddings=tied)
    assert count_parameters_formula(model.config) == sum(p.numel() for p in model.parameters())
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_schedules():
    c = tiny_config(sharing="cycle", num_hidden_layers=6, num_recursions=2)
    assert c.layer_schedule() == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    s = tiny_config(sharing="sequence", num_hidden_layers=6, num_recursions=2)
    assert s.layer_schedule() == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    mc = tiny_config(sharing="middle_cycle", num_hidden_layers=6, num_recursions=2)
    assert mc.layer_schedule() == [(0, -1), (1, 0), (2, 0), (1, 1), (2, 1), (3, -1)]
    ms = tiny_config(sharing="middle_sequence", num_hidden_layers=6, num_recursions=2)
    assert ms.layer_schedule() == [(0, -1), (1, 0), (1, 1), (2, 0), (2, 1), (3, -1)]
    assert tiny_config(sharing="none", num_hidden_layers=3).layer_schedule() == [(0, -1), (1, -1), (2, -1)]


@pytest.mark.parametrize("relax", [0, 2])
def test_weight_tying_is_real(relax):
    model = tiny_model("cycle", relaxation_rank=relax).train()
    cfg = model.config
    schedule = cfg.layer_schedule()
    assert len(model.model.layers) == cfg.block_size == 2
    for u in range(cfg.block_size):
        positions = [p for p, (uu, _) in enumerate(schedule) if uu == u]
        assert len(positions) == cfg.num_recursions
    w = model.model.layers[0].mlp.up_proj.weight
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert len(ptrs) == len(list(model.parameters()))  # no hidden copies
    before = w.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = ids()
    model(x, labels=x).loss.backward()
    opt.step()
    assert model.model.layers[0].mlp.up_proj.weight is w  # still the one tensor
    assert not torch.equal(before, w.detach())
    eff = [model.model.layers[0].mlp.up_proj.effective_weight(loop) for loop in range(cfg.num_recursions)]
    if relax == 0:
        for e in eff[1:]:
            assert torch.equal(e, eff[0])  # every tied position moved together
    else:  # LoRA deltas differ per loop; the shared base is still one tensor
        assert eff[0].shape == eff[1].shape


# ------------------------------------------------------------------------------------ causality
@pytest.mark.parametrize("kind", list(KINDS))
def test_causal_prefix_invariance(kind):
    model = tiny_model(kind)
    x = ids(T=12)
    with torch.no_grad():
        full = model(x, use_cache=False, routing="causal").logits
        for T in (3, 7):
            prefix = model(x[:, :T], use_cache=False, routing="causal").logits
            torch.testing.assert_close(prefix, full[:, :T], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["vanilla", "middle_cycle_lora", "mor_expert", "mor_token", "mor_expert_share"])
def test_packed_documents_do_not_attend_across(kind):
    model = tiny_model(kind)
    a, b = ids(1, 5, seed=3), ids(1, 7, seed=4)
    packed = torch.cat([a, b], 1)
    pos = torch.cat([torch.arange(5), torch.arange(7)])[None]
    with torch.no_grad():
        out = model(packed, position_ids=pos, routing="causal").logits
        la = model(a, routing="causal").logits
        lb = model(b, routing="causal").logits
    torch.testing.assert_close(out[:, :5], la, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 5:], lb, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ caching and generation
@pytest.mark.parametrize("kind", list(KINDS))
def test_incremental_decoding_matches_full_forward(kind):
    model = tiny_model(kind)
    x = ids(T=11)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        out = model(x[:, :4], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        assert isinstance(cache, RecursiveCache)
        for t in range(4, 11, 3):  # chunks of 3, then the rest
            out = model(x[:, t : t + 3], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.seq_len == 11


@pytest.mark.parametrize("kind", list(KINDS))
def test_generate_cache_equals_no_cache(kind):
    model = tiny_model(kind)
    x = ids(T=5)
    a = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=True)
    b = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=False)
    assert a.shape == (2, 11)
    assert_greedy_under_full_recompute(model, a, prompt_len=5)
    assert_greedy_under_full_recompute(model, b, prompt_len=5)
    if not torch.equal(a, b):  # only a float near-tie may split them; the checks above prove it
        assert torch.equal(a[:, :6], b[:, :6])


@pytest.mark.parametrize("kind", ["vanilla", "mor_expert", "mor_token"])
def test_generate_left_padding(kind):
    model = tiny_model(kind)
    x = ids(2, 6)
    mask = torch.ones_like(x)
    mask[1, :2] = 0
    out = model.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    alone = model.generate(x[1:, 2:], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1, 6:], alone[0, 4:])


# ------------------------------------------------------------------------------------ routing
@pytest.mark.parametrize("T", [12, 10])
def test_expert_choice_capacity_and_hierarchy(T):
    model = tiny_model("mor_expert").train()
    x = ids(3, T)
    out = model(x, labels=x)
    caps = model.config.capacities()
    assert caps == pytest.approx([1.0, 2 / 3, 1 / 3])
    k = expected_counts(caps, T)
    assert k == [math.floor(c * T + 1e-9) for c in caps]  # floor, as the public MoR code
    assert out.router_stats["tokens_per_recursion"].tolist() == [3 * kk for kk in k]
    assert out.router_stats["capacity_k"].tolist() == [k] * 3
    sel = out.router_stats["selected"]  # [B, N_r, T]
    assert sel.shape == (3, 3, T)
    assert bool((sel[:, 1:] <= sel[:, :-1]).all())  # hierarchical filtering
    agree = out.router_stats["causal_agreement"]
    assert agree.shape == (3,) and bool(((agree >= 0) & (agree <= 1)).all())
    for name in ("router_bce", "z_loss"):
        assert out.aux_losses[name].shape == () and torch.isfinite(out.aux_losses[name])
    z_coef = model.config.mor_z_loss_coef
    expected = out.lm_loss + 0.001 * out.aux_losses["router_bce"] + z_coef * out.aux_losses["z_loss"]
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    for r in model.model.router.routers:
        assert r.weight.grad is not None and torch.isfinite(r.weight.grad).all()


def test_expert_choice_custom_capacity_and_causal_rule():
    model = tiny_model("mor_expert", mor_capacity=[0.5, 0.5, 0.25]).train()
    out = model(ids(2, 8))
    assert out.router_stats["tokens_per_recursion"].tolist() == [8, 8, 4]
    model.eval()
    x = ids(2, 8)
    with torch.no_grad():
        out = model(x)  # eval: causal rule sigmoid(logit) > 0.5
    sel = out.router_stats["selected"]
    assert bool((sel[:, 1:] <= sel[:, :-1]).all())


def test_token_choice_losses_and_depths():
    model = tiny_model("mor_token").train()
    x = ids(2, 9)
    out = model(x, labels=x)
    stats = out.router_stats
    assert int(stats["tokens_per_depth"].sum()) == 18
    tpr = stats["tokens_per_recursion"].tolist()
    assert tpr[0] == 18 and tpr == sorted(tpr, reverse=True)
    assert set(out.aux_losses) == {"balance", "z_loss"}
    assert all(v.shape == () and torch.isfinite(v) for v in out.aux_losses.values())
    expected = out.lm_loss + 0.1 * out.aux_losses["balance"] + 1e-5 * out.aux_losses["z_loss"]
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.model.router.router.weight.grad is not None


# ------------------------------------------------------------------------------------ KV memory (SPEC 4)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_kv_memory_matches_spec(n):
    L = 2 + 2 * n
    rw = tiny_config(sharing="middle_cycle", num_hidden_layers=L, num_recursions=n, mor_router="expert")
    sf = tiny_config(
        sharing="middle_cycle", num_hidden_layers=L, num_recursions=n, mor_router="expert", mor_kv="share_first"
    )
    T = 12 * n
    assert kv_cache_entries(rw, T)["block_ratio"] == pytest.approx((n + 1) / (2 * n))
    assert kv_cache_entries(sf, T)["block_ratio"] == pytest.approx(1 / n)
    van = tiny_config(sharing="none", num_hidden_layers=L)
    assert kv_cache_entries(van, T)["ratio"] == 1.0


@pytest.mark.parametrize("kind", ["mor_expert", "mor_expert_share"])
def test_actual_cache_matches_kv_report(kind):
    model = tiny_model(kind).train()
    B, T = 2, 12
    with torch.no_grad():
        out = model(ids(B, T), use_cache=True, routing="topk")
    cfg = model.config
    rep = kv_cache_entries(cfg, T)
    held = out.past_key_values.entries_per_position()
    pre, K = cfg.num_prefix_layers, cfg.block_size
    block = sum(int(v.sum()) for p, v in held.items() if pre <= p < pre + cfg.num_recursions * K)
    assert block == B * rep["block"]
    assert out.past_key_values.num_entries() == B * rep["total"]


# ------------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("kind", ["middle_cycle_lora", "mor_expert", "mor_token"])
@pytest.mark.parametrize("tied", [True, False])
def test_save_load_round_trip(kind, tied, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(kind, tie_word_embeddings=tied)
    x = ids()
    with torch.no_grad():
        ref = model(x).logits
    model.save_pretrained(tmp_path)
    loaded = load_recursive_model(tmp_path).eval()
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, ref)
        assert torch.equal(auto(x).logits, ref)
    assert loaded.config.sharing == model.config.sharing
    assert loaded.config.mor_capacity == model.config.mor_capacity
