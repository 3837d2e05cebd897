"""Early-exit decoding in the engine (SPEC 2, SPEC 5), on a tiny LLaMA converted with a shallow exit:
threshold 1.0 = deep greedy; synchronized parallel decoding batches rows with different numbers of kept
tokens and leaves the deep KV equal to a full recompute; self-speculative decoding = deep greedy on 32
prompts (KV equal to a recompute, rejected drafts cut) and its sampling acceptance rule keeps the target
distribution; the adaptive threshold moves; bad input is one line. With a learned confidence head (CALM's
early-exit classifier): threshold 1.0 = deep greedy, the output equals a recompute-per-token reference, the
deep KV equals a full recompute, and rows that do not exit never compute the LM head on their shallow state."""

from __future__ import annotations

import pytest
import torch

from depthmux.early_exit import AdaptiveThreshold, from_llama, top2_margin
from depthmux.engine import MAIN, SamplingParams
from depthmux.engine.early_exit import EarlyExitLLM, EarlyExitPolicy, speculative_accept
from depthmux.errors import DepthmuxError
from depthmux.recursion import RecursiveCache

VOCAB = 64
N_PROMPTS = 32


def ee_model(factory, exit_layer: int = 2, layers: int = 4, seed: int = 3):
    """A tiny LLaMA with a shallow exit; its (untied) LM head is scaled so that confidences spread over [0, 1]."""
    model = from_llama(
        factory(vocab_size=VOCAB, num_hidden_layers=layers, max_position_embeddings=96, seed=seed),
        exit_layer=exit_layer,
    )
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model.eval()


def prompts(n: int = N_PROMPTS, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 41, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (t,), generator=g).tolist() for t in lengths]


def max_new(i: int) -> int:
    return 3 + (i * 7) % 12


@torch.no_grad()
def deep_greedy(model, prompt: list[int], n: int) -> list[int]:
    """The deep model's token-by-token greedy decode with its own RecursiveCache."""
    out = model(torch.tensor([prompt]), cache=RecursiveCache(), use_cache=True)
    tokens: list[int] = []
    for _ in range(n):
        tokens.append(int(out.logits[0, -1].argmax()))
        out = model(torch.tensor([tokens[-1:]]), cache=out.cache, use_cache=True)
    return tokens


def run_staggered(llm, ps: list[list[int]], first: int = 6) -> list[list[int]]:
    """Submit ``first`` requests, then one more at every step while the others run."""

    def params(i):
        return SamplingParams(max_new_tokens=max_new(i), ignore_eos=True)

    ids = [llm.add_request(p, params(i)) for i, p in enumerate(ps[:first])]
    rest = list(enumerate(ps))[first:]
    while llm.has_unfinished_requests() or rest:
        if rest:
            i, p = rest.pop(0)
            ids.append(llm.add_request(p, params(i)))
        llm.step()
    return [llm.output(r).token_ids for r in ids]


@pytest.fixture
def model_and_reference(tiny_llama_factory):
    model = ee_model(tiny_llama_factory)
    ps = prompts()
    return model, ps, [deep_greedy(model, p, max_new(i)) for i, p in enumerate(ps)]


def median_confidence(model, ps) -> float:
    with torch.no_grad():
        conf = torch.cat([top2_margin(model(torch.tensor([p]), return_shallow=True).shallow_logits[0]) for p in ps])
    return float(conf.median())


def test_threshold_one_exits_nothing_and_equals_deep_greedy(model_and_reference):
    model, ps, ref = model_and_reference
    llm = EarlyExitLLM(model, policy=EarlyExitPolicy(threshold=1.0), max_batch_items=6, max_prefill_tokens=48)
    assert run_staggered(llm, ps) == ref
    st = llm.early_exit_stats
    assert st.exited_tokens == 0 and st.deep_passes == st.shallow_tokens > 0 and llm.kv.bytes_in_use == 0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_self_speculative_equals_deep_greedy(model_and_reference, k):
    model, ps, ref = model_and_reference
    llm = EarlyExitLLM(
        model, policy=EarlyExitPolicy(mode="speculative", draft_tokens=k), max_batch_items=6, max_prefill_tokens=48
    )
    assert run_staggered(llm, ps) == ref
    st = llm.early_exit_stats
    assert 0 < st.accepted_tokens < st.drafted_tokens  # drafts were both accepted and rejected
    assert llm.kv.bytes_in_use == 0


