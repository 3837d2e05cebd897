"""The decode engine's scheduler: pure bookkeeping, no tensors (SPEC 5, vLLM v1's split).

Requests wait in arrival order and are admitted while the KV bytes they reserve fit the budget
(:meth:`KVManager.reserve <depthmux.engine.kv_manager.KVManager.reserve>`: expected bytes of prompt
+ max_new_tokens, so recursion-wise and shared KV admit more sequences than vanilla). Every step
(:meth:`Scheduler.schedule`) returns a :class:`SchedulerDecision`: continuous (sequence-level)
batching, requests join and leave at every step.

A request's tokens are ``prompt + outputs``; ``num_computed`` of them have entered the model.
When more than one is pending (a new prompt, or a preempted request being recomputed) they go
as **prefill chunks** (at most ``max_prefill_tokens`` tokens per step in all; the chunk that reaches
the last token samples the next one). When exactly one is pending (the last sampled token) it
**enters** as a decode work item. Depth policies:

* ``"lockstep"``: up to B decode items enter per step and run every recursion within the step (the
  runner gathers the tokens still routed at each recursion; exited tokens are skipped, not masked).
* ``"depthwise"`` (continuous depth-wise batching): a work item (sequence, position, recursion
  depth; the runner holds its hidden state) stays in flight across steps; each step runs the
  shared block once on up to B items from ANY depth (deepest first, then oldest), the others
  wait; an item whose router says stop, or that finished recursion N_r, leaves for the suffix
  layers and the head, and its slot goes to another item. New tokens enter through the prefix
  layers at every step.

Prefill chunks run all their recursions within their step in both policies.

The scheduler owns the KV pages. Each step it plans the entries every stream may receive (worst case:
every token reaching every recursion; self-speculative items ``1 + drafts`` main entries), gives
those streams their pages (``KVManager.grow``) and, when the runner reports what it really wrote
(``StepResult.kv_written``), commits them (``KVManager.commit``: pages planned for tokens routed
elsewhere go back) and cuts each request's main stream to the tokens it computed
(``KVManager.truncate``: rejected drafts). The runner only reads stream lengths and page tables.
Decode items are planned first; prefill chunks are cut to the free bytes left. If the decode items
alone do not fit (or nothing fits at all), the newest running request is preempted (its KV is
freed, it is recomputed later from prompt + outputs, as vLLM does); a request alone that cannot fit
ends with ``"kv_budget"``. A finished or cancelled request frees its KV at once.

Length: requests, admission, the step plan and the result bookkeeping are one state machine.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from depthmux.engine.kv_manager import MAIN, KVManager
from depthmux.engine.sampling import SamplingParams
from depthmux.errors import DepthmuxError

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"
DEPTH_POLICIES = ("depthwise", "lockstep")


@dataclass
class Request:
    """One generation request and its progress.

    Attributes:
        request_id: unique id.
        prompt_token_ids: the prompt (>= 1 token).
        params: its :class:`SamplingParams`.
        stop_token_ids: tokens that end it (``params.stop_token_ids`` plus EOS unless ignored).
        max_len: the model's context length (tokens a sequence may hold).
        arrival: admission order key (smaller = older).
        state: "waiting", "running" or "finished".
        output_token_ids: generated tokens so far.
        num_computed: tokens of ``prompt + outputs`` that have entered the model.
        in_flight: depth-wise policy, the id of its work item in the model (None when none).
        finish_reason: "stop", "length", "abort" or "kv_budget" once finished.
        num_preemptions: times its KV was taken back and recomputed.
        scheduled_time: ``time.monotonic()`` when it was first admitted (None while it waits).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    stop_token_ids: frozenset[int]
    max_len: int
    arrival: int
    state: str = WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    in_flight: int | None = None
    finish_reason: str | None = None
    num_preemptions: int = 0
    scheduled_time: float | None = None

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_pending(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def reserve_tokens(self) -> int:
        """Tokens its KV may hold: prompt + max_new_tokens, capped at the context."""
        return min(len(self.prompt_token_ids) + self.params.max_new_tokens, self.max_len)

    @property
    def finished(self) -> bool:
        return self.state == FINISHED


@dataclass
class PrefillChunk:
    """Tokens ``token_ids`` = ``all_token_ids[start:start + len]`` of a request enter this step;
    ``samples``: the chunk ends at the request's last token, so the next token is sampled."""

    request_id: str
    start: int
    token_ids: list[int]
    samples: bool


@dataclass
class WorkItem:
    """A decode token in the model: ``request_id``'s token ``token_id`` at ``position``, next to run
    recursion ``depth`` (0-based). ``item_id`` is unique over the engine's life. ``drafts``: tokens a
    policy that emits several per step (self-speculation) may draft after it, already capped by the
    scheduler at the request's remaining ``max_new_tokens`` and the context; the scheduler planned main
    stream pages for ``1 + drafts`` entries (the runner never reads the request table)."""

    item_id: int
    request_id: str
    position: int
    token_id: int
    depth: int = 0
    drafts: int = 0


@dataclass
class SchedulerDecision:
    """What one engine step does (plain data; the runner turns it into tensors).

    Attributes:
        step: step number.
        prefills: prefill chunks (each runs every recursion this step).
        entering: decode items entering the model this step (embed + prefix layers; lockstep: the
            whole model).
        block_items: depth-wise policy, the items (in flight or entering) that run the shared block
            this step, at most B, any depth; empty under lockstep.
        dropped_items: item ids of requests preempted or cancelled since the last step (the runner
            forgets their state).
        preempted: request ids preempted for this step.
        released: request ids finished or cancelled since the last step (the runner drops their
            per-request state).
        params: sampling parameters of every running request (who may sample this step).
        kv_growth: (request id, stream) -> most entries the step may append there; the scheduler gave
            those streams the pages (``KVManager.grow``), the runner writes at most that many.
    """

    step: int
    prefills: list[PrefillChunk] = field(default_factory=list)
    entering: list[WorkItem] = field(default_factory=list)
    block_items: list[WorkItem] = field(default_factory=list)
    dropped_items: list[int] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    params: dict[str, SamplingParams] = field(default_factory=dict)
    kv_growth: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.prefills or self.entering or self.block_items)


