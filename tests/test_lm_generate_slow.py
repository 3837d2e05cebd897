"""Slow: the engine's greedy tokens on the real models (SPEC 5) equal transformers ``generate`` for
SmolLM2-135M and the saved SmolLM2 MoR model's own token-by-token causal decode (``depthmux lm build-mor``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from depthmux.engine import LLM, SamplingParams
from depthmux.lm import HFCausalLMAdapter, load_lm, load_saved_tokenizer, pretrained_model_dir
from depthmux.recipes.mor_smollm2 import DEFAULT_MOR_DIR
from depthmux.recursion import RecursiveCache

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "To be, or not to be, that is the question:",
    "The capital of France is",
    "Once upon a time, in a land far away, there lived a king who had three daughters. The youngest",
    "def fibonacci(n):",
    "Friends, Romans, countrymen,",
    "1, 2, 3, 4,",
]
NEW = [10, 6, 12, 9, 7, 11]


def staggered(llm: LLM, ids: list[list[int]]) -> list[list[int]]:
    """Two requests first, then one more per step while the others run."""
    rids = [llm.add_request(p, SamplingParams(max_new_tokens=NEW[i])) for i, p in enumerate(ids[:2])]
    rest = list(enumerate(ids))[2:]
    while llm.has_unfinished_requests() or rest:
        if rest:
            i, p = rest.pop(0)
            rids.append(llm.add_request(p, SamplingParams(max_new_tokens=NEW[i])))
        llm.step()
    return [llm.output(r).token_ids for r in rids]


@torch.no_grad()
def test_engine_equals_hf_generate_for_smollm2():
    d = pretrained_model_dir("smollm2")
    lm, tok = load_lm(d), load_saved_tokenizer(d)
    hf = lm.model if isinstance(lm, HFCausalLMAdapter) else lm
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    want = []
    for p, n in zip(ids, NEW, strict=True):
        out = hf.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tok.pad_token_id or 0,
        )
        want.append(out[0, len(p) :].tolist())
    for policy in ("depthwise", "lockstep"):
        assert staggered(LLM(hf, depth_policy=policy, max_batch_items=4), ids) == want


@torch.no_grad()
def test_engine_equals_the_mor_models_own_causal_decode():
    folder = REPO / DEFAULT_MOR_DIR
    if not (folder / "model").is_dir():
        pytest.skip(f"no MoR model in {folder}: create it with `depthmux lm build-mor`")
    model, tok = load_lm(folder / "model"), load_saved_tokenizer(folder / "model")
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    eos = model.config.eos_token_id
    want = []
    for p, n in zip(ids, NEW, strict=True):
        out = model(torch.tensor([p]), cache=RecursiveCache(), use_cache=True, routing="causal")
        tokens = []
        for _ in range(n):
            t = int(out.logits[0, -1].argmax())
            tokens.append(t)
            if t == eos:
                break
            out = model(torch.tensor([[t]]), cache=out.cache, use_cache=True, routing="causal")
        want.append(tokens)
    for policy in ("depthwise", "lockstep"):
        llm = LLM(model, depth_policy=policy, max_batch_items=4)
        assert staggered(llm, ids) == want
        assert llm.stats.computed_exited == 0
