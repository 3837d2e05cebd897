"""The engine's Python API, in the spirit of vLLM's offline ``LLM`` (SPEC 5).

::

    llm = LLM.from_pretrained("smollm2", depth_policy="depthwise", max_batch_items=64)
    outs = llm.generate(["Hello", [1, 2, 3]], SamplingParams(max_new_tokens=32))
    outs[0].token_ids, outs[0].text

Online use: ``rid = llm.add_request(prompt, params)``, then ``llm.step()`` until
``llm.has_unfinished_requests()`` is False (each step returns a :class:`RequestOutput` for every
request that received a token), ``llm.abort_request(rid)`` to cancel (its KV is freed at once);
``llm.stream(prompts, params)`` yields those step outputs. ``llm.stats`` holds the counters a
benchmark reads (:class:`~depthmux.engine.stats.EngineStats`).

Models: a :class:`~depthmux.recursion.RecursiveForCausalLM` (recursive, relaxed, MoR) as is; a
transformers LLaMA model (or :class:`~depthmux.lm.HFCausalLMAdapter`) converted losslessly with
``convert_llama_to_recursive(..., sharing="none")`` so that every model goes through the same stages.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from depthmux.engine.kv_manager import KVManager, KVSpec
from depthmux.engine.runner import ModelRunner
from depthmux.engine.sampling import SamplingParams
from depthmux.engine.scheduler import Request, Scheduler
from depthmux.engine.stats import EngineStats
from depthmux.errors import DepthmuxError
from depthmux.lm import HFCausalLMAdapter, load_lm, load_saved_tokenizer, pretrained_model_dir
from depthmux.recursion import RecursiveForCausalLM, convert_llama_to_recursive

UNLIMITED_KV_BYTES = 1 << 44


@dataclass
class RequestOutput:
    """A request's output so far.

    Attributes:
        request_id: its id.
        prompt: the prompt text (None when given as token ids).
        prompt_token_ids: the prompt's tokens.
        token_ids: generated tokens so far (a stop token that ended it included).
        new_token_ids: tokens generated in the step that produced this output.
        text: ``token_ids`` decoded (None without a tokenizer).
        finished: whether it is done.
        finish_reason: "stop", "length", "aborted", "kv_budget" or None.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    new_token_ids: list[int]
    text: str | None
    finished: bool
    finish_reason: str | None


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


