"""The decode engine: continuous batching and continuous depth-wise batching (SPEC 5), level 6.

vLLM v1's split, each part testable alone:

* :mod:`depthmux.engine.scheduler`: pure bookkeeping (:class:`Request`, :class:`WorkItem`,
  :class:`SchedulerDecision`, :class:`Scheduler`; admission under a KV budget in bytes; depth
  policies "lockstep" and "depthwise"); it forgets a request the moment it finishes;
* :mod:`depthmux.engine.kv_manager`: paged KV memory (:class:`KVSpec` byte accounting,
  :class:`KVManager`, main / recursion-wise / shared streams, freed on finish and cancel);
* :mod:`depthmux.engine.runner`: :class:`ModelRunner` turns a decision into tensors and calls the
  model's public stages; :mod:`depthmux.engine.stats`: :class:`EngineStats` counters;
* :mod:`depthmux.engine.sampling`: :class:`SamplingParams` (validated), the one sampling implementation;
* :mod:`depthmux.engine.core`: :class:`EngineCore` (``add_request`` / ``abort_request`` / ``step``
  on token ids);
* :mod:`depthmux.engine.output`: :class:`OutputProcessor` (incremental detokenization, stop strings)
  and :class:`RequestOutput`;
* :mod:`depthmux.engine.llm`: :class:`LLM`, the synchronous facade (``generate``, ``add_request`` /
  ``step`` / ``abort_request``, ``stream``, ``from_pretrained``);
* :mod:`depthmux.engine.async_llm`: :class:`AsyncLLM`, the asyncio facade for a server.

The serving interface (what ``depthmux.serve`` codes against)::

    from depthmux.engine import AsyncLLM, EngineCore, LLM, SamplingParams, RequestOutput
    llm = AsyncLLM(model, tokenizer, **same_keyword_args_as_LLM)   # or AsyncLLM.from_pretrained(path, **kw)
    async for out in llm.generate(prompt, params, request_id=None):  # prompt: str or list[int]
        out.new_token_ids; out.new_text     # this step's tokens and text delta (incremental detokenization;
                                            # text that may still become part of a stop string is held back)
        out.text; out.token_ids; out.prompt_token_ids; out.finished
        out.finish_reason                   # "stop" | "length" | "abort" (and, rarely, "kv_budget": the
                                            # budget cannot hold the request even alone)
        out.arrival_time; out.first_token_time; out.finish_time   # time.monotonic(), None until known
    # a consumer that stops iterating (aclose / break / task cancelled) aborts its request: its KV is
    # freed before the next engine step
    await llm.abort(request_id)             # its consumer gets a last output with finish_reason "abort"
    llm.errored -> bool                     # True once the engine loop died
    llm.snapshot() -> dict                  # num_requests_running, num_requests_waiting, kv_cache_usage
                                            # (0..1 of the budget), kv_pages_used, num_preemptions,
                                            # prompt_tokens, generation_tokens (totals)
    await llm.shutdown()

``SamplingParams(stop=("\n\n",), stop_token_ids=(...), ...)``: stop strings are matched on the text
across token boundaries and cut from the output (with what follows), as OpenAI does. Bad input is a
one-line ``DepthmuxError``: from ``generate`` at its first iteration (the request fails alone).
Deviation from the brief: ``finish_reason`` may also be "kv_budget" (see above).
"""

from depthmux.engine.async_llm import AsyncLLM
from depthmux.engine.core import EngineCore
from depthmux.engine.kv_manager import MAIN, KVManager, KVSpec, PagedCache, PagedLayerKV, StreamBinding
from depthmux.engine.llm import LLM, as_recursive_model
from depthmux.engine.output import CoreOutput, OutputProcessor, RequestOutput
from depthmux.engine.runner import ModelRunner
from depthmux.engine.sampling import TEMPERATURE_FLOOR, SamplingParams, sample_next_tokens, sampling_probs
from depthmux.engine.scheduler import (
    DEPTH_POLICIES,
    PrefillChunk,
    Request,
    Scheduler,
    SchedulerDecision,
    StepResult,
    WorkItem,
)
from depthmux.engine.stats import EngineStats

__all__ = [
    "DEPTH_POLICIES",
    "LLM",
    "MAIN",
    "TEMPERATURE_FLOOR",
    "AsyncLLM",
    "CoreOutput",
    "EngineCore",
    "EngineStats",
    "KVManager",
    "KVSpec",
    "ModelRunner",
    "OutputProcessor",
    "PagedCache",
    "PagedLayerKV",
    "PrefillChunk",
    "Request",
    "RequestOutput",
    "SamplingParams",
    "Scheduler",
    "SchedulerDecision",
    "StepResult",
    "StreamBinding",
    "WorkItem",
    "as_recursive_model",
    "sample_next_tokens",
    "sampling_probs",
]
