"""Engine scheduler and KV accounting without a model (SPEC 5): admission, batching limits, freeing."""

from __future__ import annotations

import pytest

from depthmux.engine import MAIN, KVManager, KVSpec, Request, SamplingParams, Scheduler, StepResult
from depthmux.errors import DepthmuxError
from depthmux.recursion import RecursiveConfig

KW = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def spec(**kw) -> KVSpec:
    return KVSpec.from_config(RecursiveConfig(**{**KW, **kw}))


VANILLA = dict(sharing="none", num_recursions=1)
RECURSION_WISE = dict(sharing="middle_cycle", num_recursions=3, mor_router="expert")
SHARED = dict(sharing="middle_cycle", num_recursions=3, mor_router="expert", mor_kv="share_first")


def request(rid: str, prompt_len: int = 48, max_new: int = 16) -> Request:
    return Request(rid, list(range(1, prompt_len + 1)), SamplingParams(max_new_tokens=max_new), frozenset(), 256, 0)


def test_kv_bytes_per_token_match_spec_ratios():
    v, rw, sh = spec(**VANILLA), spec(**RECURSION_WISE), spec(**SHARED)
    assert v.entry_bytes == 2 * 2 * 8 * 4  # K and V, 2 KV heads of 8 dims, float32
    assert v.expected_bytes_per_token() == 8 * 128
    assert rw.block_ratio() == pytest.approx((3 + 1) / (2 * 3))  # SPEC 4 recursion-wise
    assert sh.block_ratio() == pytest.approx(1 / 3)  # SPEC 4 recursive sharing
    assert rw.expected_bytes_per_token() == pytest.approx((2 + 2 * 2) * 128)  # 2 unique layers + K * (1 + 2/3 + 1/3)
    assert sh.expected_bytes_per_token() == (2 + 2) * 128
    # token-choice with a balanced router expects the same (N_r + 1) / (2 N_r)
    assert spec(sharing="middle_cycle", num_recursions=3, mor_router="token").block_ratio() == pytest.approx(2 / 3)
    # a plain recursive model keeps every token at every recursion
    assert spec(sharing="middle_cycle", num_recursions=3).block_ratio() == 1.0


def admitted(kw: dict, budget: int) -> int:
    kv = KVManager(spec(**kw), budget)
    sched = Scheduler(kv, "depthwise", max_batch_items=8, max_num_seqs=1000, num_recursion_steps=3)
    for i in range(100):
        sched.add_request(request(f"r{i}"))
    sched.schedule()
    return len(sched.running)


def test_fixed_budget_admits_more_sequences_with_recursion_wise_and_shared_kv():
    unit = spec(**VANILLA).block_size * spec(**VANILLA).entry_bytes  # the null and trash pages come out of the budget
    budget = (1 << 20) + 2 * unit
    counts = {
        name: admitted(kw, budget)
        for name, kw in (("vanilla", VANILLA), ("recursion_wise", RECURSION_WISE), ("shared", SHARED))
    }
    # 64-token requests in 16-token pages: vanilla 65536 B, recursion-wise 53248 B, shared 32768 B each
    assert counts == {"vanilla": 16, "recursion_wise": 19, "shared": 32}
    assert admitted(VANILLA, budget - 1) == 15


def test_budget_too_small_for_one_request_is_one_line_error():
    unit = spec(**VANILLA).block_size * spec(**VANILLA).entry_bytes
    kv = KVManager(spec(**VANILLA), 8 * unit)
    sched = Scheduler(kv, "depthwise")
    with pytest.raises(DepthmuxError, match="too small") as e:
        sched.add_request(request("a"))
    assert "\n" not in str(e.value)
    with pytest.raises(DepthmuxError, match="at least 3 pages") as e:  # not even the null and trash pages + 1
        KVManager(spec(**VANILLA), 2 * unit)
    with pytest.raises(DepthmuxError):
        KVManager(spec(**VANILLA), 0)
    with pytest.raises(DepthmuxError):
        Scheduler(kv, "sideways")
    with pytest.raises(DepthmuxError):
        Scheduler(kv, "depthwise", max_batch_items=0)


