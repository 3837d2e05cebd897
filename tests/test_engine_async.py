"""AsyncLLM and the output processor (issue 16): streaming equals ``LLM.generate``, incremental text equals
a full decode, stop strings across token boundaries, a consumer that leaves aborts its request (KV back
to zero), a dead loop is reported, and a short soak keeps nothing of finished or aborted requests."""

from __future__ import annotations

import asyncio

import pytest
import torch

from conftest import build_tiny_recursive
from depthmux.engine import LLM, AsyncLLM, SamplingParams
from depthmux.errors import DepthmuxError
from depthmux.lm import load_saved_tokenizer, pretrained_model_dir
from depthmux.recipes.engine_soak import SoakSpec, run_soak

PROMPTS = ["The cat sat on the", "Hello, my name is", "In 1999 the", "Paris is"]


@pytest.fixture(scope="module")
def tok():
    return load_saved_tokenizer(pretrained_model_dir("smollm2"))


@pytest.fixture(scope="module")
def model(tok):
    m = build_tiny_recursive(vocab_size=len(tok), num_hidden_layers=6, num_recursions=2, mor_router="expert").eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "router" in name:
                p.normal_(0, 1.0)
    return m


def collect(llm: AsyncLLM, prompt, params, **kw):
    async def go():
        outs = [o async for o in llm.generate(prompt, params, **kw)]
        await llm.shutdown()
        return outs

    return asyncio.run(go())


def test_async_stream_equals_llm_generate_and_a_full_decode(model, tok):
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    ref = LLM(model, tok).generate(PROMPTS, params)

    async def go():
        llm = AsyncLLM(model, tok, max_batch_items=3)

        async def one(p):
            return [o async for o in llm.generate(p, params)]

        outs = await asyncio.gather(*(one(p) for p in PROMPTS))
        snap = llm.snapshot()
        await llm.shutdown()
        return outs, snap

    outs, snap = asyncio.run(go())
    for stream, r in zip(outs, ref, strict=True):
        last = stream[-1]
        assert last.finished and last.finish_reason == "length" and all(not o.finished for o in stream[:-1])
        assert last.token_ids == r.token_ids and [t for o in stream for t in o.new_token_ids] == r.token_ids
        assert "".join(o.new_text for o in stream) == last.text == tok.decode(r.token_ids, skip_special_tokens=True)
        assert last.arrival_time <= last.first_token_time <= last.finish_time
    assert snap["kv_pages_used"] == 0 and snap["num_requests_running"] == 0
    assert snap["generation_tokens"] == 12 * len(PROMPTS)
    assert snap["prompt_tokens"] == sum(len(r.prompt_token_ids) for r in ref)


def test_stop_string_across_token_boundaries_is_cut_and_frees_kv(model, tok):
    base = LLM(model, tok).generate(PROMPTS[0], SamplingParams(max_new_tokens=16, ignore_eos=True))[0]
    pieces = [tok.decode([t]) for t in base.token_ids]
    # a stop string made of the end of token 3 and the start of token 4 (it spans a token boundary)
    assert len(pieces[3]) >= 1 and len(pieces[4]) >= 1
    stop = pieces[3][-1:] + pieces[4][:2]
    at = base.text.find(stop)
    params = SamplingParams(max_new_tokens=16, ignore_eos=True, stop=(stop,))
    llm = LLM(model, tok)
    out = llm.generate(PROMPTS[0], params)[0]
    assert out.finish_reason == "stop" and out.text == base.text[:at] and stop not in out.text
    assert out.token_ids == base.token_ids[: len(out.token_ids)] and len(out.token_ids) < 16
    assert llm.kv.pages_in_use() == 0
    stream = collect(AsyncLLM(model, tok), PROMPTS[0], params)
    assert "".join(o.new_text for o in stream) == base.text[:at] and stream[-1].finish_reason == "stop"
    for o in stream[:-1]:  # text that could still start the stop string was held back
        assert stop[0] not in o.text[-1:] or not stop.startswith(o.text[-1:])


def test_a_consumer_that_leaves_aborts_its_request_and_abort_ends_a_stream(model, tok):
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)

    async def go():
        llm = AsyncLLM(model, tok)
        got = 0
        async for o in llm.generate(PROMPTS[1], params):
            got += len(o.new_token_ids)
            if got >= 3:
                break
        for _ in range(4000):  # up to 20 s: the abort is applied before the next step (a loaded CPU is slow)
            await asyncio.sleep(0.005)
            if not llm.core.has_unfinished_requests() and not llm.processor.states:
                break
        leave = (llm.core.kv.pages_in_use(), len(llm.core.scheduler.requests), len(llm.processor.states))
        outs = []
        async for o in llm.generate(PROMPTS[2], params, request_id="x"):
            outs.append(o)
            if len(outs) == 2:
                await llm.abort("x")
        await llm.shutdown()
        return got, leave, outs, llm.core.kv.pages_in_use()

    got, leave, outs, pages = asyncio.run(go())
    assert got >= 3 and leave == (0, 0, 0)
    assert outs[-1].finished and outs[-1].finish_reason == "abort" and len(outs[-1].token_ids) < 40 and pages == 0


def test_a_dead_engine_loop_is_reported(model, tok):
    async def go():
        llm = AsyncLLM(model, tok)

        def boom():
            raise RuntimeError("device lost")

        llm.core.step = boom
        with pytest.raises(DepthmuxError, match="engine loop died"):
            async for _ in llm.generate(PROMPTS[0], SamplingParams(max_new_tokens=4)):
                pass
        return llm.errored

    assert asyncio.run(go())


def test_bad_requests_fail_alone(model, tok):
    async def go():
        llm = AsyncLLM(model, tok)
        with pytest.raises(DepthmuxError, match="token ids must be in"):
            async for _ in llm.generate([len(tok) + 5], SamplingParams(max_new_tokens=2)):
                pass
        outs = [o async for o in llm.generate(PROMPTS[0], SamplingParams(max_new_tokens=2))]
        await llm.shutdown()
        return outs, llm.errored

    outs, errored = asyncio.run(go())
    assert outs[-1].finished and not errored


def test_soak_keeps_nothing_of_finished_or_aborted_requests(model, tok):
    spec = SoakSpec(num_requests=1000, checkpoints=(200, 1000), num_prompts=8, max_new_tokens=(2, 6), mean_gap_s=0.0)
    res = run_soak(model, tok, spec, log=lambda *_: None, max_batch_items=16)
    assert res.finished + res.aborted == 1000 and res.aborted > 100
    assert res.mismatches == 0
    assert res.kv_pages_end == 0 and res.kv_bytes_end == 0
    assert res.engine_requests_end == 0 and res.processor_states_end == 0
    first, last = res.checkpoints
    assert last["objects"] < 1.05 * first["objects"]
