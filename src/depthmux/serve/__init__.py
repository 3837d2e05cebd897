"""Serving (SPEC 5b), level 8: an OpenAI-compatible HTTP server over the engine's ``AsyncLLM`` and
RevMUX classifiers with dynamic grouping, and a load generator.

* :mod:`depthmux.serve.protocol`: request models (pydantic) and :func:`parse` (400 naming the field);
* :mod:`depthmux.serve.errors`: :class:`APIError`, OpenAI's error shape;
* :mod:`depthmux.serve.grouping`: :class:`DynamicGrouper` (a group runs when N inputs wait or the
  oldest waited ``max_wait``; several groups per forward at load);
* :mod:`depthmux.serve.handlers`: :class:`Serving`, every endpoint's logic, independent of the host;
* :mod:`depthmux.serve.http`: the FastAPI app (:func:`build_app`); :mod:`depthmux.serve.server`:
  :class:`ServeConfig`, :func:`build_serving`, :func:`run_server` (uvicorn);
* :mod:`depthmux.serve.early_exit`: :class:`AsyncEarlyExitLLM` (an early-exit model, ``--exit-threshold`` /
  ``--speculative``);
* :mod:`depthmux.serve.metrics`: Prometheus metrics with vLLM's names;
* :mod:`depthmux.serve.bench`: :class:`BenchConfig`, :func:`run_bench`, :func:`wait_until_healthy`.
"""

from depthmux.serve.bench import BenchConfig, run_bench, wait_until_healthy
from depthmux.serve.errors import APIError
from depthmux.serve.grouping import DynamicGrouper
from depthmux.serve.handlers import ServedClassifier, Serving
from depthmux.serve.http import build_app
from depthmux.serve.metrics import ServerMetrics
from depthmux.serve.protocol import ChatCompletionRequest, ClassifyRequest, CompletionRequest, parse
from depthmux.serve.server import ServeConfig, build_serving, parse_classifiers, run_server

__all__ = [
    "APIError",
    "BenchConfig",
    "ChatCompletionRequest",
    "ClassifyRequest",
    "CompletionRequest",
    "DynamicGrouper",
    "ServeConfig",
    "ServedClassifier",
    "ServerMetrics",
    "Serving",
    "build_app",
    "build_serving",
    "parse",
    "parse_classifiers",
    "run_bench",
    "run_server",
    "wait_until_healthy",
]
