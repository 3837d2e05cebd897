"""Serving an early-exit model (SPEC 2, SPEC 5b): ``depthmux serve --model RUN --exit-threshold T`` (FREE)
or ``--speculative K`` (self-speculative, output equal to deep greedy). A model from ``depthmux ee train-head``
decides its exits with its learned confidence head (the engine's policy default, ``confidence=None``).

:class:`AsyncEarlyExitLLM` is the engine's :class:`~depthmux.engine.early_exit.EarlyExitLLM` (its runner,
its policy checks, the lockstep depth policy) driven by :class:`~depthmux.engine.AsyncLLM`'s asyncio loop,
so the request handling serves it as any other engine. Its ``snapshot()`` adds the early-exit counters,
which ``/metrics`` shows. An early-exit folder served without either option is served as the deep model
(the plain engine: threshold 1.0 would give the same tokens and pay the shallow exit's LM head on each).
"""

from __future__ import annotations

from depthmux.early_exit import EarlyExitConfig
from depthmux.engine import AsyncLLM
from depthmux.engine.early_exit import EarlyExitLLM, EarlyExitPolicy
from depthmux.errors import require
from depthmux.lm import pretrained_model_dir
from depthmux.utils.checks import check_float, check_int, check_model_folder

#: snapshot key -> the :class:`~depthmux.engine.early_exit.EarlyExitStats` counter it reads.
EARLY_EXIT_COUNTERS = {
    "early_exit_shallow_tokens": "shallow_tokens",
    "early_exit_exited_tokens": "exited_tokens",
    "early_exit_deep_passes": "deep_passes",
    "early_exit_drafted_tokens": "drafted_tokens",
    "early_exit_accepted_tokens": "accepted_tokens",
}


class AsyncEarlyExitLLM(EarlyExitLLM, AsyncLLM):
    """:class:`EarlyExitLLM` behind :class:`AsyncLLM`'s loop: ``AsyncEarlyExitLLM.from_pretrained(path,
    policy=EarlyExitPolicy(...), **engine_kwargs)``. Use it as an ``AsyncLLM`` (``generate`` is the async
    one); the synchronous ``LLM`` methods it inherits (``step``, ``add_request``, ...) must not be called
    while its loop runs."""

    generate = AsyncLLM.generate

    def snapshot(self) -> dict:
        stats = self.early_exit_stats
        return {**super().snapshot(), **{k: getattr(stats, v) for k, v in EARLY_EXIT_COUNTERS.items()}}


def early_exit_policy(model: str | None, exit_threshold: float | None, speculative: int | None):
    """The :class:`EarlyExitPolicy` of ``--exit-threshold`` / ``--speculative`` (None when neither is given),
    checked before anything loads: one of them, a value in range, and ``model`` an early-exit folder."""
    if exit_threshold is None and speculative is None:
        return None
    option = "--speculative" if speculative is not None else "--exit-threshold"
    require(
        exit_threshold is None or speculative is None,
        "--exit-threshold and --speculative are two modes: give one (self-speculation uses no threshold)",
    )
    require(model is not None, f"{option} needs --model (an early-exit model from 'depthmux ee train')")
    if speculative is not None:
        check_int("--speculative", speculative, 1)
    else:
        check_float("--exit-threshold", exit_threshold, 0, 1)
    kind = check_model_folder(pretrained_model_dir(model), weights=False).get("model_type")
    require(
        kind == EarlyExitConfig.model_type,
        f"{option} needs an early-exit model (model type {EarlyExitConfig.model_type!r}, from 'depthmux ee "
        f"train'); {model} holds a {kind!r} model",
    )
    if speculative is not None:
        return EarlyExitPolicy(mode="speculative", draft_tokens=speculative).validate()
    return EarlyExitPolicy(mode="exit", threshold=float(exit_threshold)).validate()