class LLM:
    """Continuous-batching decode engine over one model (module docstring).

    Args:
        model: a RecursiveForCausalLM or a transformers LLaMA model (put it on its device first).
        tokenizer: a transformers tokenizer, needed for string prompts and ``text`` (optional).
        depth_policy: "depthwise" (continuous depth-wise batching) or "lockstep".
        max_batch_items: B, most decode items per shared-block call.
        max_prefill_tokens: most prefill tokens per step (longer prompts are chunked).
        max_num_seqs: most running requests.
        kv_budget_bytes: KV memory budget in bytes (None: unlimited).
        block_size: KV page size in tokens.
        seed: seed of the generator shared by unseeded sampling requests.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        depth_policy: str = "depthwise",
        max_batch_items: int = 64,
        max_prefill_tokens: int = 512,
        max_num_seqs: int = 256,
        kv_budget_bytes: int | None = None,
        block_size: int = 16,
        seed: int = 0,
    ):
        self.model = as_recursive_model(model).eval()
        self.tokenizer = tokenizer
        cfg = self.model.config
        self.max_len = int(cfg.max_position_embeddings)
        p = next(self.model.parameters())
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
            self.model.model.num_recursion_steps,
        )
        self.runner = ModelRunner(self.model, self.kv, depth_policy, self.max_len, seed)
        eos = cfg.eos_token_id
        self.eos_token_ids = frozenset([] if eos is None else [eos] if isinstance(eos, int) else list(eos))
        self._prompts: dict[str, str | None] = {}
        self._ids = itertools.count()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        **engine_kwargs,
    ) -> LLM:
        """Load ``path`` ("smollm2", a model folder, a run or checkpoint folder) through
        :func:`depthmux.lm.load_lm` with its saved tokenizer, and build the engine."""
        model_dir = pretrained_model_dir(str(path))
        model = load_lm(model_dir, dtype=dtype)
        if device is not None:
            model = model.to(device)
        return cls(model, load_saved_tokenizer(model_dir), **engine_kwargs)

    # -- requests ---------------------------------------------------------------------------
    def _prompt_ids(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise DepthmuxError("string prompts need a tokenizer: pass tokenizer= or give token ids")
            if not prompt:
                raise DepthmuxError("empty prompt")
            return prompt, list(self.tokenizer(prompt)["input_ids"])
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.flatten().tolist()
        if not isinstance(prompt, Sequence) or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise DepthmuxError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        return None, list(prompt)

    def add_request(self, prompt, sampling_params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a request (string or token ids); returns its id. Bad input is a one-line DepthmuxError."""
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise DepthmuxError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        text, ids = self._prompt_ids(prompt)
        if not ids:
            raise DepthmuxError("empty prompt")
        V = self.model.config.vocab_size
        if min(ids) < 0 or max(ids) >= V:
            raise DepthmuxError(f"prompt token ids must be in [0, {V}), got {min(ids)}..{max(ids)}")
        if len(ids) > self.max_len:
            raise DepthmuxError(f"prompt of {len(ids)} tokens is longer than the model's context of {self.max_len}")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        stops = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eos_token_ids)
        self.scheduler.add_request(Request(rid, ids, params, stops, self.max_len, arrival=0))
        self._prompts[rid] = text
        return rid

    def abort_request(self, request_id: str) -> bool:
        """Cancel a request; its KV is freed at once. False when it is unknown or already finished."""
        return self.scheduler.abort_request(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def _output(self, req: Request, new: list[int]) -> RequestOutput:
        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode(req.output_token_ids, skip_special_tokens=True)
        return RequestOutput(
            req.request_id,
            self._prompts.get(req.request_id),
            list(req.prompt_token_ids),
            list(req.output_token_ids),
            new,
            text,
            req.finished,
            req.finish_reason,
        )

    def output(self, request_id: str) -> RequestOutput:
        """The current output of a request."""
        req = self.scheduler.requests.get(request_id)
        if req is None:
            raise DepthmuxError(f"unknown request id {request_id!r}")
        return self._output(req, [])

    # -- running ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One engine step; outputs of the requests that received a token (or were ended by the budget)."""
        decision = self.scheduler.schedule()
        outputs = [
            self._output(self.scheduler.requests[r], [])
            for r in decision.released
            if self.scheduler.requests[r].finish_reason == "kv_budget"
        ]
        if decision.empty:
            return outputs
        result = self.runner.execute(decision)
        before = {r.request_id: len(r.output_token_ids) for r in self.scheduler.running}
        for req in self.scheduler.update(decision, result):  # several tokens when speculative drafts were accepted
            outputs.append(self._output(req, req.output_token_ids[before[req.request_id] :]))
        return outputs

    def _add_all(self, prompts, sampling_params) -> list[str]:
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
        while any(not self.scheduler.requests[i].finished for i in ids):
            self.step()
        return [self.output(i) for i in ids]

    def stream(
        self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None
    ) -> Iterator[RequestOutput]:
        """Like :meth:`generate`, yielding each step's outputs (``new_token_ids``) as they come."""
        ids = self._add_all(prompts, sampling_params)
        while any(not self.scheduler.requests[i].finished for i in ids):
            yield from self.step()

    @property
    def stats(self) -> EngineStats:
        """Counters of the runner and the scheduler (:class:`EngineStats`)."""
        s = self.runner.stats
        s.preemptions = self.scheduler.preemptions
        s.computed_exited = self.scheduler.computed_exited
        s.kv_bytes_in_use = self.kv.bytes_in_use
        s.kv_bytes_peak = self.kv.peak_bytes
        s.kv_entries_written = self.kv.entries_written
        return s
