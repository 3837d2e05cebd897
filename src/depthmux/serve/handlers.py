"""The request handling of ``depthmux serve``, independent of how it is hosted (SPEC 5b).

:class:`Serving` takes raw request bodies and returns plain dicts, or an async iterator of
server-sent-event strings for ``stream: true``; a refused request raises
:class:`~depthmux.serve.errors.APIError`. The FastAPI app (:mod:`depthmux.serve.http`) only moves bytes;
another host (a Ray Serve deployment) can wrap the same object.

* ``/v1/completions``, ``/v1/chat/completions``: each (prompt, choice) is one request of the engine's
  ``AsyncLLM``; ``n`` choices of a seeded request use seeds ``seed, seed + 1, ...``. Prompts are
  tokenised here, so a prompt longer than the context, ids outside the vocabulary or ``max_tokens``
  beyond the context are 400s before anything reaches the engine. Stop strings go to the engine and
  are also applied to the text here (the text ends before the stop string; while streaming, the last
  ``len(longest stop) - 1`` characters are held back until they cannot start one).
* Cancellation aborts: a handler that is cancelled (the client went away) cancels its choices' tasks,
  and the engine frees their KV.
* ``/v1/classify``: through a :class:`~depthmux.serve.grouping.DynamicGrouper` per classifier.
* Overload: at most ``max_running + max_queued`` generation requests and ``max_queued`` waiting
  classification inputs; beyond that, 503 with ``Retry-After``.

Length: every endpoint's logic in one host-independent object (the brief: one module a Ray Serve
deployment can reuse); the streaming and non-streaming paths share the per-choice engine loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from depthmux.errors import DepthmuxError
from depthmux.serve.errors import APIError, bad_request, overloaded, unknown_model
from depthmux.serve.grouping import DynamicGrouper
from depthmux.serve.metrics import ServerMetrics
from depthmux.serve.protocol import ChatCompletionRequest, ClassifyRequest, CompletionRequest, _Sampling, parse

SEED_MOD = 2**63


@dataclass
class ServedClassifier:
    """A loaded RevMUX (or teacher) classifier under a name. Its tokenizer is used from the event loop
    (length checks) and from the forward's worker thread: a Hugging Face fast tokenizer keeps padding
    state on one shared object, so every use holds ``lock`` (the forward itself runs outside it)."""

    name: str
    model: object  # depthmux.multiplexing.FrozenBackboneClassifier
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n(self) -> int:
        return self.model.group_size

    @property
    def labels(self) -> list[str]:
        return self.model.config.label_names

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text; a text over the backbone's limit is a 400 naming it."""
        body = self.model.body
        with self.lock:
            counts = body.token_counts(texts)
        for i, c in enumerate(counts):
            if c > body.max_length:
                raise bad_request(f"input {i} has {c} tokens, over the model's limit of {body.max_length}", "input")
        return counts

    def __call__(self, texts: list[str]) -> list[tuple[str, list[float]]]:
        """(label, probabilities) per text, consecutive N texts per group (runs in a worker thread)."""
        labels, probs = self.model.classify(texts, self.lock)
        return list(zip(labels, probs, strict=True))


@dataclass
class _Choice:
    """One (prompt, choice) request of the engine and what has been sent of it."""

    index: int
    prompt_index: int
    ids: list[int]
    params: object
    stops: tuple[str, ...]
    text: str = ""  # the visible text (cut at a stop string)
    sent: int = 0  # characters of ``text`` already streamed
    sent_limit: int = 0  # characters of ``text`` that may be streamed (a possible stop string held back)
    tokens: int = 0
    finish_reason: str | None = None
    closed: bool = False  # its last chunk (with finish_reason) was streamed


class _Slots:
    """``n`` of the server's ``max_running + max_queued`` generation places, or a 503. Taken when a request
    is checked, before any await, so concurrent requests cannot all pass the check before one of them
    counts (they did: a burst of 6 on a limit of 2 all ran); given back once, when its engine work ends,
    or when the response that holds it is dropped unstarted (a client gone before its stream began)."""

    def __init__(self, serving: Serving, n: int) -> None:
        self.serving, self.n = serving, 0
        if serving.in_flight + n > serving.max_generation:
            raise overloaded(f"the request queue ({serving.max_generation} requests)")
        serving.in_flight += n
        self.n = n

    def release(self) -> None:
        self.serving.in_flight -= self.n
        self.n = 0

    __del__ = release


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


async def _engine_errors(gen, llm):
    """``gen``'s outputs; the engine's one-line errors become API errors (503 once its loop died, else 400:
    input the checks here let through)."""
    try:
        async for out in gen:
            yield out
    except DepthmuxError as e:
        if llm.errored:
            raise APIError(503, f"the engine loop has died: {e}"[:300], None, "engine_dead") from None
        raise bad_request(str(e)) from None


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


