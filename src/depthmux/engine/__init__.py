"""The decode engine: continuous batching and continuous depth-wise batching (SPEC 5), level 5.

vLLM's v1 split, each part testable alone:

* :mod:`depthmux.engine.scheduler`: pure bookkeeping (:class:`Request`, :class:`WorkItem`,
  :class:`SchedulerDecision`, :class:`Scheduler`; admission under a KV budget in bytes; depth
  policies "lockstep" and "depthwise");
* :mod:`depthmux.engine.kv_manager`: paged KV memory (:class:`KVSpec` byte accounting,
  :class:`KVManager`, main / recursion-wise / shared streams, freed on finish and cancel);
* :mod:`depthmux.engine.runner`: :class:`ModelRunner` turns a decision into tensors and calls the
  model's public stages; :mod:`depthmux.engine.stats`: :class:`EngineStats` counters;
* :mod:`depthmux.engine.sampling`: :class:`SamplingParams` (validated), batched sampling;
* :mod:`depthmux.engine.llm`: :class:`LLM` (``generate``, ``add_request`` / ``step`` /
  ``abort_request``, ``stream``, ``from_pretrained``) and :class:`RequestOutput`.
"""

from depthmux.engine.kv_manager import MAIN, KVManager, KVSpec, PagedCache, PagedLayerKV, StreamBinding
from depthmux.engine.llm import LLM, RequestOutput, as_recursive_model
from depthmux.engine.runner import ModelRunner
from depthmux.engine.sampling import SamplingParams, sample_next_tokens
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
    "EngineStats",
    "KVManager",
    "KVSpec",
    "ModelRunner",
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
]
