"""Engine decode = the model's own decode (SPEC 5): greedy tokens identical to transformers ``generate``
(tiny LLaMA, served through the lossless conversion) and to token-by-token causal decoding of
recursive and MoR models, for 32 prompts arriving while others run, both depth policies."""

from __future__ import annotations

import pytest
import torch

from depthmux.engine import LLM, SamplingParams
from depthmux.recursion import RecursiveCache, TokenContext

VOCAB = 61
N_PROMPTS = 32
MODELS = {
    "recursive_lora": dict(num_hidden_layers=6, num_recursions=2, relaxation_rank=2),
    "expert": dict(num_hidden_layers=8, num_recursions=3, mor_router="expert"),
    "expert_share_kv": dict(num_hidden_layers=8, num_recursions=3, mor_router="expert", mor_kv="share_first"),
    "token": dict(num_hidden_layers=8, num_recursions=3, mor_router="token"),
    "token_share_kv": dict(num_hidden_layers=8, num_recursions=3, mor_router="token", mor_kv="share_first"),
}
_REFERENCE: dict[str, list[list[int]]] = {}


def make(factory, kind: str):
    model = factory(vocab_size=VOCAB, max_position_embeddings=96, **MODELS[kind]).eval()
    with torch.no_grad():  # decisive routers (tokens exit at every depth) and non-trivial LoRA
        for name, p in model.named_parameters():
            if "router" in name:
                p.normal_(0, 1.0)
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def prompts(n: int = N_PROMPTS, vocab: int = VOCAB, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 41, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (t,), generator=g).tolist() for t in lengths]


def max_new(i: int) -> int:
    return 3 + (i * 7) % 12


@torch.no_grad()
def own_decode(model, prompt: list[int], n: int, stops: set[int]) -> list[int]:
    """The model's token-by-token causal decode with its own RecursiveCache (greedy)."""
    cache = RecursiveCache()
    out = model(torch.tensor([prompt]), cache=cache, use_cache=True, routing="causal")
    tokens: list[int] = []
    for _ in range(n):
        t = int(out.logits[0, -1].argmax())
        tokens.append(t)
        if t in stops:
            break
        out = model(torch.tensor([[t]]), cache=out.cache, use_cache=True, routing="causal")
    return tokens


class BlockRowCounter:
    """Counts the tokens entering the model's shared block by wrapping its public stage ``run_block``
    (every call: the engine's decode rows, and the prefill's compacted chunks through ``recursion``).
    A decode call ([n, 1, d]) counts every row, whatever it writes; a prefill call counts its real
    tokens (``ctx.write``; compaction pads rows to the longest)."""

    def __init__(self, model):
        self.rows = 0
        self.body, self.inner = model.model, model.model.run_block

        def counted(h: torch.Tensor, r: int, ctx: TokenContext) -> torch.Tensor:
            self.rows += h.shape[0] if h.shape[1] == 1 else int(ctx.write.sum())
            return self.inner(h, r, ctx)

        self.body.run_block = counted

    def remove(self) -> None:
        del self.body.run_block


def block_rows_wanted(model, ps: list[list[int]], outs: list[list[int]]) -> int:
    """The (token, recursion) pairs the causal router asks for: a full forward over each finished
    sequence (its last token never entered) counts them."""
    with torch.no_grad():
        return sum(
            int(
                model(torch.tensor([p + o[:-1]]), use_cache=False, routing="causal")
                .router_stats["tokens_per_recursion"]
                .sum()
            )
            for p, o in zip(ps, outs, strict=True)
        )


def run_staggered(llm: LLM, ps: list[list[int]], first: int = 6) -> list[list[int]]:
    """Submit ``first`` requests, then one more at every step while the others run."""
    ids = [llm.add_request(p, SamplingParams(max_new_tokens=max_new(i))) for i, p in enumerate(ps[:first])]
    rest = list(enumerate(ps))[first:]
    while llm.has_unfinished_requests() or rest:
        if rest:
            i, p = rest.pop(0)
            ids.append(llm.add_request(p, SamplingParams(max_new_tokens=max_new(i))))
        llm.step()
    return [llm.output(r).token_ids for r in ids]