def run_prefill(sched: Scheduler) -> None:
    """Schedule and complete the prefill of every admitted request (one token sampled each)."""
    d = sched.schedule()
    assert d.prefills and not d.entering
    sched.update(d, StepResult(sampled={c.request_id: 7 for c in d.prefills if c.samples}))


def test_depthwise_block_calls_hold_at_most_b_items_deepest_first_and_never_exited_ones():
    kv = KVManager(spec(**RECURSION_WISE), 1 << 30)
    B = 4
    sched = Scheduler(kv, "depthwise", max_batch_items=B, max_prefill_tokens=10_000, num_recursion_steps=3)
    for i in range(10):
        sched.add_request(request(f"r{i}", prompt_len=5, max_new=50))
    run_prefill(sched)
    exited: set[int] = set()
    sizes = []
    for _ in range(40):
        d = sched.schedule()
        assert len(d.entering) == sum(
            1 for r in sched.running if r.in_flight is not None and r.in_flight in {it.item_id for it in d.entering}
        )
        ids = [it.item_id for it in d.block_items]
        sizes.append(len(ids))
        assert len(ids) <= B
        assert not exited & set(ids)
        depths = [it.depth for it in d.block_items]
        waiting = [it.depth for it in sched.items.values() if it.item_id not in ids]
        assert not waiting or min(depths) >= max(waiting)  # deepest items first
        # items alternate: an even item continues one recursion, an odd one exits after it ran
        res = StepResult(ran_items=ids)
        for it in d.block_items:
            if it.item_id % 2 == 0 and it.depth + 1 < 3:
                res.depths[it.item_id] = it.depth + 1
            else:
                res.exited.append(it.item_id)
                res.sampled[it.request_id] = 7
        exited |= set(res.exited)
        sched.update(d, res)
    assert max(sizes) == B and sched.computed_exited == 0
    # an exited item reported as run is counted as computed for an exited token
    d = sched.schedule()
    sched.update(d, StepResult(ran_items=[min(exited)]))
    assert sched.computed_exited == 1


def test_lockstep_enters_at_most_b_sequences_per_step():
    kv = KVManager(spec(**RECURSION_WISE), 1 << 30)
    sched = Scheduler(kv, "lockstep", max_batch_items=3, max_prefill_tokens=10_000, num_recursion_steps=3)
    for i in range(7):
        sched.add_request(request(f"r{i}", prompt_len=4, max_new=5))
    run_prefill(sched)
    d = sched.schedule()
    assert len(d.entering) == 3 and not d.block_items
    assert [it.request_id for it in d.entering] == ["r0", "r1", "r2"]


def test_chunked_prefill_and_continuous_join_and_leave():
    kv = KVManager(spec(**VANILLA), 1 << 30)
    sched = Scheduler(kv, "depthwise", max_batch_items=8, max_prefill_tokens=32)
    sched.add_request(request("long", prompt_len=70, max_new=2))
    chunks = []
    for _ in range(3):
        d = sched.schedule()
        chunks += [(c.start, len(c.token_ids), c.samples) for c in d.prefills]
        sched.update(d, StepResult(sampled={c.request_id: 5 for c in d.prefills if c.samples}))
    assert chunks == [(0, 32, False), (32, 32, False), (64, 6, True)]
    sched.add_request(request("late", prompt_len=3, max_new=1))  # joins while "long" decodes
    d = sched.schedule()
    assert [c.request_id for c in d.prefills] == ["late"] and [it.request_id for it in d.entering] == ["long"]
    res = StepResult(sampled={"late": 9, "long": 9}, exited=[d.entering[0].item_id])
    sched.update(d, res)
    done = {r.request_id: r for r in sched.take_finished()}
    assert done["late"].finished and done["long"].finished  # both leave at once
    assert done["late"].finish_reason == "length" and not sched.has_unfinished()
    assert not sched.requests and not sched.take_finished()  # nothing of a finished request stays