def test_stream_yields_every_accepted_draft_once(model_and_reference):
    model, ps, ref = model_and_reference
    llm = EarlyExitLLM(model, policy=EarlyExitPolicy(mode="speculative", draft_tokens=4))
    seen: dict[str, list[int]] = {}
    steps_with_several = 0
    for out in llm.stream(ps[:6], [SamplingParams(max_new_tokens=max_new(i), ignore_eos=True) for i in range(6)]):
        seen.setdefault(out.request_id, []).extend(out.new_token_ids)
        steps_with_several += len(out.new_token_ids) > 1
    assert list(seen.values()) == ref[:6] and steps_with_several > 0


def paged(llm, rid: str, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` K and V entries of a request's main stream at ``layer``: [n, H_kv, D] twice."""
    k, v = llm.kv.stream_kv(rid, MAIN, layer)
    return k[:n], v[:n]


@torch.no_grad()
def check_kv_against_recompute(llm, model) -> int:
    """Every running request's KV equals a full forward over the tokens that entered: all of them at the
    shallow layers, those before the first kept token at the deep layers. Returns the deep entries checked."""
    checked = 0
    for req in llm.scheduler.running:
        n = req.num_computed
        if n == 0:
            continue
        cache = RecursiveCache()
        model(torch.tensor([req.all_token_ids[:n]]), cache=cache, use_cache=True)
        kept = llm.runner.kept.get(req.request_id)
        n_deep = kept.positions[0] if kept is not None and kept.positions else n
        assert llm.kv.lengths[(req.request_id, MAIN)] == n  # rejected drafts were cut
        for p in range(model.config.num_hidden_layers):
            m = n if p < model.config.exit_layer else n_deep
            k, v = paged(llm, req.request_id, p, m)
            ref_k = cache.layers[p].k[0, :, :m].transpose(0, 1)
            ref_v = cache.layers[p].v[0, :, :m].transpose(0, 1)
            assert (k - ref_k).abs().max() < 1e-4 and (v - ref_v).abs().max() < 1e-4, (req.request_id, p)
        checked += n_deep
    return checked


@pytest.mark.parametrize("mode", ["exit", "exit_bounded", "speculative", "exit_head"])
def test_deep_kv_equals_a_full_recompute(model_and_reference, mode):
    model, ps, _ = model_and_reference
    if mode == "exit_bounded":  # every token is confident enough, but at most 2 are kept: forced deep passes
        policy = EarlyExitPolicy(threshold=0.0, max_kept=2)
    elif mode == "exit_head":
        model = with_head(model)
        policy = EarlyExitPolicy(threshold=head_threshold(model, ps[:8]))
    else:
        policy = EarlyExitPolicy(mode=mode, threshold=median_confidence(model, ps[:8]), draft_tokens=3)
    llm = EarlyExitLLM(model, policy=policy, max_batch_items=8)
    for p in ps[:8]:
        llm.add_request(p, SamplingParams(max_new_tokens=40, ignore_eos=True))
    checked = 0
    while llm.has_unfinished_requests():
        llm.step()
        checked += check_kv_against_recompute(llm, model)
    st = llm.early_exit_stats
    assert checked > 0
    if mode in ("exit", "exit_head"):
        assert st.exited_tokens > 0 and st.max_kept >= 2  # deep passes filled in several kept tokens
    if mode == "exit_bounded":
        # 39 decode steps per request (the first token comes from the prefill): exit, exit, deep, ... 13 times
        assert st.max_kept == 2 and st.exited_tokens == 2 * st.deep_passes == 8 * 26


def test_synchronized_parallel_decoding_batches_rows_with_different_kept_counts(model_and_reference):
    model, ps, ref = model_and_reference
    calls: list[list[int]] = []
    deep = model.deep

    def counting_deep(h, ctx):
        calls.append(ctx.write.long().sum(1).tolist())
        return deep(h, ctx)

    policy = EarlyExitPolicy(threshold=median_confidence(model, ps[:8]), measure=True)
    llm = EarlyExitLLM(model, policy=policy, max_batch_items=8)
    model.deep = counting_deep
    try:
        outs = llm.generate(ps[:8], SamplingParams(max_new_tokens=20, ignore_eos=True))
    finally:
        del model.deep
    decode_calls = calls  # prefill runs the whole model through the engine's own stages, not model.deep
    assert any(len(c) > 1 and len(set(c)) > 1 for c in decode_calls)  # one pass, several rows, ragged
    assert len(decode_calls) <= llm.stats.steps  # at most one deep call per step, never one per sequence
    st = llm.early_exit_stats
    assert st.deep_passes == sum(len(c) for c in decode_calls) and st.deep_tokens == sum(map(sum, decode_calls))
    assert st.verified_exits > 0 and 0.0 <= st.wrong_exit_rate() <= 1.0
    assert [o.token_ids[0] for o in outs] == [r[0] for r in ref[:8]]  # the first token comes from the deep prefill


def test_adaptive_threshold_moves_from_its_initial_value(model_and_reference):
    model, ps, _ = model_and_reference
    adaptive = AdaptiveThreshold(0.2, initial=1.0, min_pairs=16)
    llm = EarlyExitLLM(model, policy=EarlyExitPolicy(adaptive=adaptive), max_batch_items=8)
    llm.generate(ps[:16], SamplingParams(max_new_tokens=16, ignore_eos=True))
    st = llm.early_exit_stats
    assert st.thresholds[0] == 1.0 and st.thresholds[-1] < 1.0 and st.exited_tokens > 0
    assert adaptive.seen >= 16 and st.verified_exits > 0


def test_sampling_in_exit_mode_is_seeded(model_and_reference):
    model, ps, _ = model_and_reference
    sp = SamplingParams(max_new_tokens=10, temperature=0.8, seed=7, ignore_eos=True)
    policy = EarlyExitPolicy(threshold=median_confidence(model, ps[:4]))
    a = EarlyExitLLM(model, policy=policy).generate(ps[:4], sp)
    b = EarlyExitLLM(model, policy=policy).generate(ps[:4], sp)
    assert [o.token_ids for o in a] == [o.token_ids for o in b] and all(len(o.token_ids) == 10 for o in a)


def one_line(excinfo) -> str:
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_a_model_without_an_exit_head_is_one_line(tmp_path, tiny_recursive_factory, tiny_llama_factory):
    with pytest.raises(DepthmuxError, match="needs a model with a shallow exit") as e:
        EarlyExitLLM(tiny_recursive_factory())
    one_line(e)
    with pytest.raises(DepthmuxError, match="needs a model with a shallow exit"):
        EarlyExitLLM(tiny_llama_factory())
    tiny_llama_factory().save_pretrained(tmp_path)
    with pytest.raises(DepthmuxError, match="needs a model with a shallow exit") as e:
        EarlyExitLLM.from_pretrained(tmp_path)
    one_line(e)


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        (dict(threshold=1.5), "exit threshold must be a finite number in"),
        (dict(threshold=-0.1), "exit threshold must be a finite number in"),
        (dict(threshold=float("nan")), "exit threshold must be a finite number in"),
        (dict(mode="sometimes"), "early-exit mode must be one of exit, speculative"),
        (dict(mode="speculative", draft_tokens=0), "draft tokens k must be an integer >= 1"),
        (dict(max_kept=0), "max kept tokens must be an integer >= 1"),
        (dict(confidence="sure"), "exit confidence must be one of margin, head"),
        (dict(confidence="head"), "needs a model with a trained confidence head"),
    ],
)
def test_bad_policies_are_one_line(model_and_reference, policy, match):
    model, _, _ = model_and_reference
    with pytest.raises(DepthmuxError, match=match) as e:
        EarlyExitLLM(model, policy=EarlyExitPolicy(**policy))
    one_line(e)


# -- the learned exit confidence (CALM's early-exit classifier, issue 19 point 3) --------------------------


def with_head(model, seed: int = 5):
    """A copy of ``model`` with a confidence head of random weights (logits spread over about +-3)."""
    import copy

    m = copy.deepcopy(model)
    head = m.attach_exit_head()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        d = head.linear.in_features
        head.linear.weight.copy_(torch.randn(1, d, generator=g) * 3.0 / d**0.5)
    return m.eval()


@torch.no_grad()
def head_confidences(model, ps) -> torch.Tensor:
    out = []
    for p in ps:
        ids = torch.tensor([p])
        ctx = model.model.make_context(ids, None, None, RecursiveCache())
        out.append(model.head_confidence(model.shallow(model.model.embed(ids), ctx))[0])
    return torch.cat(out)


def head_threshold(model, ps) -> float:
    """Half-way between the two middle head confidences of the prompts' tokens (no token sits on it)."""
    c = head_confidences(model, ps).sort().values
    k = c.numel() // 2
    return float((c[k - 1] + c[k]) / 2)


@torch.no_grad()
def head_reference(model, prompt: list[int], n: int, threshold: float) -> list[int]:
    """Token by token with a full recompute: the first token from the deep model (the prefill), then the
    shallow argmax where the head's confidence of the last token is above ``threshold``, else the deep one."""
    seq, out = list(prompt), []
    for i in range(n):
        ids = torch.tensor([seq])
        ctx = model.model.make_context(ids, None, None, RecursiveCache())
        h_s = model.shallow(model.model.embed(ids), ctx)
        if i > 0 and float(model.head_confidence(h_s[0, -1])) > threshold:
            t = int(model.exit_logits(h_s[:, -1:])[0, -1].argmax())
        else:
            t = int(model.exit_logits(model.deep(h_s, ctx))[0, -1].argmax())
        out.append(t)
        seq.append(t)
    return out


def test_head_threshold_one_exits_nothing_and_equals_deep_greedy(model_and_reference):
    model, ps, ref = model_and_reference
    model = with_head(model)
    llm = EarlyExitLLM(model, policy=EarlyExitPolicy(threshold=1.0), max_batch_items=6, max_prefill_tokens=48)
    assert llm.runner.use_head
    assert run_staggered(llm, ps) == ref
    st = llm.early_exit_stats
    assert st.exited_tokens == 0 and st.deep_passes == st.shallow_tokens > 0 and llm.kv.bytes_in_use == 0


def test_head_mode_equals_a_recompute_reference(model_and_reference):
    model, ps, ref = model_and_reference
    model = with_head(model)
    t = head_threshold(model, ps[:8])
    llm = EarlyExitLLM(model, policy=EarlyExitPolicy(threshold=t, max_kept=None), max_batch_items=6)
    got = run_staggered(llm, ps[:12])
    assert got == [head_reference(model, p, max_new(i), t) for i, p in enumerate(ps[:12])]
    st = llm.early_exit_stats
    assert 0 < st.exited_tokens < st.shallow_tokens and got != ref[:12]  # some exits, and they changed tokens


def shallow_lm_head_rows(llm, model, run, waste: bool = False) -> int:
    """Rows the LM head computed on a decode token's shallow state during ``run()``: every LM-head input
    row is matched against the final-normed shallow states of every decode step. ``waste``: a planted
    mutation that also computes the shallow logits of every row (as the margin test does)."""
    shallow: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    step = llm.runner._shallow_step

    def recorded(*a, **k):
        h = step(*a, **k)
        shallow.append(model.model.norm(h).detach().clone())
        if waste:
            model.exit_logits(h[:, None])
        return h

    def hook(_module, args):
        inputs.append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())

    llm.runner._shallow_step = recorded
    handle = model.lm_head.register_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
        del llm.runner._shallow_step
    states, rows = torch.cat(shallow), torch.cat(inputs)
    return int(((rows[:, None] - states[None]).abs().amax(-1).min(1).values < 1e-5).sum())


@pytest.mark.parametrize("waste", [False, True])
def test_head_mode_computes_the_lm_head_only_for_exiting_rows(model_and_reference, waste):
    model, ps, _ = model_and_reference
    model = with_head(model)
    llm = EarlyExitLLM(model, policy=EarlyExitPolicy(threshold=head_threshold(model, ps[:8])), max_batch_items=8)
    sp = SamplingParams(max_new_tokens=12, ignore_eos=True)
    rows = shallow_lm_head_rows(llm, model, lambda: llm.generate(ps[:8], sp), waste=waste)
    st = llm.early_exit_stats
    assert 0 < st.exited_tokens < st.shallow_tokens
    if waste:  # the checker sees a step that computes the shallow LM head for rows that stay
        assert rows == st.exited_tokens + st.shallow_tokens
    else:
        assert rows == st.exited_tokens


def test_margin_mode_computes_the_lm_head_for_every_row(model_and_reference):
    model, ps, _ = model_and_reference
    model = with_head(model)  # the same model, asked for FREE's margin instead of its head
    policy = EarlyExitPolicy(threshold=median_confidence(model, ps[:8]), confidence="margin")
    llm = EarlyExitLLM(model, policy=policy, max_batch_items=8)
    sp = SamplingParams(max_new_tokens=12, ignore_eos=True)
    rows = shallow_lm_head_rows(llm, model, lambda: llm.generate(ps[:8], sp))
    assert not llm.runner.use_head and rows == llm.early_exit_stats.shallow_tokens > llm.early_exit_stats.exited_tokens


def test_head_mode_measures_wrong_exits_and_refuses_the_adaptive_threshold(model_and_reference):
    model, ps, _ = model_and_reference
    model = with_head(model)
    with pytest.raises(DepthmuxError, match="adaptive threshold needs the shallow exit's token") as e:
        EarlyExitLLM(model, policy=EarlyExitPolicy(adaptive=AdaptiveThreshold(0.1)))
    one_line(e)
    policy = EarlyExitPolicy(threshold=head_threshold(model, ps[:8]), measure=True)
    llm = EarlyExitLLM(model, policy=policy, max_batch_items=8)
    llm.generate(ps[:8], SamplingParams(max_new_tokens=16, ignore_eos=True))
    st = llm.early_exit_stats
    assert st.verified_exits > 0 and 0 < st.verified_exits <= st.exited_tokens


def test_depthwise_policy_is_refused(model_and_reference):
    model, _, _ = model_and_reference
    with pytest.raises(DepthmuxError, match="depth_policy must be 'lockstep'"):
        EarlyExitLLM(model, depth_policy="depthwise")


def test_speculative_acceptance_rule_keeps_the_target_distribution():
    """One draft x ~ q, accepted w.p. min(1, p(x)/q(x)), else a token from the residual: the emitted token is ~ p."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    n = 20_000
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=g))
        a, nxt = speculative_accept([x], [q], [p, p], g)
        counts[x if a == 1 else nxt] += 1
    assert (counts / n - p).abs().max() < 0.015


def test_speculative_sampling_is_seeded_and_near_zero_temperature_is_greedy(model_and_reference):
    model, ps, ref = model_and_reference
    policy = EarlyExitPolicy(mode="speculative", draft_tokens=3)
    sp = [SamplingParams(max_new_tokens=max_new(i), temperature=0.9, seed=i, ignore_eos=True) for i in range(8)]
    a = [o.token_ids for o in EarlyExitLLM(model, policy=policy).generate(ps[:8], sp)]
    b = [o.token_ids for o in EarlyExitLLM(model, policy=policy, max_batch_items=3).generate(ps[:8], sp)]
    assert a == b and a != ref[:8]
    cold = [SamplingParams(max_new_tokens=max_new(i), temperature=1e-4, seed=i, ignore_eos=True) for i in range(8)]
    llm = EarlyExitLLM(model, policy=policy)
    assert [o.token_ids for o in llm.generate(ps[:8], cold)] == ref[:8]
    assert llm.early_exit_stats.accepted_tokens > 0


@pytest.mark.slow
def test_smollm2_threshold_one_and_self_speculative_equal_deep_greedy():
    """The real model (SmolLM2-135M with an untrained exit after 8 of 30 layers): exact output either way."""
    from depthmux.engine import LLM
    from depthmux.lm import load_saved_tokenizer, pretrained_model_dir

    model = from_llama("smollm2", exit_layer=8)
    tok = load_saved_tokenizer(pretrained_model_dir("smollm2"))
    ps = ["The king said", "Once upon a time", "To be or not to be,", "The capital of France is"]
    sp = SamplingParams(max_new_tokens=12, ignore_eos=True)
    ref = [o.token_ids for o in LLM(model, tok, depth_policy="lockstep").generate(ps, sp)]
    for policy in (EarlyExitPolicy(threshold=1.0), EarlyExitPolicy(mode="speculative", draft_tokens=3)):
        assert [o.token_ids for o in EarlyExitLLM(model, tok, policy=policy).generate(ps, sp)] == ref