@pytest.mark.parametrize("policy", ["depthwise", "lockstep"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_engine_matches_the_models_own_causal_decode(tiny_recursive_factory, kind, policy):
    model = make(tiny_recursive_factory, kind)
    ps = prompts()
    stops = {model.config.eos_token_id} if model.config.eos_token_id is not None else set()
    if kind not in _REFERENCE:
        _REFERENCE[kind] = [own_decode(model, p, max_new(i), stops) for i, p in enumerate(ps)]
    llm = LLM(model, depth_policy=policy, max_batch_items=5, max_prefill_tokens=48)
    counter = BlockRowCounter(model)
    try:
        got = run_staggered(llm, ps)
    finally:
        counter.remove()
    assert got == _REFERENCE[kind]
    s = llm.stats
    assert s.max_decode_block_items <= 5 and s.max_prefill_block_tokens <= 48
    assert s.computed_exited == 0 and s.kv_bytes_in_use == 0 and s.kv_bytes_peak > 0
    # the shared block computed exactly the (token, recursion) pairs the causal router asks for, counted
    # at the model's own stage (not by the runner's counters)
    want = block_rows_wanted(model, ps, got)
    assert counter.rows == want and s.block_items == want
    if kind != "recursive_lora":
        assert s.skipped_recursions > 0 and 1.0 < s.average_depth() < 3.0  # tokens exited early, never computed


@pytest.mark.parametrize("policy", ["depthwise", "lockstep"])
def test_the_block_row_check_catches_exited_rows_run_on_purpose(tiny_recursive_factory, policy):
    """Mutation: every decode block call also runs its rows a second time, writing no KV and discarding
    the result (as a runner that masks exited rows instead of skipping them would). Tokens and the
    runner's own counters are unchanged, the count at the model's stage is not."""
    model = make(tiny_recursive_factory, "expert_share_kv")
    ps = prompts(n=12)
    ref = run_staggered(LLM(model, depth_policy=policy, max_batch_items=5, max_prefill_tokens=48), ps)
    counter = BlockRowCounter(model)
    counted = model.model.run_block

    def wasteful(h: torch.Tensor, r: int, ctx: TokenContext) -> torch.Tensor:
        if h.shape[1] == 1:
            counted(h, r, TokenContext(**{**ctx.__dict__, "write": torch.zeros_like(ctx.write)}))
        return counted(h, r, ctx)

    model.model.run_block = wasteful
    llm = LLM(model, depth_policy=policy, max_batch_items=5, max_prefill_tokens=48)
    try:
        got = run_staggered(llm, ps)
    finally:
        counter.remove()
    want = block_rows_wanted(model, ps, got)
    assert got == ref and llm.stats.block_items == want  # what the old check read: blind to the waste
    assert counter.rows > want  # the stage count sees it


@pytest.mark.parametrize("policy", ["depthwise", "lockstep"])
def test_engine_matches_transformers_generate_for_llama(tiny_llama_factory, policy):
    hf = tiny_llama_factory(vocab_size=64, seed=3, max_position_embeddings=96).eval()
    ps = prompts(vocab=64, seed=2)
    want = []
    with torch.no_grad():
        for i, p in enumerate(ps):
            out = hf.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=max_new(i),
                do_sample=False,
                pad_token_id=0,
            )
            want.append(out[0, len(p) :].tolist())
    llm = LLM(hf, depth_policy=policy, max_batch_items=6, max_prefill_tokens=40)
    assert run_staggered(llm, ps) == want


def test_cancel_mid_generation_frees_kv_and_leaves_the_others_unchanged(tiny_recursive_factory):
    model = make(tiny_recursive_factory, "expert")
    ps = prompts(n=8)
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    ref = LLM(model, max_batch_items=4).generate(ps, params)
    llm = LLM(model, max_batch_items=4)
    ids = [llm.add_request(p, params) for p in ps]
    for _ in range(6):
        llm.step()
    victim = ids[2]
    assert 0 < len(llm.output(victim).token_ids) < 12
    held = llm.kv.bytes_in_use
    assert llm.abort_request(victim)
    assert llm.kv.bytes_in_use < held and not llm.kv.entries(victim)
    while llm.has_unfinished_requests():
        llm.step()
    out = llm.output(victim)
    assert out.finished and out.finish_reason == "abort"
    for rid, r in zip(ids, ref, strict=True):
        if rid != victim:
            assert llm.output(rid).token_ids == r.token_ids
    assert llm.kv.bytes_in_use == 0


@pytest.mark.parametrize("policy", ["depthwise", "lockstep"])
def test_tight_budget_preempts_and_recomputes_with_identical_tokens(tiny_recursive_factory, policy):
    # small declared capacities: the scheduler reserves little, the causal router sends more tokens deep
    model = tiny_recursive_factory(
        vocab_size=VOCAB,
        max_position_embeddings=96,
        num_hidden_layers=8,
        num_recursions=3,
        mor_router="expert",
        mor_capacity=[1.0, 0.1, 0.05],
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router" in name:
                p.normal_(0.3, 1.0)
    ps = prompts(n=10)
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    ref = LLM(model).generate(ps, params)
    # admission at the capacity fractions (0.1, 0.05) under-reserves for routers that send more tokens
    # deep: a tight budget (1.5 reservations of the longest request) runs out, so a later request is
    # preempted and recomputed (prefill chunks alone would only wait for pages)
    budget = int(1.5 * LLM(model).kv.spec.reservation_bytes(50))
    llm = LLM(model, depth_policy=policy, kv_budget_bytes=budget, max_prefill_tokens=64)
    llm.kv.MEASURE_AFTER = 10**9  # keep the expected fractions (never switch to the measured ones)
    got = llm.generate(ps, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    assert llm.stats.preemptions > 0
    assert llm.kv.arena.allocated_bytes() <= budget and llm.kv.pages_in_use() == 0
    # the measured fractions are what the routing really wrote, above the capacities here
    measuring = LLM(model, depth_policy=policy, kv_budget_bytes=budget, max_prefill_tokens=64)
    assert [o.token_ids for o in measuring.generate(ps, params)] == [o.token_ids for o in ref]
    measured = measuring.kv.stream_fractions()
    assert measured != measuring.kv.spec.stream_fractions and measured[1] > 0.1 and measured[0] == 1.0
    assert measuring.kv.reservation_bytes(50) > measuring.kv.spec.reservation_bytes(50)
    assert llm.kv.peak_bytes <= budget and llm.stats.kv_bytes_in_use == 0


def test_sampling_is_seeded_per_request_and_stop_tokens_end_requests(tiny_recursive_factory):
    model = make(tiny_recursive_factory, "token")
    ps = prompts(n=4)
    sp = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.8, seed=11, ignore_eos=True)
    a = LLM(model).generate(ps, sp)
    b = LLM(model, max_batch_items=2).generate(ps[:1] + [[5, 6, 7]] * 3 + ps[1:], sp)
    assert a[0].token_ids == b[0].token_ids and all(len(o.token_ids) == 8 for o in a)
    greedy = LLM(model).generate(ps[0], SamplingParams(max_new_tokens=8, ignore_eos=True))[0].token_ids
    stop = greedy[3]
    out = LLM(model).generate(ps[0], SamplingParams(max_new_tokens=8, stop_token_ids=(stop,), ignore_eos=True))[0]
    assert out.token_ids == greedy[: greedy.index(stop) + 1] and out.finish_reason == "stop"


def test_stream_yields_every_token_once(tiny_recursive_factory):
    model = make(tiny_recursive_factory, "expert")
    ps = prompts(n=3)
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    llm = LLM(model)
    seen: dict[str, list[int]] = {}
    for out in llm.stream(ps, params):
        seen.setdefault(out.request_id, []).extend(out.new_token_ids)
    ref = LLM(model).generate(ps, params)
    assert sorted(seen.values()) == sorted(o.token_ids for o in ref)


def test_outputs_carry_the_engines_admission_time(tiny_recursive_factory):
    """``scheduled_time`` is when the scheduler first admitted a request: with one running sequence the
    second request waits for the first to finish, and the queue time is arrival -> admission."""
    model = make(tiny_recursive_factory, "expert")
    llm = LLM(model, max_num_seqs=1)
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    a, b = (llm.add_request(p, params) for p in prompts(n=2))
    while llm.has_unfinished_requests():
        llm.step()
    oa, ob = llm.output(a), llm.output(b)
    for o in (oa, ob):
        assert o.arrival_time <= o.scheduled_time <= o.first_token_time <= o.finish_time
    assert ob.scheduled_time >= oa.finish_time  # it queued behind the only running sequence
    assert ob.scheduled_time - ob.arrival_time > oa.scheduled_time - oa.arrival_time
