"""Dynamic grouping of classification inputs for RevMUX (SPEC 1.1, 5b): inputs of concurrent requests
share one forward pass.

Inputs queue in arrival order. A forward runs when N inputs wait, or when the oldest has waited
``max_wait_s`` (Ray Serve's ``@serve.batch(max_batch_size, batch_wait_timeout_s)`` rule); it takes
whole groups of N, up to ``max_batch`` inputs (several groups share the pass at load), and when the
first input it would leave behind has already waited too long it takes that incomplete group too
(the classifier completes it with dummies, whose outputs are dropped). One forward at a time per
classifier, in a worker thread, so the event loop keeps accepting requests; inputs arriving meanwhile
form the next forward. Every caller gets its own results, in its own order. A caller that goes away
(its task cancelled) leaves its inputs behind: they are dropped before they reach a forward.

The teacher (N = 1) goes through the same queue: a forward runs as soon as an input waits, with
whatever else arrived during the previous forward (plain dynamic batching).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from depthmux.errors import require
from depthmux.serve.errors import overloaded
from depthmux.serve.metrics import ServerMetrics


@dataclass
class _Item:
    text: str
    future: asyncio.Future
    enqueued: float


class DynamicGrouper:
    """The queue and the worker of one classifier.

    Args:
        name: the model name (metrics label).
        run: texts -> one result per text, in order (called in a worker thread; N consecutive texts
            form a group, the last group may be incomplete).
        n: inputs per group (1 for the teacher).
        max_batch: most inputs per forward (rounded down to a multiple of N, at least N).
        max_wait_s: how long the oldest input may wait for its group to fill.
        max_queued: most inputs waiting; more is refused with 503 + Retry-After.
        metrics: where group fill and group wait are recorded.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[list[str]], list],
        n: int,
        max_batch: int,
        max_wait_s: float,
        max_queued: int,
        metrics: ServerMetrics,
    ) -> None:
        require(n >= 1 and max_batch >= 1 and max_wait_s >= 0 and max_queued >= 1, "bad grouping settings")
        self.name, self.run, self.n = name, run, n
        self.max_batch = max(n, max_batch - max_batch % n)
        self.max_wait_s, self.max_queued, self.metrics = max_wait_s, max_queued, metrics
        self.queue: deque[_Item] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def full(self) -> bool:
        return len(self.queue) >= self.max_queued

    async def submit(self, texts: list[str]) -> list:
        """Queue ``texts`` and wait for their results (in order)."""
        if len(self.queue) + len(texts) > self.max_queued:
            raise overloaded(f"the queue of {self.name!r} ({self.max_queued} inputs)")
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._loop(), name=f"grouper-{self.name}")
        now = time.monotonic()
        futures = [loop.create_future() for _ in texts]
        self.queue.extend(_Item(t, f, now) for t, f in zip(texts, futures, strict=True))
        self.metrics.classify_queued.labels(self.name).set(len(self.queue))
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    def _take(self) -> list[_Item] | float:
        """The inputs of the next forward, or how long to wait before one is due."""
        while self.queue and self.queue[0].future.done():  # callers that went away
            self.queue.popleft()
        if not self.queue:
            return self.max_wait_s
        now = time.monotonic()
        waiting = len(self.queue)
        if waiting < self.n:
            due = self.queue[0].enqueued + self.max_wait_s - now
            if due > 0:
                return due
            take = waiting
        else:
            take = min(waiting, self.max_batch)
            take -= take % self.n
            if take < waiting and take < self.max_batch and self.queue[take].enqueued + self.max_wait_s <= now:
                take = min(waiting, self.max_batch)  # the incomplete group behind has waited long enough
        items = [self.queue.popleft() for _ in range(take)]
        return [i for i in items if not i.future.done()]

    async def _loop(self) -> None:
        while True:
            nxt = self._take()
            self.metrics.classify_queued.labels(self.name).set(len(self.queue))
            if not isinstance(nxt, list):
                self._arrived.clear()
                if self.queue:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), nxt)
                else:
                    await self._arrived.wait()
                continue
            if not nxt:
                continue
            start = time.monotonic()
            for item in nxt:
                self.metrics.group_wait.labels(self.name).observe(start - item.enqueued)
            groups = -(-len(nxt) // self.n)
            self.metrics.group_fill.labels(self.name).observe(len(nxt) / (groups * self.n))
            self.metrics.forward_inputs.labels(self.name).observe(len(nxt))
            try:
                results = await asyncio.to_thread(self.run, [i.text for i in nxt])
            except Exception as e:  # our fault (inputs were checked before queueing): each caller gets a 500
                for item in nxt:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            self.metrics.classify_inputs.labels(self.name).inc(len(nxt))
            for item, result in zip(nxt, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        for item in self.queue:
            item.future.cancel()
        self.queue.clear()
