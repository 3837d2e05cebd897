"""Dynamic grouping (SPEC 1.1, 5b) in-process, with a recording fake classifier: a forward runs when N
inputs wait or the oldest waited max_wait, whole groups up to max_batch, incomplete groups after the
wait, each caller's own results in order, a full queue refused, a departed caller's inputs dropped."""

from __future__ import annotations

import asyncio

import pytest

from depthmux.serve import APIError, DynamicGrouper, ServerMetrics


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay

    def __call__(self, texts):
        import time

        self.batches.append(list(texts))
        time.sleep(self.delay)
        return [f"r:{t}" for t in texts]


def grouper(run, n=4, max_batch=8, max_wait_s=0.05, max_queued=100):
    return DynamicGrouper("m", run, n, max_batch, max_wait_s, max_queued, ServerMetrics())


def test_full_group_runs_at_once_and_incomplete_after_the_wait():
    async def main():
        rec = Recorder()
        g = grouper(rec, max_wait_s=0.3)
        t0 = asyncio.get_running_loop().time()
        full = await g.submit(["a", "b", "c", "d"])
        t_full = asyncio.get_running_loop().time() - t0
        part = await g.submit(["e", "f"])
        t_part = asyncio.get_running_loop().time() - t0 - t_full
        await g.close()
        return rec, full, part, t_full, t_part

    rec, full, part, t_full, t_part = asyncio.run(main())
    assert full == ["r:a", "r:b", "r:c", "r:d"] and part == ["r:e", "r:f"]
    assert rec.batches == [["a", "b", "c", "d"], ["e", "f"]]
    assert t_full < 0.25  # did not wait for the timeout
    assert t_part >= 0.29  # waited for the group to fill


def test_concurrent_callers_share_forwards_and_get_their_own_results():
    async def main():
        rec = Recorder(delay=0.05)
        g = grouper(rec, n=2, max_batch=6, max_wait_s=0.2)
        reqs = [[f"{i}-{j}" for j in range(k)] for i, k in enumerate([1, 3, 2, 1, 4, 1])]
        outs = await asyncio.gather(*(g.submit(r) for r in reqs))
        await g.close()
        return rec, reqs, outs

    rec, reqs, outs = asyncio.run(main())
    assert outs == [[f"r:{t}" for t in r] for r in reqs]
    flat = [t for b in rec.batches for t in b]
    assert flat == [t for r in reqs for t in r]  # arrival order, nothing lost or repeated
    assert all(len(b) <= 6 for b in rec.batches)
    assert [len(b) for b in rec.batches][:2] == [6, 6]  # 12 inputs: two forwards of three groups each


def test_the_incomplete_group_behind_a_full_one_waits_then_runs():
    async def main():
        rec = Recorder()
        g = grouper(rec, n=4, max_batch=16, max_wait_s=0.1)
        out = await g.submit([str(i) for i in range(6)])
        await g.close()
        return rec, out

    rec, out = asyncio.run(main())
    assert out == [f"r:{i}" for i in range(6)]
    assert [len(b) for b in rec.batches] in ([4, 2], [6])  # [6] when the wait had already passed


def test_a_full_queue_is_refused_with_retry_after():
    async def main():
        g = grouper(Recorder(), n=4, max_wait_s=5.0, max_queued=5)
        first = asyncio.ensure_future(g.submit(["a", "b", "c"]))
        await asyncio.sleep(0.01)
        with pytest.raises(APIError) as e:
            await g.submit(["d", "e", "f"])
        first.cancel()
        await g.close()
        return e.value

    err = asyncio.run(main())
    assert err.status == 503 and err.headers["Retry-After"] == "1"
    assert err.body()["error"]["code"] == "overloaded"


def test_a_cancelled_callers_inputs_never_reach_a_forward():
    async def main():
        rec = Recorder()
        g = grouper(rec, n=2, max_wait_s=0.1)
        gone = asyncio.ensure_future(g.submit(["gone"]))
        await asyncio.sleep(0.02)
        gone.cancel()
        kept = await g.submit(["x", "y"])
        await g.close()
        return rec, kept

    rec, kept = asyncio.run(main())
    assert kept == ["r:x", "r:y"]
    assert "gone" not in [t for b in rec.batches for t in b]


def test_teacher_runs_without_waiting():
    async def main():
        rec = Recorder()
        g = grouper(rec, n=1, max_batch=8, max_wait_s=10.0)
        out = await asyncio.wait_for(g.submit(["only"]), 2.0)
        await g.close()
        return rec, out

    rec, out = asyncio.run(main())
    assert out == ["r:only"] and rec.batches == [["only"]]
