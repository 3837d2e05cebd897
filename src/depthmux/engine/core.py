"""The engine core: scheduler + KV manager + model runner, stepped (SPEC 5, vLLM v1's ``EngineCore``).

:class:`EngineCore` takes requests as token ids (``add_request``), cancels them (``abort_request``)
and runs one step at a time (``step``): schedule, run the model, apply the result. Each step returns
a :class:`~depthmux.engine.output.CoreOutput` per request that received tokens or ended. Nothing of a
finished or aborted request stays in the core: the scheduler forgets it, its KV pages go back at
once, the runner drops its generator and in-flight state (on the next decision, empty or not).
Text (tokenizing, detokenizing, stop strings) is the facades' job
(:class:`~depthmux.engine.output.OutputProcessor`).
"""

from __future__ import annotations

from collections.abc import Callable

from depthmux.engine.kv_manager import KVManager, KVSpec
from depthmux.engine.output import CoreOutput
from depthmux.engine.runner import ModelRunner
from depthmux.engine.sampling import SamplingParams, check_engine_seed
from depthmux.engine.scheduler import Request, Scheduler
from depthmux.engine.stats import EngineStats
from depthmux.errors import DepthmuxError
from depthmux.recursion import RecursiveForCausalLM

UNLIMITED_KV_BYTES = 1 << 44

RunnerFactory = Callable[[RecursiveForCausalLM, KVManager, int, int], ModelRunner]
"""``factory(model, kv, max_len, seed)`` -> the runner (default: :class:`ModelRunner`; early exit
passes its own policy runner)."""


class EngineCore:
    """One model's decode engine without text (module docstring).

    Args:
        model: a RecursiveForCausalLM in eval mode on its device (the facades convert LLaMA models).
        depth_policy, max_batch_items, max_prefill_tokens, max_num_seqs, kv_budget_bytes, block_size, seed:
            as :class:`~depthmux.engine.LLM`.
        runner_factory: builds the runner (:data:`RunnerFactory`); None: :class:`ModelRunner`.
        max_draft_tokens: tokens a decode item may draft per step (self-speculative k; 0 otherwise), so
            the scheduler plans their pages.
    """

    def __init__(
        self,
        model: RecursiveForCausalLM,
        *,
        depth_policy: str = "depthwise",
        max_batch_items: int = 64,
        max_prefill_tokens: int = 512,
        max_num_seqs: int = 256,
        kv_budget_bytes: int | None = None,
        block_size: int = 16,
        seed: int = 0,
        runner_factory: RunnerFactory | None = None,
        max_draft_tokens: int = 0,
    ):
        check_engine_seed("seed", seed)
        self.model = model
        cfg = model.config
        self.max_len = int(cfg.max_position_embeddings)
        self.vocab_size = int(cfg.vocab_size)
        p = next(model.parameters())
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
            raise DepthmuxError(f"block_size must be a positive integer, got {block_size!r}")
        spec = KVSpec.from_config(cfg, dtype=p.dtype, block_size=block_size)
        budget = UNLIMITED_KV_BYTES if kv_budget_bytes is None else kv_budget_bytes
        self.kv = KVManager(spec, budget, device=p.device, dtype=p.dtype)
        self.scheduler = Scheduler(
            self.kv,
            depth_policy,
            max_batch_items,
            max_prefill_tokens,
            max_num_seqs,
            model.model.num_recursion_steps,
            max_draft_tokens,
        )
        if runner_factory is None:
            self.runner = ModelRunner(model, self.kv, depth_policy, self.max_len, seed)
        else:
            self.runner = runner_factory(model, self.kv, self.max_len, seed)
        eos = cfg.eos_token_id
        self.eos_token_ids = frozenset([] if eos is None else [eos] if isinstance(eos, int) else list(eos))

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Queue a request; bad input (ids out of range, too long, a reused id) is a one-line DepthmuxError."""
        ids = list(prompt_token_ids)
        if not ids:
            raise DepthmuxError("empty prompt")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise DepthmuxError(f"prompt token ids must be in [0, {self.vocab_size}), got {min(ids)}..{max(ids)}")
        if len(ids) > self.max_len:
            raise DepthmuxError(f"prompt of {len(ids)} tokens is longer than the model's context of {self.max_len}")
        bad_stops = [t for t in params.stop_token_ids if not 0 <= t < self.vocab_size]
        if bad_stops:
            raise DepthmuxError(f"stop token ids must be in [0, {self.vocab_size}), got {bad_stops[0]}")
        stops = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eos_token_ids)
        self.scheduler.add_request(Request(request_id, ids, params, stops, self.max_len, arrival=0))

    def abort_request(self, request_id: str) -> bool:
        """Cancel a request: its KV is freed now; the next :meth:`step` reports it finished ("abort").
        False when it is unknown or already finished."""
        return self.scheduler.abort_request(request_id)

    def step(self) -> list[CoreOutput]:
        """One engine step: the requests that received tokens or ended (each at most once)."""
        decision = self.scheduler.schedule()
        outputs: dict[str, CoreOutput] = {}
        if decision.empty:
            self.runner.forget(decision)
        else:
            result = self.runner.execute(decision)
            before = {r.request_id: len(r.output_token_ids) for r in self.scheduler.running}
            for req in self.scheduler.update(decision, result):  # several tokens: accepted speculative drafts
                new = req.output_token_ids[before[req.request_id] :]
                outputs[req.request_id] = CoreOutput(req.request_id, new, scheduled_time=req.scheduled_time)
        for req in self.scheduler.take_finished():
            out = outputs.setdefault(req.request_id, CoreOutput(req.request_id, [], scheduled_time=req.scheduled_time))
            out.finished, out.finish_reason = True, req.finish_reason
        return list(outputs.values())

    # -- read-only views --------------------------------------------------------------------
    def has_unfinished_requests(self) -> bool:
        """Requests waiting or running, or ended but not yet reported by :meth:`step`."""
        return self.scheduler.has_unfinished() or bool(self.scheduler.finished)

    @property
    def stats(self) -> EngineStats:
        """A copy of the runner's counters with the scheduler's and the KV manager's (reading changes nothing)."""
        s = self.runner.stats.copy()
        s.preemptions = self.scheduler.preemptions
        s.computed_exited = self.scheduler.computed_exited
        s.kv_bytes_in_use = self.kv.bytes_in_use
        s.kv_bytes_peak = self.kv.peak_bytes
        s.kv_entries_written = self.kv.entries_written
        s.kv_tensor_bytes = self.kv.allocated_bytes()
        s.max_running = self.scheduler.max_running
        return s
