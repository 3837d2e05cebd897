"""The recursive model declares its own cost (utils.flops) and parameter counts."""

from __future__ import annotations

import pytest
import torch

from depthmux.recursion import RelaxedLinear, count_parameters_formula
from depthmux.utils.flops import FlopCounter

VOCAB = 61
D_MODEL, INTER, HEADS, KV_HEADS = 32, 48, 4, 2
HEAD_DIM = D_MODEL // HEADS


def linear_macs_per_token(with_kv: bool = True) -> int:
    """Multiply-adds of one decoder layer's linears for one token (k/v projections optional)."""
    d, D = D_MODEL, HEAD_DIM
    attn = d * HEADS * D + HEADS * D * d + (2 * d * KV_HEADS * D if with_kv else 0)
    return attn + 3 * d * INTER


def test_relaxed_linear_counts_lora_rows_only_when_active():
    lin = RelaxedLinear(16, 24, num_loops=2, rank=3)
    x = torch.randn(2, 5, 16)
    with FlopCounter() as plain:
        lin(x)  # loop -1: the shared weight only
    with FlopCounter() as relaxed:
        lin(x, loop=1)
    assert plain.flops == 2 * 10 * 16 * 24
    assert relaxed.flops == 2 * 10 * (16 * 24 + 3 * (16 + 24))


def test_no_counting_outside_a_counter(tiny_recursive_factory):
    model = tiny_recursive_factory(vocab_size=VOCAB, sharing="none", num_hidden_layers=2, num_recursions=1)
    x = torch.randint(0, VOCAB, (1, 4))
    with torch.no_grad():
        model(x)  # no counter: nothing to add to
        with FlopCounter() as fc:
            model(x)
    assert fc.flops > 0


@pytest.mark.parametrize("packed", [False, True])
def test_vanilla_forward_flops_equal_the_closed_form(tiny_recursive_factory, packed):
    L, B, T = 3, 2, 10
    model = tiny_recursive_factory(vocab_size=VOCAB, sharing="none", num_hidden_layers=L, num_recursions=1).eval()
    x = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(0))
    docs = [4, 6] if packed else [T]  # document lengths in each row
    pos = torch.cat([torch.arange(n) for n in docs])[None].expand(B, T)
    with torch.no_grad(), FlopCounter() as fc:
        model(x, position_ids=pos, use_cache=False)
    pairs = B * sum(n * (n + 1) // 2 for n in docs)  # causal pairs inside each document
    body = L * (2 * B * T * linear_macs_per_token() + 4 * pairs * HEADS * HEAD_DIM)
    head = 2 * B * T * D_MODEL * VOCAB
    assert fc.flops == body + head
    assert fc.non_embedding_macs == body / 2


def test_shared_kv_recursion_counts_queries_times_all_visible_keys(tiny_recursive_factory):
    """Recursive KV sharing: a query at recursion 2 reads every earlier key of recursion 1's cache
    (t + 1 keys at position t), not only the keys of the tokens routed with it (SPEC 4)."""
    B, T = 2, 12
    model = tiny_recursive_factory(
        vocab_size=VOCAB,
        num_hidden_layers=4,
        num_recursions=2,
        mor_router="expert",
        mor_kv="share_first",
        mor_capacity=[1.0, 0.5],
    ).train()
    with torch.no_grad():
        for r in model.model.router.routers:
            r.weight.normal_(0, 1.0)
    x = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), FlopCounter() as fc:
        out = model(x, use_cache=False)
    sel = out.router_stats["selected"]  # [B, N_r, T]
    second = sel[:, 1]
    M = int(second.sum(1).max())
    assert second.sum(1).tolist() == [6, 6]
    full_layer = 2 * B * T * linear_macs_per_token() + 4 * B * (T * (T + 1) // 2) * HEADS * HEAD_DIM
    visible = int((torch.arange(T)[None] + 1).expand(B, T)[second].sum())  # keys seen by each routed query
    assert visible > B * M * (M + 1) // 2  # more than attention among the routed tokens only
    # recursion 2 reads recursion 1's keys: no k/v projections, attention over every visible key
    shared_step = 2 * B * M * linear_macs_per_token(with_kv=False) + 4 * visible * HEADS * HEAD_DIM
    routers = 2 * (2 * B * T * D_MODEL)  # one d -> 1 router per recursion, on every token
    head = 2 * B * T * D_MODEL * VOCAB
    assert fc.flops == 3 * full_layer + shared_step + routers + head  # prefix, recursion 1, suffix


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize(
    "overrides",
    [dict(sharing="none", num_recursions=1), dict(relaxation_rank=2, mor_router="expert", mor_aux_router=True)],
)
def test_parameter_counts(tiny_recursive_factory, tied, overrides):
    model = tiny_recursive_factory(vocab_size=VOCAB, num_hidden_layers=4, tie_word_embeddings=tied, **overrides)
    counts = model.parameter_counts()
    assert counts["total"] == count_parameters_formula(model.config) == sum(p.numel() for p in model.parameters())
    assert counts["embedding"] == VOCAB * D_MODEL * (1 if tied else 2)
    assert counts["non_embedding"] == counts["total"] - counts["embedding"]
