"""Smaller choices matched to the public MoR / RRT code (issue 7 item 4): capacity rounding,
stepwise-init rounding, exact truncated SVD for the relaxation."""

from __future__ import annotations

import pytest
import torch

from depthmux.recursion import capacity_k, convert_llama_to_recursive, expected_counts
from depthmux.recursion.conversion import stepwise_indices, svd_lora


# ------------------------------------------------------------------------------------ capacity
def test_capacity_is_floor_with_at_least_one_token():
    T = torch.tensor([0, 1, 2, 5, 10, 12])
    assert capacity_k(2 / 3, T).tolist() == [0, 1, 1, 3, 6, 8]  # 2/3 * 12 is exactly 8; ceil would give 7 at T=10
    assert capacity_k(1 / 3, T).tolist() == [0, 1, 1, 1, 3, 4]  # floor 0 (T = 1, 2) keeps 1 token
    assert capacity_k(1.0, T).tolist() == T.tolist()
    assert expected_counts([1.0, 2 / 3, 1 / 3], 10) == [10, 6, 3]
    assert expected_counts([1.0, 0.1, 0.1], 4) == [4, 1, 1]


def test_short_rows_keep_one_token_in_training(tiny_recursive_factory):
    model = tiny_recursive_factory(
        num_hidden_layers=5, num_recursions=3, mor_router="expert", mor_capacity=[1.0, 0.5, 0.25]
    ).train()
    x = torch.randint(0, 61, (2, 3), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[1, 0] = 0  # row 1 has 2 real tokens
    out = model(x, attention_mask=mask)
    assert out.router_stats["capacity_k"].tolist() == [[3, 1, 1], [2, 1, 1]]


# ------------------------------------------------------------------------------------ stepwise init
def test_stepwise_rounds_half_up():
    assert stepwise_indices(6, 3) == [0, 3, 5]  # 2.5 -> 3 (banker's round gives 2)
    assert stepwise_indices(4, 2) == [0, 3]
    assert stepwise_indices(7, 4) == [0, 2, 4, 6]
    assert stepwise_indices(10, 4) == [0, 3, 6, 9]
    assert stepwise_indices(5, 1) == [0]


def test_stepwise_middle_sharing_picks_layers_1_4_6(tiny_llama_factory):
    """L = 8, N_r = 2, middle-cycle: the 3 shared layers start from original layers 1, 4 and 6."""
    llama = tiny_llama_factory(num_hidden_layers=8).eval()
    with torch.no_grad():
        for layer in llama.model.layers:
            layer.input_layernorm.weight.fill_(1.0)  # no norm folding: compare raw weights
    model = convert_llama_to_recursive(llama, 2, sharing="middle_cycle", init="stepwise")
    assert model.config.block_size == 3
    for u, orig in zip((1, 2, 3), (1, 4, 6), strict=True):
        torch.testing.assert_close(
            model.model.layers[u].self_attn.q_proj.weight, llama.model.layers[orig].self_attn.q_proj.weight
        )


# ------------------------------------------------------------------------------------ SVD
@pytest.mark.parametrize("shape", [(300, 200), (64, 96)])
def test_svd_lora_is_the_exact_truncated_svd(shape):
    """Eckart-Young: the error of B @ A is exactly the tail of the singular values (a randomized
    SVD with a flat spectrum is measurably worse)."""
    residual = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    rank = 4
    A, B = svd_lora(residual, rank)
    assert A.shape == (rank, shape[1]) and B.shape == (shape[0], rank)
    S = torch.linalg.svdvals(residual)
    optimal = S[rank:].pow(2).sum().sqrt()
    err = torch.linalg.matrix_norm(residual - B @ A)
    assert abs(float(err) - float(optimal)) < 1e-4 * float(optimal)
