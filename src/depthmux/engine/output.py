"""Output processing of the decode engine (SPEC 5, vLLM v1's output processor; our own code).

:class:`OutputProcessor` turns the core's per-step token lists (:class:`CoreOutput`) into
:class:`RequestOutput` s: it holds each live request's prompt, tokens, timing and text, detokenizes
**incrementally** (each new token decodes only a short window of the tokens before it, never the
whole output again) and matches **stop strings** on the text across token boundaries. Text that
may still turn out to be the start of a stop string is held back from ``new_text`` until it cannot;
a matched stop string and everything after it is cut (OpenAI's convention) and the request ends
with finish_reason "stop" (the caller aborts it in the core, which frees its KV). Everything of a
request is forgotten once its final output is built.

Incremental detokenization: with ``prefix`` = tokens[p:r] (already emitted) and ``full`` =
tokens[p:], the new text is ``decode(full)[len(decode(prefix)):]``, taken only when it does not end
in U+FFFD (an incomplete UTF-8 sequence of byte-level tokens waits for its next token); then p, r
move to r, len(tokens). The window keeps one earlier token as context, so leading-space rules of
the tokenizer apply as in a full decode.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from depthmux.engine.sampling import SamplingParams
from depthmux.errors import DepthmuxError


@dataclass
class RequestOutput:
    """A request's output so far (one per request per step it progressed, and a final one).

    Attributes:
        request_id: its id.
        prompt: the prompt text (None when given as token ids).
        prompt_token_ids: the prompt's tokens.
        token_ids: generated tokens so far (a stop token that ended it included).
        new_token_ids: tokens generated in the step that produced this output.
        text: the output text so far that is safe to show (None without a tokenizer): a stop string and
            what follows it cut; text that may still become a stop string held back until it cannot.
        finished: whether it is done.
        finish_reason: "stop" (stop token or stop string), "length", "abort", "kv_budget" (the budget
            cannot hold the request alone, rare) or None.
        new_text: the text added to ``text`` by this output (None without a tokenizer).
        arrival_time, first_token_time, finish_time, scheduled_time: ``time.monotonic()`` when the request
            was added, its first token came out, it finished and the scheduler first admitted it (None
            until then). ``scheduled_time - arrival_time`` is its queue time.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    new_token_ids: list[int]
    text: str | None
    finished: bool
    finish_reason: str | None
    new_text: str | None = None
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finish_time: float | None = None
    scheduled_time: float | None = None


@dataclass
class CoreOutput:
    """What the core reports for one request after a step: tokens new this step, and whether it ended."""

    request_id: str
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    scheduled_time: float | None = None  # when the scheduler first admitted it (``time.monotonic()``)


def prompt_token_ids(prompt, tokenizer) -> tuple[str | None, list[int]]:
    """(text or None, token ids) of a prompt given as a string (needs ``tokenizer``), token ids or a tensor."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise DepthmuxError("string prompts need a tokenizer: pass tokenizer= or give token ids")
        if not prompt:
            raise DepthmuxError("empty prompt")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DepthmuxError(f"a prompt must be valid text: {e.object[e.start]!r} at character {e.start}") from None
        return prompt, list(tokenizer(prompt)["input_ids"])
    if isinstance(prompt, (bytes, bytearray)):
        raise DepthmuxError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.flatten().tolist()
    if not isinstance(prompt, Sequence) or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        raise DepthmuxError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    return None, list(prompt)


@dataclass
class _State:
    """One live request: prompt, tokens, detokenizer offsets, text and timing."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of ``text`` already given out
    prefix_offset: int = 0
    read_offset: int = 0
    first_token_time: float | None = None
    scheduled_time: float | None = None