class Serving:
    """Every endpoint's logic over one optional language model and any number of classifiers.

    Args:
        llm: an ``AsyncLLM`` (or None: classification only), with its tokenizer.
        model_name: the name clients use for it.
        classifiers: name -> :class:`ServedClassifier`.
        max_queued: waiting requests (generation) / inputs (per classifier) beyond which a 503 answers.
        max_running: generation requests the engine runs at once (its ``max_num_seqs``).
        max_batch: most classification inputs per forward.
        max_wait_ms: how long a classification input may wait for its group to fill.
    """

    def __init__(
        self,
        llm=None,
        model_name: str | None = None,
        classifiers: dict[str, ServedClassifier] | None = None,
        *,
        max_queued: int = 256,
        max_running: int = 256,
        max_batch: int = 64,
        max_wait_ms: float = 10.0,
    ) -> None:
        self.llm, self.model_name = llm, model_name
        self.tokenizer = getattr(llm, "tokenizer", None)
        self.classifiers = dict(classifiers or {})
        self.metrics = ServerMetrics(model_name, llm.snapshot if llm is not None else None)
        self.max_generation = max_running + max_queued
        self.in_flight = 0
        self.created = int(time.time())
        self.groupers = {
            name: DynamicGrouper(name, c, c.n, max_batch, max_wait_ms / 1000, max_queued, self.metrics)
            for name, c in self.classifiers.items()
        }

    # -- plain endpoints ----------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        if self.llm is not None and self.llm.errored:
            return 503, {"status": "error", "message": "the engine loop has died"}
        return 200, {"status": "ok"}

    def models(self) -> dict:
        names = ([self.model_name] if self.llm is not None else []) + list(self.classifiers)
        data = [{"id": n, "object": "model", "created": self.created, "owned_by": "depthmux"} for n in names]
        return {"object": "list", "data": data}

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    def count_error(self, status: int) -> None:
        self.metrics.http_errors.labels(str(status)).inc()

    async def close(self) -> None:
        for g in self.groupers.values():
            await g.close()
        if self.llm is not None:
            await self.llm.shutdown()

    # -- classification -----------------------------------------------------------------------
    def refuse_classify_if_full(self) -> None:
        """503 when every classifier's queue is full (any classify request would get it): callers answer
        before reading the body."""
        if self.groupers and all(g.full() for g in self.groupers.values()):
            raise overloaded("every classification queue")

    async def classify(self, raw: bytes) -> dict:
        req = parse(ClassifyRequest, raw)
        served = self.classifiers.get(req.model)
        if served is None:
            raise unknown_model(req.model)
        texts = req.texts()
        for i, t in enumerate(texts):
            if not t.strip():
                raise bad_request(f"input {i} is blank", "input")
        counts = served.token_counts(texts)
        results = await self.groupers[req.model].submit(texts)
        return {
            "id": f"classify-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": req.model,
            "data": [
                {"index": i, "label": label, "probs": probs, "num_classes": len(probs)}
                for i, (label, probs) in enumerate(results)
            ],
            "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts), "completion_tokens": 0},
        }

    # -- generation ---------------------------------------------------------------------------
    def _check_model(self, name: str) -> None:
        if self.llm is None or name != self.model_name:
            raise unknown_model(name)
        if self.llm.errored:
            raise APIError(503, "the engine loop has died", None, "engine_dead")

    def _prompt_ids(self, prompt, param: str) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise bad_request("this model has no tokenizer: give the prompt as token ids", param)
            ids = list(self.tokenizer(prompt)["input_ids"])
        else:
            ids = list(prompt)
        vocab = self.llm.model.config.vocab_size
        if not ids:
            raise bad_request("the prompt is empty after tokenisation", param)
        if max(ids) >= vocab:
            raise bad_request(f"token id {max(ids)} is outside the vocabulary [0, {vocab})", param)
        return ids

    def _choices(self, req: _Sampling, prompts: list[list[int]], max_tokens: int | None) -> list[_Choice]:
        from depthmux.engine import SamplingParams

        context = self.llm.max_len
        choices = []
        for p, ids in enumerate(prompts):
            limit = max_tokens if max_tokens is not None else context - len(ids)
            if len(ids) + limit > context:
                raise bad_request(
                    f"this model's maximum context length is {context} tokens; the prompt has {len(ids)} and "
                    f"max_tokens asks for {limit} more",
                    "max_tokens" if max_tokens is not None and len(ids) < context else "prompt",
                )
            for j in range(req.n):
                seed = None if req.seed is None else (req.seed + j) % SEED_MOD
                params = SamplingParams(
                    max_new_tokens=limit,
                    temperature=req.temperature,
                    top_p=req.top_p,
                    seed=seed,
                    stop=req.stops,
                    ignore_eos=req.ignore_eos,
                )
                choices.append(_Choice(p * req.n + j, p, ids, params, req.stops))
        return choices

    async def completions(self, raw: bytes) -> dict | AsyncIterator[str]:
        req = parse(CompletionRequest, raw)
        self._check_model(req.model)
        prompts = [self._prompt_ids(p, "prompt") for p in req.prompts()]
        choices = self._choices(req, prompts, req.max_tokens)
        return self._respond(req, choices, prompts, chat=False)

    async def chat(self, raw: bytes) -> dict | AsyncIterator[str]:
        req = parse(ChatCompletionRequest, raw)
        self._check_model(req.model)
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise bad_request(f"the model {self.model_name!r} has no chat template: use /v1/completions", "messages")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # a template that raises on this conversation (e.g. roles out of order)
            raise bad_request(f"the chat template refused these messages: {str(e)[:200]}", "messages") from None
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        prompts = [self._prompt_ids(ids, "messages")]
        choices = self._choices(req, prompts, req.limit)
        return self._respond(req, choices, prompts, chat=True)

    def _respond(self, req, choices, prompts, chat: bool):
        slots = _Slots(self, len(choices))  # 503 beyond the limit; taken before the first await
        meta = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": req.model,
        }
        if req.stream:
            return self._stream(req, choices, prompts, chat, meta, slots)
        return self._complete(choices, prompts, chat, meta, slots)

    async def _run(self, choice: _Choice, queue: asyncio.Queue | None) -> None:
        """Drive one engine request, keep ``choice`` current, put it on ``queue`` after each output."""
        name = self.model_name
        start = last = time.monotonic()
        first = queued = None
        hold = max((len(s) for s in choice.stops), default=1) - 1
        gen = self.llm.generate(choice.ids, choice.params, request_id=f"{uuid.uuid4().hex}-{choice.index}")
        try:
            async for out in _engine_errors(gen, self.llm):
                now = time.monotonic()
                if queued is None and out.scheduled_time is not None:  # the engine's admission time
                    queued = out.scheduled_time - out.arrival_time
                    self.metrics.queue_time.labels(name).observe(max(0.0, queued))
                if first is None and out.token_ids:
                    first = now
                    self.metrics.ttft.labels(name).observe(now - start)
                elif out.new_token_ids:
                    self.metrics.itl.labels(name).observe(now - last)
                last = now
                choice.tokens = len(out.token_ids)
                text, stopped = _cut_at_stop(out.text or "", choice.stops)
                choice.text = text
                if stopped or out.finished:
                    reason = "stop" if stopped else out.finish_reason
                    choice.finish_reason = "length" if reason == "kv_budget" else reason
                    choice.sent_limit = len(text)
                else:
                    choice.sent_limit = max(0, len(text) - hold)
                if queue is not None:
                    queue.put_nowait(choice)
                if stopped and not out.finished:
                    break  # the engine did not see the stop string: leaving the loop aborts the request
                if out.finished:
                    break
        finally:
            await gen.aclose()
        end = time.monotonic()
        self.metrics.e2e.labels(name).observe(end - start)
        if choice.tokens > 1 and first is not None:
            self.metrics.tpot.labels(name).observe((end - first) / (choice.tokens - 1))
        self.metrics.request_success.labels(name, choice.finish_reason or "abort").inc()

    async def _gather(self, choices, queue, slots: _Slots) -> None:
        tasks = [asyncio.ensure_future(self._run(c, queue)) for c in choices]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            slots.release()

    def _usage(self, choices, prompts) -> dict:
        prompt = sum(len(p) for p in prompts)
        completion = sum(c.tokens for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _complete(self, choices, prompts, chat, meta, slots) -> dict:
        await self._gather(choices, None, slots)
        out = []
        for c in choices:
            if chat:
                body = {"message": {"role": "assistant", "content": c.text}}
            else:
                body = {"text": c.text}
            out.append({"index": c.index, **body, "logprobs": None, "finish_reason": c.finish_reason})
        return {
            **meta,
            "object": "chat.completion" if chat else "text_completion",
            "choices": out,
            "usage": self._usage(choices, prompts),
        }

    async def _stream(self, req, choices, prompts, chat, meta, slots) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        usage_field = {"usage": None} if req.include_usage else {}

        def chunk(c: _Choice, delta: str, finish: str | None, first: bool = False) -> str:
            if chat:
                d = {"role": "assistant", "content": delta} if first else ({"content": delta} if delta else {})
                choice = {"index": c.index, "delta": d, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": c.index, "text": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**meta, "object": obj, "choices": [choice], **usage_field})

        queue: asyncio.Queue = asyncio.Queue()
        runner = asyncio.ensure_future(self._gather(choices, queue, slots))
        runner.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            if chat:
                for c in choices:
                    yield chunk(c, "", None, first=True)
            finished = 0
            while finished < len(choices):
                c = await queue.get()
                if c is None:  # the runner ended before every choice finished: an engine error
                    break
                delta = c.text[c.sent : c.sent_limit]
                done = c.finish_reason is not None and c.sent_limit == len(c.text)
                if delta or done:
                    c.sent = c.sent_limit
                    if done and not c.closed:
                        c.closed = True
                        finished += 1
                        yield chunk(c, delta, c.finish_reason)
                    elif delta:
                        yield chunk(c, delta, None)
            if not runner.done():
                await runner
            if runner.exception() is not None:
                raise runner.exception()
            if req.include_usage:
                yield _sse({**meta, "object": obj, "choices": [], "usage": self._usage(choices, prompts)})
        except APIError as e:
            yield _sse(e.body())
        except Exception as e:  # an engine fault after the stream began: an error chunk, then [DONE]
            yield _sse(APIError(500, f"generation failed: {type(e).__name__}: {e}"[:300]).body())
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
        yield DONE
