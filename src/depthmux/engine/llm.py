"""The engine's Python API, in the spirit of vLLM's offline ``LLM`` (SPEC 5).

::

    llm = LLM.from_pretrained("smollm2", depth_policy="depthwise", max_batch_items=64)
    outs = llm.generate(["Hello", [1, 2, 3]], SamplingParams(max_new_tokens=32))
    outs[0].token_ids, outs[0].text

Online use: ``rid = llm.add_request(prompt, params)``, then ``llm.step()`` until
``llm.has_unfinished_requests()`` is False (each step returns a :class:`RequestOutput` for every
request that received a token or ended), ``llm.abort_request(rid)`` to cancel (its KV is freed at
once); ``llm.stream(prompts, params)`` yields those step outputs. A finished request's output is kept
until read once with ``llm.output(rid)`` (``generate`` reads its own); nothing else of it stays.
``llm.stats`` holds the counters a benchmark reads (:class:`~depthmux.engine.stats.EngineStats`, a
copy). The asyncio facade is :class:`~depthmux.engine.async_llm.AsyncLLM`; both sit on one
:class:`~depthmux.engine.core.EngineCore` with an :class:`~depthmux.engine.output.OutputProcessor`.

Models: a :class:`~depthmux.recursion.RecursiveForCausalLM` (recursive, relaxed, MoR) as is; a
transformers LLaMA model (or :class:`~depthmux.lm.HFCausalLMAdapter`) converted losslessly with
``convert_llama_to_recursive(..., sharing="none")`` so that every model goes through the same stages.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Sequence

import torch

from depthmux.engine.core import EngineCore
from depthmux.engine.output import OutputProcessor, RequestOutput, prompt_token_ids
from depthmux.engine.sampling import SamplingParams
from depthmux.engine.stats import EngineStats
from depthmux.errors import DepthmuxError
from depthmux.lm import HFCausalLMAdapter, load_lm, load_saved_tokenizer, pretrained_model_dir
from depthmux.recursion import RecursiveForCausalLM, convert_llama_to_recursive


def as_recursive_model(model) -> RecursiveForCausalLM:
    """The model the engine serves: a recursive model itself, a transformers LLaMA model converted
    losslessly (``sharing="none"``) on its own device and dtype; anything else is a one-line error."""
    if isinstance(model, RecursiveForCausalLM):
        return model
    if isinstance(model, HFCausalLMAdapter):
        model = model.model
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or config is None:
        raise DepthmuxError(
            f"cannot serve a {type(model).__name__}: expected a RecursiveForCausalLM or a transformers LLaMA model"
        )
    p = next(model.parameters())
    converted = convert_llama_to_recursive(model, num_recursions=1, sharing="none")
    return converted.to(device=p.device, dtype=p.dtype)


class EngineFrontend:
    """What both facades share: the model, the core, the output processor and request intake.

    Args:
        model: a RecursiveForCausalLM or a transformers LLaMA model (put it on its device first).
        tokenizer: a transformers tokenizer, needed for string prompts, ``text`` and stop strings (optional).
        depth_policy: "depthwise" (continuous depth-wise batching) or "lockstep".
        max_batch_items: B, most decode items per shared-block call.
        max_prefill_tokens: most prefill tokens per step (longer prompts are chunked).
        max_num_seqs: most running requests.
        kv_budget_bytes: KV memory budget in bytes (None: unlimited).
        block_size: KV page size in tokens.
        seed: seed in [0, 2^63) of the generator shared by unseeded sampling requests.
        runner_factory: a decode policy's runner (early exit, :mod:`depthmux.engine.early_exit`); None: the default.
    """

    def __init__(self, model, tokenizer=None, **engine_kwargs):
        self.model = as_recursive_model(model).eval()
        self.tokenizer = tokenizer
        self.core = EngineCore(self.model, **engine_kwargs)
        self.processor = OutputProcessor(tokenizer)
        self.max_len = self.core.max_len
        self.eos_token_ids = self.core.eos_token_ids
        self._ids = itertools.count()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        **engine_kwargs,
    ):
        """Load ``path`` ("smollm2", a model folder, a run or checkpoint folder) through
        :func:`depthmux.lm.load_lm` with its saved tokenizer, and build the engine."""
        model_dir = pretrained_model_dir(str(path))
        model = load_lm(model_dir, dtype=dtype)
        if device is not None:
            model = model.to(device)
        return cls(model, load_saved_tokenizer(model_dir), **engine_kwargs)

    @property
    def kv(self):
        return self.core.kv

    @property
    def scheduler(self):
        return self.core.scheduler

    @property
    def runner(self):
        return self.core.runner

    @property
    def stats(self) -> EngineStats:
        """Counters of the runner and the scheduler (:class:`EngineStats`, a copy)."""
        return self.core.stats

    def _intake(self, prompt, sampling_params, request_id) -> str:
        """Validate and tokenize a request, hand it to the core and the output processor; returns its id."""
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise DepthmuxError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        if request_id is not None and (not isinstance(request_id, str) or not request_id):
            raise DepthmuxError(f"request_id must be a non-empty string, got {request_id!r}")
        text, ids = prompt_token_ids(prompt, self.tokenizer)
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if self.processor.has(rid):
            raise DepthmuxError(f"request id {rid!r} is already in use")
        if params.stop and self.tokenizer is None:
            raise DepthmuxError("stop strings need a tokenizer: pass tokenizer= or use stop_token_ids")
        self.core.add_request(rid, ids, params)
        self.processor.add_request(rid, text, ids, params, time.monotonic())
        return rid

    def _step(self) -> list[RequestOutput]:
        """One core step through the output processor; a request a stop string ended is aborted in the core."""
        outputs, stopped = self.processor.process(self.core.step())
        for rid in stopped:
            self.core.abort_request(rid)
        return outputs


class LLM(EngineFrontend):
    """Continuous-batching decode engine over one model, synchronous (module docstring; arguments as
    :class:`EngineFrontend`)."""

    def __init__(self, model, tokenizer=None, **engine_kwargs):
        super().__init__(model, tokenizer, **engine_kwargs)
        self._finished: dict[str, RequestOutput] = {}  # final outputs not yet read

    def add_request(self, prompt, sampling_params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a request (string or token ids); returns its id. Bad input is a one-line DepthmuxError."""
        if request_id is not None and request_id in self._finished:
            raise DepthmuxError(f"request id {request_id!r} is already in use")
        return self._intake(prompt, sampling_params, request_id)

    def abort_request(self, request_id: str) -> bool:
        """Cancel a request; its KV is freed at once. False when it is unknown or already finished."""
        return self.core.abort_request(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def output(self, request_id: str) -> RequestOutput:
        """The current output of a request; a finished one is returned once, then forgotten."""
        if request_id in self._finished:
            return self._finished.pop(request_id)
        out = self.processor.current(request_id)
        if out is None:
            raise DepthmuxError(f"unknown request id {request_id!r}")
        return out

    def step(self) -> list[RequestOutput]:
        """One engine step; outputs of the requests that received a token or ended."""
        outputs = self._step()
        for out in outputs:
            if out.finished:
                self._finished[out.request_id] = out
        return outputs

    def _add_all(self, prompts, sampling_params) -> list[str]:
        if isinstance(prompts, (bytes, bytearray)) or not isinstance(prompts, (str, Sequence, torch.Tensor)):
            raise DepthmuxError(
                f"prompts must be a string, a list of token ids, or a list of those; got {type(prompts).__name__}"
            )
        single = isinstance(prompts, str) or (
            isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) for t in prompts)
        )
        prompts = [prompts] if single else list(prompts)
        if not prompts:
            raise DepthmuxError("no prompts given")
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise DepthmuxError(f"{len(params)} sampling params for {len(prompts)} prompts")
        return [self.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]

    def generate(
        self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Generate for every prompt (strings, token-id lists, or one of them); outputs in prompt order."""
        ids = self._add_all(prompts, sampling_params)
        while any(i not in self._finished for i in ids):
            self.step()
        return [self._finished.pop(i) for i in ids]

    def stream(
        self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None
    ) -> Iterator[RequestOutput]:
        """Like :meth:`generate`, yielding each step's outputs (``new_token_ids``, ``new_text``) as they come."""
        ids = self._add_all(prompts, sampling_params)
        mine = set(ids)
        while any(i not in self._finished for i in ids):
            yield from self.step()
        for i in mine:
            self._finished.pop(i, None)
