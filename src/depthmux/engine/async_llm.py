"""The asyncio facade of the decode engine (SPEC 5, in the spirit of vLLM v1's ``AsyncLLM``; our own code).

::

    llm = AsyncLLM(model, tokenizer, max_batch_items=32)           # or AsyncLLM.from_pretrained(path, **kw)
    async for out in llm.generate("Hello", SamplingParams(max_new_tokens=16, stop=("\\n",))):
        print(out.new_text, end="")                                  # out.finished, out.finish_reason at the end
    await llm.shutdown()

One asyncio task (started by the first ``generate``) steps the :class:`~depthmux.engine.core.EngineCore`.
Each ``step`` runs in a worker thread (``asyncio.to_thread``), so the event loop (an HTTP server on
it) stays responsive while the model runs; requests added or aborted meanwhile are queued and applied
between steps, so the core is only ever touched by one thread at a time. Each request's outputs go to
its own queue; ``generate`` yields them. A consumer that stops iterating (``aclose``, ``break``, its
task cancelled) aborts its request: the abort is applied before the next step, which frees its KV.
If a step raises, the loop dies: ``errored`` turns True, every open ``generate`` raises
``DepthmuxError("engine loop died: ...")`` and new requests are refused.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from depthmux.engine.llm import EngineFrontend
from depthmux.engine.output import RequestOutput
from depthmux.engine.sampling import SamplingParams
from depthmux.errors import DepthmuxError


class AsyncLLM(EngineFrontend):
    """The engine for asyncio code (module docstring). Arguments as :class:`~depthmux.engine.LLM`."""

    def __init__(self, model, tokenizer=None, **engine_kwargs):
        super().__init__(model, tokenizer, **engine_kwargs)
        self._queues: dict[str, asyncio.Queue] = {}
        self._pending: list[tuple[str, object]] = []  # ("add", args) / ("abort", request id), applied between steps
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._uids = itertools.count()
        self.prompt_tokens = 0
        self.generation_tokens = 0

    # -- state ------------------------------------------------------------------------------
    @property
    def errored(self) -> bool:
        """True once the engine loop died (a step raised)."""
        return self._error is not None

    def snapshot(self) -> dict:
        """Gauges and totals for metrics: running / waiting requests, KV use (fraction of the budget and
        pages held), preemptions, prompt and generated tokens so far."""
        kv, sched = self.core.kv, self.core.scheduler
        return {
            "num_requests_running": len(sched.running),
            "num_requests_waiting": len(sched.waiting) + sum(1 for kind, _ in self._pending if kind == "add"),
            "kv_cache_usage": kv.bytes_in_use / kv.budget_bytes,
            "kv_pages_used": kv.pages_in_use(),
            "num_preemptions": sched.preemptions,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
        }

    # -- the loop ---------------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="depthmux-engine")

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, []
        for kind, arg in pending:
            if kind == "abort":
                if not self.core.abort_request(arg):  # not in the core (yet): forget it here
                    self.processor.forget(arg)
            else:
                rid, prompt, params = arg
                if rid not in self._queues:  # its consumer left before it was added
                    continue
                try:
                    self._intake(prompt, params, rid)
                    self.prompt_tokens += len(self.processor.states[rid].prompt_token_ids)
                except DepthmuxError as e:  # e.g. a request the budget cannot hold: that request fails alone
                    self._queues[rid].put_nowait(e)

    async def _run(self) -> None:
        try:
            while not self._closed:
                self._apply_pending()
                if not self.core.has_unfinished_requests():
                    self._wake.clear()
                    if not self._pending:
                        await self._wake.wait()
                    continue
                core_outputs = await asyncio.to_thread(self.core.step)
                outputs, stopped = self.processor.process(core_outputs)
                for rid in stopped:
                    self.core.abort_request(rid)
                for out in outputs:
                    self.generation_tokens += len(out.new_token_ids)
                    q = self._queues.get(out.request_id)
                    if q is not None:
                        q.put_nowait(out)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # the loop dies: tell every consumer
            self._error = e
            for q in self._queues.values():
                q.put_nowait(e)

    # -- requests ---------------------------------------------------------------------------
    async def generate(
        self, prompt, sampling_params: SamplingParams | None = None, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of one request as they come (``new_token_ids``, ``new_text``; the last has ``finished``).
        Bad input raises a one-line DepthmuxError at the first iteration."""
        if self._error is not None:
            raise DepthmuxError(f"engine loop died: {self._error!r}")
        if self._closed:
            raise DepthmuxError("the engine is shut down")
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise DepthmuxError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        if params.stop and self.tokenizer is None:
            raise DepthmuxError("stop strings need a tokenizer: pass tokenizer= or use stop_token_ids")
        rid = request_id if request_id is not None else f"areq-{next(self._uids)}"
        if not isinstance(rid, str) or not rid:
            raise DepthmuxError(f"request_id must be a non-empty string, got {rid!r}")
        if rid in self._queues:
            raise DepthmuxError(f"request id {rid!r} is already in use")
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = queue
        self._pending.append(("add", (rid, prompt, params)))
        self._ensure_loop()
        self._wake.set()
        finished = False
        try:
            while True:
                out = await queue.get()
                if isinstance(out, DepthmuxError):
                    finished = True
                    raise out
                if isinstance(out, BaseException):
                    finished = True
                    raise DepthmuxError(f"engine loop died: {out!r}") from out
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self._queues.pop(rid, None)
            if not finished and self._error is None:
                self._pending.append(("abort", rid))
                if self._wake is not None:
                    self._wake.set()

    async def abort(self, request_id: str) -> None:
        """Cancel a request: before the next step its KV is freed; its consumer gets a last output with
        finish_reason "abort". Unknown or finished ids are ignored."""
        self._pending.append(("abort", request_id))
        if self._wake is not None:
            self._wake.set()

    async def shutdown(self) -> None:
        """Stop the loop after its current step; every open request ends (its consumer gets a last output
        with finish_reason "abort", or an error if it had not started) and its KV is freed."""
        self._closed = True
        if self._task is not None:
            self._wake.set()
            await self._task
            self._task = None
        for rid in list(self.core.scheduler.requests):
            self.core.abort_request(rid)
        if self.core.has_unfinished_requests():
            outputs, _ = self.processor.process(self.core.step())
            for out in outputs:
                q = self._queues.get(out.request_id)
                if q is not None:
                    q.put_nowait(out)
        for kind, arg in self._pending:
            if kind == "add" and arg[0] in self._queues:
                self._queues[arg[0]].put_nowait(DepthmuxError("the engine is shut down"))
        self._pending = []
