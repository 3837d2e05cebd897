"""Prometheus metrics of one server (SPEC 5b), with vLLM's names under the ``depthmux:`` prefix where the
concept is the same, plus RevMUX's own: how full the groups of N are and how long an input waited for one.

The engine's gauges and token counters are read from ``AsyncLLM.snapshot()`` at scrape time (a custom
collector), so they are never stale; latencies are observed by the request handling as requests finish.
Each server owns its :class:`CollectorRegistry` (several servers in one process do not mix).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "depthmux:"
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80)
FILL_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


#: (kind, metric name, snapshot key, help) of the engine's values, read at scrape time.
ENGINE_VALUES = (
    ("gauge", "num_requests_running", "num_requests_running", "Requests in the engine's running batch."),
    ("gauge", "num_requests_waiting", "num_requests_waiting", "Requests waiting for admission."),
    ("gauge", "kv_cache_usage_perc", "kv_cache_usage", "KV-cache usage, 1 = the whole budget."),
    ("gauge", "kv_pages_used", "kv_pages_used", "KV pages held by requests."),
    ("counter", "prompt_tokens", "prompt_tokens", "Prefill tokens processed."),
    ("counter", "generation_tokens", "generation_tokens", "Tokens generated."),
    ("counter", "num_preemptions", "num_preemptions", "Requests preempted for KV memory."),
    # an early-exit model (--exit-threshold / --speculative) only
    ("counter", "early_exit_shallow_tokens", "early_exit_shallow_tokens", "Decode tokens through the shallow layers."),
    ("counter", "early_exit_exited_tokens", "early_exit_exited_tokens", "Tokens emitted from the shallow exit."),
    ("counter", "early_exit_deep_passes", "early_exit_deep_passes", "Decode rows that ran the deep layers."),
    ("counter", "early_exit_drafted_tokens", "early_exit_drafted_tokens", "Self-speculative drafts made."),
    ("counter", "early_exit_accepted_tokens", "early_exit_accepted_tokens", "Self-speculative drafts accepted."),
)
FAMILIES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}


class _EngineCollector:
    """Gauges and counters from the engine's snapshot dict (names as in vLLM)."""

    def __init__(self, snapshot: Callable[[], dict | None], model: str) -> None:
        self.snapshot, self.model = snapshot, model

    def describe(self):
        return []

    def collect(self):
        s = self.snapshot()
        if s is None:
            return
        for kind, name, key, doc in ENGINE_VALUES:
            if key not in s:  # e.g. the early-exit counters of a plain engine
                continue
            family = FAMILIES[kind](PREFIX + name, doc, labels=["model_name"])
            family.add_metric([self.model], float(s[key]))
            yield family


class ServerMetrics:
    """Everything ``/metrics`` shows. ``engine_snapshot`` returns the engine's snapshot (or None without one)."""

    def __init__(self, model: str | None = None, engine_snapshot: Callable[[], dict | None] | None = None) -> None:
        disable_created_metrics()  # no ``*_created`` samples (process-wide; vLLM does the same)
        self.registry = r = CollectorRegistry()
        if engine_snapshot is not None and model is not None:
            r.register(_EngineCollector(engine_snapshot, model))
        m = ["model_name"]

        def histogram(name: str, doc: str, buckets=LATENCY_BUCKETS) -> Histogram:
            return Histogram(PREFIX + name, doc, m, buckets=buckets, registry=r)

        self.request_success = Counter(
            PREFIX + "request_success", "Finished requests by finish reason.", [*m, "finished_reason"], registry=r
        )
        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.")
        self.queue_time = histogram(
            "request_queue_time_seconds",
            "Time a generation request waited in the engine's queue: from its arrival at the engine until the "
            "scheduler first admitted it (as vLLM's queue time).",
        )
        self.itl = histogram("inter_token_latency_seconds", "Gap between tokens.")
        self.tpot = histogram("request_time_per_output_token_seconds", "(latency - TTFT) / (output tokens - 1).")
        self.e2e = histogram("e2e_request_latency_seconds", "End-to-end latency.")
        self.http_errors = Counter(PREFIX + "http_errors", "Refused requests by HTTP status.", ["status"], registry=r)
        # RevMUX classification
        self.classify_inputs = Counter(PREFIX + "classify_inputs", "Inputs classified.", m, registry=r)
        self.classify_queued = Gauge(PREFIX + "classify_queued_inputs", "Inputs waiting for a group.", m, registry=r)
        self.group_fill = histogram(
            "classify_group_fill",
            "Share of the N slots of each forward's groups holding real inputs (dummies fill the rest).",
            FILL_BUCKETS,
        )
        self.group_wait = histogram(
            "classify_group_wait_seconds", "Time an input waited in the queue before its group ran."
        )
        self.forward_inputs = histogram(
            "classify_forward_inputs",
            "Real inputs per classifier forward pass.",
            (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
