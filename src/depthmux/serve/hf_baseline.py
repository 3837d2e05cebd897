"""``depthmux serve hf-baseline``: what a user would otherwise write (issue 17, "What it must show" 3).

A minimal HTTP server that runs transformers ``generate`` once per request, one request at a time
(no batching, no engine), behind the same HTTP stack as ``depthmux serve`` (FastAPI + uvicorn) and
with the same ``POST /v1/completions`` shape: ``prompt`` (a string or token ids), ``max_tokens``,
``ignore_eos``, greedy only (``temperature`` 0 or absent), no streaming; the response carries
``choices[0].text``, ``finish_reason`` and ``usage``. Also ``GET /health`` and ``GET /v1/models``.
It is a baseline for ``serve bench`` (``--no-stream``), not a server to deploy: loopback only.

::

    baseline = HFBaseline("smollm2")
    baseline.complete({"model": "smollm2", "prompt": [1, 2, 3], "max_tokens": 8, "ignore_eos": True})
"""

import asyncio
import time
import uuid

from depthmux.errors import DepthmuxError, require
from depthmux.serve.errors import APIError, bad_request, unknown_model

FIELDS = {"model", "prompt", "max_tokens", "temperature", "ignore_eos", "stream"}


class HFBaseline:
    """A LLaMA-family model (``"smollm2"`` or a folder) and its tokenizer; :meth:`complete` answers one
    request with ``model.generate`` (batch 1, greedy)."""

    def __init__(self, model: str, name: str | None = None, device: str = "cpu") -> None:
        from pathlib import Path

        from depthmux.lm import HFCausalLMAdapter, load_lm, load_saved_tokenizer, pretrained_model_dir

        model_dir = pretrained_model_dir(model)
        lm = load_lm(model_dir)
        require(
            isinstance(lm, HFCausalLMAdapter),
            f"--model {model}: the baseline runs transformers generate, so it needs a LLaMA-family folder",
        )
        self.model = lm.model.to(device).eval()
        self.tokenizer = load_saved_tokenizer(model_dir)
        require(self.tokenizer is not None, f"--model {model}: the folder has no tokenizer")
        self.name = name or (Path(model).name if Path(model).is_dir() else model)
        self.context = int(self.model.config.max_position_embeddings)

    def _parse(self, body) -> tuple[list[int], int, bool]:
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        extra = sorted(set(body) - FIELDS)
        if extra:
            raise bad_request(f"unsupported field {extra[0]!r}", extra[0])
        if body.get("model") != self.name:
            raise unknown_model(body.get("model"))
        if body.get("stream", False) is not False:
            raise bad_request("the baseline does not stream", "stream")
        t = body.get("temperature", 0)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t != 0:
            raise bad_request("the baseline is greedy only: temperature 0", "temperature")
        prompt = body.get("prompt")
        if isinstance(prompt, str) and prompt:
            ids = self.tokenizer(prompt)["input_ids"]
        elif (
            isinstance(prompt, list) and prompt and all(type(i) is int and 0 <= i < len(self.tokenizer) for i in prompt)
        ):
            ids = list(prompt)
        else:
            raise bad_request("prompt must be a non-empty string or list of token ids", "prompt")
        n = body.get("max_tokens", 16)
        if type(n) is not int or n < 1 or len(ids) + n > self.context:
            raise bad_request(f"max_tokens must be an integer >= 1 within the context of {self.context}", "max_tokens")
        ignore_eos = body.get("ignore_eos", False)
        if type(ignore_eos) is not bool:
            raise bad_request("ignore_eos must be a boolean", "ignore_eos")
        return ids, n, ignore_eos

    def complete(self, body) -> dict:
        """One ``/v1/completions`` response (OpenAI's shape); an :class:`APIError` for a bad request."""
        import torch
        from transformers import GenerationConfig

        ids, n, ignore_eos = self._parse(body)
        eos = None if ignore_eos else self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        gen = GenerationConfig(
            max_new_tokens=n, min_new_tokens=n if ignore_eos else 0, do_sample=False, pad_token_id=pad, eos_token_id=eos
        )
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model.generate(input_ids=torch.tensor([ids], device=device), generation_config=gen)
        new = out[0, len(ids) :].tolist()
        stopped = eos is not None and bool(new) and new[-1] == eos
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "text": self.tokenizer.decode(new, skip_special_tokens=True),
                    "logprobs": None,
                    "finish_reason": "stop" if stopped else "length",
                }
            ],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new), "total_tokens": len(ids) + len(new)},
        }


def build_baseline_app(baseline: HFBaseline):
    """The FastAPI app: requests wait for one lock, so ``generate`` runs one request at a time (in a
    worker thread, so the event loop keeps accepting connections)."""
    import json

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()  # (this module has no `from __future__ import annotations`: FastAPI reads `Request` below)
    lock = asyncio.Lock()

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return error(bad_request("the body is not valid JSON"))
        try:
            async with lock:
                return JSONResponse(await asyncio.to_thread(baseline.complete, body))
        except APIError as e:
            return error(e)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": baseline.name, "object": "model", "owned_by": "depthmux"}]}

    return app


def run_hf_baseline(model: str, host: str, port: int, name: str | None = None, on_ready=None) -> None:
    """Load ``model`` and serve it until interrupted (uvicorn, one worker; loopback only)."""
    import uvicorn

    from depthmux.serve.server import LOOPBACK, check_port

    require(host in LOOPBACK, f"--host {host} is not loopback: the baseline is for local measurements only")
    if not 1 <= port <= 65535:
        raise DepthmuxError(f"--port must be in [1, 65535], got {port}")
    check_port(host, port)
    baseline = HFBaseline(model, name)
    app = build_baseline_app(baseline)
    if on_ready is not None:
        on_ready(baseline)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
