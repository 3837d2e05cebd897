"""Recursive / MoR models on a CUDA device (skipped without one): device placement, caches, bf16."""

from __future__ import annotations

import pytest
import torch

from test_recursion_model import KINDS, assert_greedy_under_full_recompute, ids, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("kind", list(KINDS))
def test_cuda_train_step_incremental_and_generate(kind):
    dev = torch.device("cuda")
    model = tiny_model(kind).to(dev).train()
    x = ids(3, 12).to(dev)
    mask = torch.ones_like(x)
    mask[2, :3] = 0
    out = model(x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        first = model(x[:, :5], use_cache=True)
        cache = first.past_key_values
        steps = [first.logits]
        for t in range(5, 12):
            o = model(x[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            steps.append(o.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
    a = model.generate(x[:, :6], max_new_tokens=6, do_sample=False, use_cache=True)
    b = model.generate(x[:, :6], max_new_tokens=6, do_sample=False, use_cache=False)
    assert a.device.type == "cuda" and a.shape == b.shape == (3, 12)
    assert_greedy_under_full_recompute(model, a, prompt_len=6)
    assert_greedy_under_full_recompute(model, b, prompt_len=6)


@cuda
@pytest.mark.parametrize("kind", ["vanilla", "middle_cycle_lora", "mor_expert", "mor_token_share"])
def test_cuda_bf16(kind):
    model = tiny_model(kind).to("cuda", torch.bfloat16).eval()
    x = ids(2, 16).cuda()
    with torch.no_grad():
        out = model(x, labels=x)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    gen = model.generate(x[:, :4], max_new_tokens=5, do_sample=False)
    assert gen.shape == (2, 9)