def test_finish_and_cancel_free_kv():
    kv = KVManager(spec(**RECURSION_WISE), 1 << 30)
    sched = Scheduler(kv, "depthwise", num_recursion_steps=3)
    for rid in ("a", "b"):
        sched.add_request(
            Request(rid, [1, 2, 3], SamplingParams(max_new_tokens=5, stop_token_ids=(4,)), frozenset({4}), 256, 0)
        )
    d = sched.schedule()  # the scheduler gives the prefills their pages (worst case: every stream)
    planned = 2 * (kv.spec.block_bytes(MAIN) + 3 * kv.spec.block_bytes(0))
    assert kv.bytes_in_use == planned
    written = {}
    for c in d.prefills:  # what the runner reports: 3 tokens in the main stream and recursion 0, 2 in recursion 1
        written.update({(c.request_id, MAIN): 3, (c.request_id, 0): 3, (c.request_id, 1): 2})
    sched.update(d, StepResult(sampled={"a": 4, "b": 5}, kv_written=written))  # "a" emits its stop token
    used = 2 * (kv.spec.block_bytes(MAIN) + 2 * kv.spec.block_bytes(0))  # recursion 2's unused pages went back
    assert [r.finish_reason for r in sched.take_finished()] == ["stop"] and kv.bytes_in_use == used // 2
    assert kv.entries("b") == {MAIN: 3, 0: 3, 1: 2}
    assert sched.abort_request("b") and [r.finish_reason for r in sched.take_finished()] == ["abort"]
    assert kv.bytes_in_use == 0 and kv.reserved_bytes == 0
    assert not sched.abort_request("b") and not sched.abort_request("nope")


def worst_case_step(sched: Scheduler, d) -> StepResult:
    """A runner that routes every token through every recursion (writes all the pages planned) and
    samples token 3 wherever a token is due (lockstep)."""
    sampled = {c.request_id: 3 for c in d.prefills if c.samples}
    sampled.update({it.request_id: 3 for it in d.entering})
    return StepResult(sampled=sampled, kv_written=dict(d.kv_growth))


def test_routing_deeper_than_reserved_preempts_the_newest_and_recomputes_it():
    s = spec(**RECURSION_WISE)
    kv = KVManager(s, 2 * s.reservation_bytes(32) + 2 * s.block_size * s.entry_bytes)  # + the null and trash units
    kv.MEASURE_AFTER = 10**9  # reserve at the expected fractions, which this routing exceeds
    sched = Scheduler(kv, "lockstep", max_prefill_tokens=1000, num_recursion_steps=3)
    for rid in ("old", "new"):
        sched.add_request(request(rid, prompt_len=4, max_new=28))  # 32 tokens reserved each, both decode
    preempted, peak = [], 0
    for _ in range(200):
        if not sched.has_unfinished():
            break
        d = sched.schedule()
        preempted += d.preempted
        if "new" in d.preempted:  # recomputed later from prompt + outputs, outputs kept
            assert sched.requests["new"].num_computed == 0 and sched.requests["new"].state == "waiting"
        peak = max(peak, kv.bytes_in_use)
        assert kv.bytes_in_use <= kv.page_budget_bytes
        sched.update(d, worst_case_step(sched, d))
    done = {r.request_id: r for r in sched.take_finished()}
    assert preempted and set(preempted) == {"new"}  # always the newest
    assert {r: d.finish_reason for r, d in done.items()} == {"old": "length", "new": "length"}
    assert all(len(r.output_token_ids) == 28 for r in done.values()) and done["new"].num_preemptions >= 1
    assert kv.bytes_in_use == 0 and kv.pages_in_use() == 0 and peak <= kv.page_budget_bytes