class OutputProcessor:
    """Incremental detokenization, stop strings and :class:`RequestOutput` s (module docstring).

    Args:
        tokenizer: a transformers tokenizer, or None (then ``text`` / ``new_text`` are None and stop
            strings are refused).
    """

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.states: dict[str, _State] = {}

    def add_request(
        self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams, arrival: float
    ) -> None:
        if params.stop and self.tokenizer is None:
            raise DepthmuxError("stop strings need a tokenizer: pass tokenizer= or use stop_token_ids")
        self.states[request_id] = _State(request_id, prompt, list(prompt_ids), params, arrival)

    def forget(self, request_id: str) -> None:
        """Drop a request without a final output (its consumer left)."""
        self.states.pop(request_id, None)

    def has(self, request_id: str) -> bool:
        return request_id in self.states

    def _detokenize(self, st: _State) -> None:
        """Extend ``st.text`` by the text of tokens ``st.token_ids[read_offset:]`` (module docstring)."""
        dec = self.tokenizer.decode
        ids = st.token_ids
        prefix = dec(ids[st.prefix_offset : st.read_offset], skip_special_tokens=True)
        full = dec(ids[st.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            st.text += full[len(prefix) :]
            st.prefix_offset, st.read_offset = st.read_offset, len(ids)

    def _flush(self, st: _State) -> None:
        """At the end: whatever is still undecoded (an incomplete character included) joins the text."""
        if st.read_offset < len(st.token_ids):
            dec = self.tokenizer.decode
            prefix = dec(st.token_ids[st.prefix_offset : st.read_offset], skip_special_tokens=True)
            st.text += dec(st.token_ids[st.prefix_offset :], skip_special_tokens=True)[len(prefix) :]
            st.read_offset = len(st.token_ids)

    @staticmethod
    def _find_stop(st: _State, searched: int) -> int:
        """Index in ``st.text`` of the earliest stop string that ends after character ``searched``; -1 if none."""
        best = -1
        for s in st.params.stop:
            i = st.text.find(s, max(0, searched - len(s) + 1))
            if i >= 0 and (best < 0 or i < best):
                best = i
        return best

    @staticmethod
    def _held_back(st: _State) -> int:
        """Characters at the end of the text that are a proper prefix of some stop string."""
        held = 0
        for s in st.params.stop:
            for k in range(min(len(s) - 1, len(st.text)), held, -1):
                if st.text.endswith(s[:k]):
                    held = k
                    break
        return held

    def process(self, outputs: list[CoreOutput], now: float | None = None) -> tuple[list[RequestOutput], list[str]]:
        """Apply a step's core outputs. Returns (request outputs, ids of requests a stop string ended,
        which the caller must abort in the core). Requests unknown here (already ended) are skipped."""
        now = time.monotonic() if now is None else now
        results, stopped = [], []
        for co in outputs:
            st = self.states.get(co.request_id)
            if st is None:
                continue
            finished, reason = co.finished, co.finish_reason
            if co.new_token_ids and st.first_token_time is None:
                st.first_token_time = now
            if st.scheduled_time is None:
                st.scheduled_time = co.scheduled_time
            new_ids = list(co.new_token_ids)
            if self.tokenizer is not None:
                cut = False
                for i, t in enumerate(co.new_token_ids):
                    st.token_ids.append(t)
                    searched = len(st.text)
                    self._detokenize(st)
                    if st.params.stop:
                        at = self._find_stop(st, searched)
                        if at >= 0:
                            st.text, new_ids, cut = st.text[:at], new_ids[: i + 1], True
                            if not finished:
                                stopped.append(st.request_id)
                            finished, reason = True, "stop"
                            break
                if finished and not cut:
                    self._flush(st)
            else:
                st.token_ids.extend(new_ids)
            results.append(self._build(st, new_ids, finished, reason, now))
            if finished:
                del self.states[st.request_id]
        return results, stopped

    def _build(self, st: _State, new_ids: list[int], finished: bool, reason: str | None, now: float) -> RequestOutput:
        text = new_text = None
        if self.tokenizer is not None:
            safe = len(st.text) if finished else len(st.text) - self._held_back(st)
            safe = max(safe, st.emitted)
            new_text, st.emitted = st.text[st.emitted : safe], safe
            text = st.text[:safe]
        return RequestOutput(
            request_id=st.request_id,
            prompt=st.prompt,
            prompt_token_ids=st.prompt_token_ids,
            token_ids=list(st.token_ids),
            new_token_ids=new_ids,
            text=text,
            finished=finished,
            finish_reason=reason,
            new_text=new_text,
            arrival_time=st.arrival_time,
            first_token_time=st.first_token_time,
            finish_time=now if finished else None,
            scheduled_time=st.scheduled_time,
        )

    def current(self, request_id: str) -> RequestOutput | None:
        """The output so far of a live request (no new tokens), or None."""
        st = self.states.get(request_id)
        if st is None:
            return None
        text = None
        if self.tokenizer is not None:
            text = st.text[: max(st.emitted, len(st.text) - self._held_back(st))]
        return RequestOutput(
            st.request_id,
            st.prompt,
            st.prompt_token_ids,
            list(st.token_ids),
            [],
            text,
            False,
            None,
            "",
            st.arrival_time,
            st.first_token_time,
            None,
            st.scheduled_time,
        )
