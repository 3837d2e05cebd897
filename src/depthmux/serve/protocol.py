"""Request bodies of the OpenAI-compatible API (SPEC 5b), as pydantic models, and :func:`parse`, which
turns raw bytes into one of them or an :class:`~depthmux.serve.errors.APIError` 400 naming the field.

Strict types (``"1"`` is not a number, ``true`` is not an integer), no NaN or infinity, and the rules
OpenAI documents: ``temperature`` >= 0, ``top_p`` in (0, 1], ``n`` >= 1 (1 when greedy), ``stop`` without
empty strings, ``stream_options`` only with ``stream``. Fields of OpenAI's API that we do not implement
(``logprobs``, ``echo``, penalties, ...) are refused when set, rather than silently ignored; unknown
fields are ignored (as OpenAI does).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from depthmux.serve.errors import APIError, bad_request

INT64 = 2**63 - 1
MAX_N = 16
MAX_STOP = 16
MAX_CLASSIFY_INPUTS = 4096

Stop = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields shared by completions and chat completions."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    seed: Annotated[int, Field(ge=-INT64 - 1, le=INT64)] | None = None
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    user: str | None = None
    # OpenAI fields we do not implement: refused when given a non-default value
    logprobs: None = None
    top_logprobs: None = None
    logit_bias: None = None
    presence_penalty: Annotated[float, Field(ge=0.0, le=0.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=0.0, le=0.0)] | None = None
    tools: None = None
    response_format: None = None

    @model_validator(mode="after")
    def _rules(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 needs sampling: greedy decoding (temperature 0) gives n identical choices")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=256)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=256)]
    )
    echo: Literal[False] = False
    best_of: Literal[1] | None = None
    suffix: None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for completions

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts (a string, a token-id list, or lists of either)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [p]
        return list(p)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _one_max(self):
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ClassifyRequest(_Strict):
    model: str
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_CLASSIFY_INPUTS)]
    )
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


#: What a field that accepts several shapes takes (pydantic reports each union member's error instead).
SHAPES = {
    "prompt": "must be a non-empty string, a list of them, a list of token ids (integers >= 0) or a list of those",
    "stop": f"must be a non-empty string or a list of at most {MAX_STOP} non-empty strings",
    "input": f"must be a non-empty string or a list of 1 to {MAX_CLASSIFY_INPUTS} non-empty strings",
    "content": "must be a string or a non-empty list of {'type': 'text', 'text': ...} parts",
}
TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _location(loc: tuple) -> str | None:
    """pydantic's error location -> a dotted field name, without the union-member tags it inserts."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or "-" in p or p.lower() in TYPE_TAGS))]
    return ".".join(parts) or None


def parse(cls: type[_Strict], raw: bytes):
    """Bytes of a JSON body -> a validated ``cls``; any problem is an APIError 400 naming the field."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not UTF-8 (byte {e.start})") from None
    try:
        body = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not valid JSON")))
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise bad_request(f"the request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    if "model" not in body:
        raise bad_request("the field `model` is required", "model")
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        err = min(e.errors(), key=lambda x: len(x["loc"]))  # the outermost problem reads best
        where = _location(tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        if len(where.split(".") if where else ()) < len(err["loc"]):  # a union: say which shapes it takes
            unions = [p for p in (where or "").split(".") if p in SHAPES]
            if unions:
                where = where[: where.rindex(unions[-1]) + len(unions[-1])]
                message = SHAPES[unions[-1]]
        raise bad_request(f"{where}: {message}" if where else message, where) from None
    except (RecursionError, APIError) as e:
        raise bad_request(f"the request body cannot be validated: {e}") from None