def test_prefill_chunks_are_cut_to_the_free_pages():
    s = spec(**RECURSION_WISE)
    # its reservation (9 pages at the expected fractions) holds the worst case of 32 tokens (4 streams x 2
    # pages), not of the 40-token prompt (4 x 3)
    budget = s.reservation_bytes(41) + 2 * s.block_size * s.entry_bytes
    kv = KVManager(s, budget)
    sched = Scheduler(kv, "lockstep", max_prefill_tokens=1000, num_recursion_steps=3)
    sched.add_request(request("a", prompt_len=40, max_new=1))
    d = sched.schedule()
    assert [len(c.token_ids) for c in d.prefills] == [32] and not d.prefills[0].samples
    sched.update(d, StepResult(kv_written={("a", MAIN): 32, ("a", 0): 32, ("a", 1): 5}))  # few tokens went deep
    d = sched.schedule()  # the pages of recursions 1 and 2 came back: the rest of the prompt fits
    assert [(c.start, len(c.token_ids), c.samples) for c in d.prefills] == [(32, 8, True)]


def test_a_request_alone_that_cannot_fit_ends_with_kv_budget():
    s = spec(**RECURSION_WISE)
    budget = s.reservation_bytes(20) + 2 * s.block_size * s.entry_bytes
    kv = KVManager(s, budget)
    kv.MEASURE_AFTER = 10**9
    sched = Scheduler(kv, "lockstep", max_prefill_tokens=1000, num_recursion_steps=3)
    sched.add_request(request("a", prompt_len=8, max_new=12))
    for _ in range(100):
        if not sched.has_unfinished():
            break
        sched.update(d := sched.schedule(), worst_case_step(sched, d))
    (r,) = sched.take_finished()
    assert r.finish_reason == "kv_budget" and 0 < len(r.output_token_ids) < 12  # tokens so far are kept
    assert kv.bytes_in_use == 0


def test_speculative_items_get_pages_for_their_drafts_and_rejected_drafts_are_cut():
    s = spec(**VANILLA)
    kv = KVManager(s, 1 << 24)
    sched = Scheduler(kv, "lockstep", max_draft_tokens=3)
    sched.add_request(request("a", prompt_len=15, max_new=3))
    d = sched.schedule()
    sched.update(d, StepResult(sampled={"a": 7}, kv_written={("a", MAIN): 15}))
    d = sched.schedule()
    (it,) = d.entering
    assert it.drafts == 1 and d.kv_growth == {("a", MAIN): 2}  # capped: 2 tokens remain, the last one is sampled
    assert kv.entries("a") == {MAIN: 15} and len(kv.blocks[("a", MAIN)]) == 2  # the draft is entry 17: page 2
    # the runner wrote the token and its draft; the draft was rejected: the stream keeps 16 entries, 1 page
    sched.update(d, StepResult(sampled={"a": 9}, accepted={"a": []}, kv_written={("a", MAIN): 2}))
    assert kv.entries("a") == {MAIN: 16} and sched.requests["a"].num_computed == 16
    assert len(kv.blocks[("a", MAIN)]) == 1 and kv.bytes_in_use == s.block_bytes(MAIN)
    d = sched.schedule()
    assert d.entering[0].drafts == 0 and d.kv_growth == {("a", MAIN): 1}
    with pytest.raises(RuntimeError, match="planned"):  # a runner writing beyond the plan is a bug
        sched.update(d, StepResult(sampled={"a": 9}, kv_written={("a", MAIN): 2}))


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_new_tokens=0),
        dict(max_new_tokens=-3),
        dict(temperature=-1.0),
        dict(temperature=float("nan")),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(seed="x"),
        dict(stop_token_ids=(-1,)),
    ],
)
def test_sampling_params_validation(bad):
    with pytest.raises(DepthmuxError) as e:
        SamplingParams(**bad)
    assert "\n" not in str(e.value)