@dataclass
class StepResult:
    """What the runner reports back after a step.

    Attributes:
        sampled: request id -> the token sampled for it this step.
        depths: depth-wise, item id -> its next recursion (items still in flight).
        exited: depth-wise, ids of items that left the model this step (their token is in ``sampled``).
        ran_items: depth-wise, ids of the items that ran the shared block (for bookkeeping checks).
        accepted: request id -> tokens emitted BEFORE ``sampled[request id]`` this step that already
            entered the model (self-speculative decoding's accepted drafts, engine/early_exit.py).
        kv_written: (request id, stream) -> entries the runner appended there this step (rejected drafts
            included: the scheduler cuts them, the main stream keeps exactly the tokens computed).
    """

    sampled: dict[str, int] = field(default_factory=dict)
    depths: dict[int, int] = field(default_factory=dict)
    exited: list[int] = field(default_factory=list)
    ran_items: list[int] = field(default_factory=list)
    accepted: dict[str, list[int]] = field(default_factory=dict)
    kv_written: dict[tuple[str, int], int] = field(default_factory=dict)


def admitted_count(reservations: list[int], budget_bytes: int, max_num_seqs: int | None = None) -> int:
    """How many requests the admission rule of :meth:`Scheduler.schedule` takes from a queue whose
    reservations (bytes) repeat ``reservations`` without end: in order while the reserved total fits
    ``budget_bytes`` (the first always), at most ``max_num_seqs``. Whole cycles are counted by division,
    so a huge budget costs no more than a small one."""
    cycle = sum(reservations)
    full = max(0, budget_bytes // cycle - 1) if cycle > 0 else 0
    n, total = full * len(reservations), full * cycle
    i = 0
    while max_num_seqs is None or n < max_num_seqs:
        need = reservations[i % len(reservations)]
        if n > 0 and total + need > budget_bytes:
            break
        n, total, i = n + 1, total + need, i + 1
    return n if max_num_seqs is None else min(n, max_num_seqs)


class Scheduler:
    """Requests, work items and admission under the KV budget (module docstring).

    Args:
        kv: the :class:`KVManager` (only its host accounting is used).
        depth_policy: "depthwise" or "lockstep".
        max_batch_items: B, most decode items per shared-block call.
        max_prefill_tokens: most prefill tokens per step (longer prompts are chunked).
        max_num_seqs: most running requests.
        num_recursion_steps: recursion steps of the model (N_r; 1 without a recursion loop).
        max_draft_tokens: tokens a decode item may draft after its own in one step (self-speculative
            decoding's k; 0 for every other policy): its main stream gets pages for ``1 + drafts``.
    """

    def __init__(
        self,
        kv: KVManager,
        depth_policy: str = "depthwise",
        max_batch_items: int = 64,
        max_prefill_tokens: int = 512,
        max_num_seqs: int = 256,
        num_recursion_steps: int = 1,
        max_draft_tokens: int = 0,
    ):
        if depth_policy not in DEPTH_POLICIES:
            raise DepthmuxError(f"depth_policy must be one of {', '.join(DEPTH_POLICIES)}, got {depth_policy!r}")
        for name, value in (
            ("max_batch_items", max_batch_items),
            ("max_prefill_tokens", max_prefill_tokens),
            ("max_num_seqs", max_num_seqs),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DepthmuxError(f"{name} must be a positive integer, got {value!r}")
        self.kv, self.depth_policy = kv, depth_policy
        self.max_batch_items, self.max_prefill_tokens = max_batch_items, max_prefill_tokens
        self.max_num_seqs = max_num_seqs
        self.num_recursion_steps = num_recursion_steps
        self.max_draft_tokens = max_draft_tokens
        self.requests: dict[str, Request] = {}  # waiting and running only
        self.finished: list[Request] = []  # finished since the last :meth:`take_finished`
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.items: dict[int, WorkItem] = {}  # depth-wise: items in flight
        self.step_count = 0
        self._next_item = 0
        self._next_arrival = 0
        self._dropped: list[int] = []
        self._released: list[str] = []
        self.preemptions = 0
        self.max_running = 0  # most requests running at once
        self.computed_exited = 0  # block-call items that were not in flight (must stay 0)

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise DepthmuxError(f"request id {request.request_id!r} is already in use")
        need = self.kv.reservation_bytes(request.reserve_tokens)
        if need > self.kv.page_budget_bytes:
            raise DepthmuxError(
                f"KV budget of {self.kv.budget_bytes} bytes is too small for one request of "
                f"{request.reserve_tokens} tokens (needs {need} bytes)"
            )
        request.arrival = self._next_arrival
        self._next_arrival += 1
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> bool:
        """Cancel a request: its KV is freed at once. Returns False if it is unknown or already finished."""
        req = self.requests.get(request_id)
        if req is None or req.finished:
            return False
        if req.state == WAITING:
            self.waiting.remove(req)
        self._finish(req, "abort")
        return True

    def take_finished(self) -> list[Request]:
        """The requests finished (stop, length, abort, budget) since the last call; the scheduler forgets them."""
        done, self.finished = self.finished, []
        return done

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _finish(self, req: Request, reason: str) -> None:
        if req.in_flight is not None:
            self.items.pop(req.in_flight, None)
            self._dropped.append(req.in_flight)
            req.in_flight = None
        if req in self.running:
            self.running.remove(req)
        self.kv.free(req.request_id)
        req.state, req.finish_reason = FINISHED, reason
        self._released.append(req.request_id)
        del self.requests[req.request_id]  # nothing of a finished request stays (the caller holds it)
        self.finished.append(req)

    def _preempt(self, req: Request) -> None:
        """Free the request's KV and put it back at the head of the queue; it is recomputed from
        prompt + outputs when re-admitted."""
        if req.in_flight is not None:
            self.items.pop(req.in_flight, None)
            self._dropped.append(req.in_flight)
            req.in_flight = None
        self.running.remove(req)
        self.kv.free(req.request_id)
        req.state, req.num_computed = WAITING, 0
        req.num_preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(req)

    # -- one step ---------------------------------------------------------------------------
    def _growth_bytes(self, growth: dict[tuple[str, int], int]) -> int:
        return sum(self.kv.new_blocks_bytes(rid, stream, n) for (rid, stream), n in growth.items())

    def _prefill_growth(self, r: Request, n: int) -> dict[tuple[str, int], int]:
        """Worst case of a prefill chunk of ``n`` tokens: every token in the main stream and in every
        recursion stream."""
        growth = {(r.request_id, MAIN): n}
        if self.kv.spec.recursion_loop:
            growth.update({(r.request_id, s): n for s in range(self.kv.spec.num_streams)})
        return growth

    def _plan(self, step: int) -> tuple[SchedulerDecision, bool]:
        """The decision for the current running set and the pages it needs (``kv_growth``: the worst
        case, every token reaching every recursion). Decode items come first; prefill chunks take what
        the free bytes leave (a chunk is cut to fit). Returns (decision, fits): False when the decode items
        alone do not fit, or when nothing could be scheduled at all."""
        d = SchedulerDecision(step=step)
        spec = self.kv.spec
        loop = spec.recursion_loop
        growth: dict[tuple[str, int], int] = {}
        ready = [r for r in self.running if r.in_flight is None]
        entering = [r for r in ready if r.num_pending == 1]
        if self.depth_policy == "lockstep":
            entering = entering[: self.max_batch_items]
        for offset, r in enumerate(entering):
            pos = r.num_computed
            remaining = r.params.max_new_tokens - len(r.output_token_ids)
            drafts = max(0, min(self.max_draft_tokens, remaining - 1, r.max_len - 1 - pos))
            item = WorkItem(self._next_item + offset, r.request_id, pos, r.all_token_ids[pos], drafts=drafts)
            d.entering.append(item)
            growth[(r.request_id, MAIN)] = 1 + drafts
            if loop and self.depth_policy == "lockstep":
                growth.update({(r.request_id, s): 1 for s in range(spec.num_streams)})
        if self.depth_policy == "depthwise":
            pool = list(self.items.values()) + d.entering
            pool.sort(key=lambda it: (-it.depth, it.item_id))
            d.block_items = pool[: self.max_batch_items]
            if loop:
                for it in d.block_items:
                    stream, writes = self.kv.spec.stream_of(it.depth)
                    if writes:
                        growth[(it.request_id, stream)] = 1
        free = self.kv.free_bytes() - self._growth_bytes(growth)
        if free < 0:
            return d, False
        budget = self.max_prefill_tokens
        for r in ready:
            if r.num_pending <= 1 or budget == 0:
                continue
            n = min(r.num_pending, budget)
            if self._growth_bytes(self._prefill_growth(r, n)) > free:
                n = self._fitting_prefix(r, n, free)
            if n == 0:
                continue
            chunk_growth = self._prefill_growth(r, n)
            free -= self._growth_bytes(chunk_growth)
            growth.update(chunk_growth)
            budget -= n
            tokens = r.all_token_ids
            d.prefills.append(
                PrefillChunk(
                    r.request_id,
                    r.num_computed,
                    tokens[r.num_computed : r.num_computed + n],
                    samples=r.num_computed + n == len(tokens),
                )
            )
        d.kv_growth = growth
        return d, not d.empty

    def _fitting_prefix(self, r: Request, n: int, free: int) -> int:
        """The longest chunk of at most ``n`` tokens whose worst-case pages fit ``free`` bytes (0 if none)."""
        lo, hi = 0, n  # lo fits (0 tokens cost nothing), hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._growth_bytes(self._prefill_growth(r, mid)) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    def schedule(self) -> SchedulerDecision:
        """Admit what fits, plan this step and give its streams their pages (module docstring)."""
        self.step_count += 1
        while self.waiting and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            need = self.kv.reservation_bytes(req.reserve_tokens)
            if self.running and self.kv.reserved_bytes + need > self.kv.page_budget_bytes:
                break
            self.waiting.popleft()
            self.kv.reserve(req.request_id, req.reserve_tokens)
            req.state = RUNNING
            if req.scheduled_time is None:
                req.scheduled_time = time.monotonic()
            self.running.append(req)
        self.max_running = max(self.max_running, len(self.running))
        preempted = []
        while True:
            decision, fits = self._plan(self.step_count)
            if fits or not self.running:
                break
            victim = max(self.running, key=lambda r: r.arrival)
            if len(self.running) == 1:  # alone and still too big: the budget cannot hold it
                self._finish(victim, "kv_budget")
            else:
                self._preempt(victim)
                preempted.append(victim.request_id)
        for (rid, stream), n in decision.kv_growth.items():
            self.kv.grow(rid, stream, n)
        self._next_item += len(decision.entering)
        if self.depth_policy == "depthwise":
            for it in decision.entering:
                self.items[it.item_id] = it
                self.requests[it.request_id].in_flight = it.item_id
        decision.preempted = preempted
        decision.dropped_items, self._dropped = self._dropped, []
        decision.released, self._released = self._released, []
        decision.params = {r.request_id: r.params for r in self.running}
        return decision

    def update(self, decision: SchedulerDecision, result: StepResult) -> list[Request]:
        """Apply a step's result: advance the requests, append sampled tokens, finish the done ones
        (freeing their KV). The KV the runner wrote is committed first (pages planned for tokens routed
        elsewhere go back); a request's main stream is then cut to the tokens it computed (rejected
        drafts leave). Returns the requests that received a token this step."""
        for (rid, stream), n in decision.kv_growth.items():
            if rid in self.requests:
                written = result.kv_written.get((rid, stream), 0)
                if written > n:
                    raise RuntimeError(f"the runner wrote {written} entries to {(rid, stream)}, {n} were planned")
                self.kv.commit(rid, stream, written)
        for it_id in result.ran_items:
            if it_id not in self.items:
                self.computed_exited += 1
        for chunk in decision.prefills:
            if chunk.request_id in self.requests:
                self.requests[chunk.request_id].num_computed = chunk.start + len(chunk.token_ids)
        for it in decision.entering:
            if it.request_id in self.requests:
                self.requests[it.request_id].num_computed = it.position + 1
        for it_id, depth in result.depths.items():
            if it_id in self.items:
                self.items[it_id].depth = depth
        for it_id in result.exited:
            it = self.items.pop(it_id, None)
            if it is not None and it.request_id in self.requests:
                self.requests[it.request_id].in_flight = None
        progressed = []
        for rid, token in result.sampled.items():
            req = self.requests.get(rid)
            if req is None:
                continue
            accepted = result.accepted.get(rid, [])
            req.num_computed += len(accepted)  # accepted drafts already entered the model
            self.kv.truncate(rid, MAIN, req.num_computed)  # rejected drafts leave the KV
            progressed.append(req)
            for t in (*accepted, token):
                req.output_token_ids.append(t)
                if t in req.stop_token_ids:
                    self._finish(req, "stop")
                    break
                if len(req.output_token_ids) >= req.params.max_new_tokens or req.num_tokens >= req.max_len:
                    self._finish(req, "length")
                    break
        return progressed
