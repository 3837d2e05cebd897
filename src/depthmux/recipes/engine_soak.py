"""A soak run of :class:`~depthmux.engine.AsyncLLM` (issue 16, "memory is flat"; SPEC 5).

``num_requests`` short requests go through one ``AsyncLLM`` with random arrivals (exponential gaps,
at most ``max_in_flight`` open at once); a share ``abort_frac`` of them is abandoned by its consumer
mid-stream (the consumer breaks out of ``generate``, which aborts the request). Prompts and sampling
parameters are drawn from small pools (greedy, and seeded sampling, whose tokens do not depend on the
batch), so that every finished output can be compared with ``LLM.generate`` of that prompt alone.

At each checkpoint (number of requests done) it records the process RSS (``/proc/self/statm``) and
the number of live Python objects (``gc.get_objects()`` after ``gc.collect()``); at the end the KV pages
still held (must be 0) and the number of outputs that differ from the reference (must be 0).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
from dataclasses import dataclass, field

from depthmux.engine import LLM, AsyncLLM, SamplingParams


@dataclass
class SoakSpec:
    """Workload of :func:`run_soak` (module docstring)."""

    num_requests: int = 10_000
    checkpoints: tuple[int, ...] = (1_000, 5_000, 10_000)
    abort_frac: float = 0.2
    num_prompts: int = 48
    prompt_len: tuple[int, int] = (3, 24)
    max_new_tokens: tuple[int, int] = (2, 12)
    mean_gap_s: float = 0.0005
    max_in_flight: int = 64
    seed: int = 0
    log_every: int = 0


@dataclass
class SoakResult:
    checkpoints: list[dict] = field(default_factory=list)
    finished: int = 0
    aborted: int = 0
    mismatches: int = 0
    kv_pages_end: int = 0
    kv_bytes_end: int = 0
    engine_requests_end: int = 0
    processor_states_end: int = 0
    snapshot_end: dict = field(default_factory=dict)


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def _pools(spec: SoakSpec, vocab: int, rng: random.Random) -> tuple[list[list[int]], list[SamplingParams]]:
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(*spec.prompt_len))] for _ in range(spec.num_prompts)]
    params = []
    for n in range(spec.max_new_tokens[0], spec.max_new_tokens[1] + 1):
        params.append(SamplingParams(max_new_tokens=n, ignore_eos=True))
        params.append(SamplingParams(max_new_tokens=n, temperature=0.8, top_p=0.9, seed=n, ignore_eos=True))
    return prompts, params


async def _soak(llm: AsyncLLM, reference: LLM, spec: SoakSpec, log) -> SoakResult:
    rng = random.Random(spec.seed)
    prompts, params = _pools(spec, llm.model.config.vocab_size, rng)
    workload = []
    for _ in range(spec.num_requests):
        pi, si = rng.randrange(len(prompts)), rng.randrange(len(params))
        n = params[si].max_new_tokens
        abort_after = rng.randint(1, n - 1) if rng.random() < spec.abort_frac and n > 1 else None
        gap = rng.expovariate(1.0 / spec.mean_gap_s) if spec.mean_gap_s > 0 else 0.0
        workload.append((pi, si, abort_after, gap))
    # the reference, before the soak (so that it adds nothing to the soak's memory): each prompt alone
    expected = {
        (pi, si): reference.generate(prompts[pi], params[si])[0].token_ids
        for pi, si in sorted({(pi, si) for pi, si, a, _ in workload if a is None})
    }
    log(f"  {len(expected)} reference outputs (LLM.generate, one prompt at a time)")
    res = SoakResult()
    gate = asyncio.Semaphore(spec.max_in_flight)
    done = 0
    marks = sorted(spec.checkpoints)

    async def one(pi: int, si: int, abort_after: int | None) -> None:
        nonlocal done
        try:
            tokens: list[int] = []
            last = None
            async for out in llm.generate(prompts[pi], params[si]):
                tokens += out.new_token_ids
                last = out
                if abort_after is not None and len(tokens) >= abort_after:
                    break  # the consumer leaves mid-stream: the request is aborted
            if abort_after is not None:
                res.aborted += 1
            else:
                res.finished += 1
                if last is None or not last.finished or tokens != last.token_ids or tokens != expected[pi, si]:
                    res.mismatches += 1
        finally:
            gate.release()
            done += 1
            if marks and done == marks[0]:
                marks.pop(0)
                res.checkpoints.append({"requests": done, "rss_bytes": rss_bytes(), "objects": live_objects()})
                log(
                    f"  {done} requests: RSS {res.checkpoints[-1]['rss_bytes'] / 2**20:.1f} MiB, "
                    f"{res.checkpoints[-1]['objects']} live objects"
                )
            elif spec.log_every and done % spec.log_every == 0:
                log(f"  {done} requests done")

    tasks = []
    for pi, si, abort_after, gap in workload:
        await gate.acquire()
        tasks.append(asyncio.ensure_future(one(pi, si, abort_after)))
        await asyncio.sleep(gap)
        if len(tasks) >= 256:
            tasks = [t for t in tasks if not t.done()]
    await asyncio.gather(*tasks)
    for _ in range(1000):  # the last aborts are applied before the next (empty) step
        if llm.core.kv.pages_in_use() == 0 and not llm.core.has_unfinished_requests():
            break
        await asyncio.sleep(0.001)
    res.kv_pages_end = llm.core.kv.pages_in_use()
    res.kv_bytes_end = llm.core.kv.bytes_in_use
    res.engine_requests_end = len(llm.core.scheduler.requests)
    res.processor_states_end = len(llm.processor.states)
    res.snapshot_end = llm.snapshot()
    await llm.shutdown()
    return res


def run_soak(model, tokenizer, spec: SoakSpec, log=print, **engine_kwargs) -> SoakResult:
    """Run the soak (module docstring) on ``model``; ``engine_kwargs`` go to both engines."""
    llm = AsyncLLM(model, tokenizer, **engine_kwargs)
    reference = LLM(model, tokenizer, **engine_kwargs)
    return asyncio.run(_soak(llm, reference, spec, log))
