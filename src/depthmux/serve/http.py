"""The HTTP host of :class:`~depthmux.serve.handlers.Serving`: a FastAPI app and uvicorn (SPEC 5b).

Only bytes move here: bodies are read with a size limit (413 beyond ``max_body_bytes``, checked on
``Content-Length`` and while reading), handed to the handlers, and their dicts, SSE streams and
:class:`~depthmux.serve.errors.APIError` s become responses. FastAPI's own validation never runs (routes
take the raw request), and its 404/405/422 and any unexpected exception are rewritten in OpenAI's error
shape. A non-streaming request whose client disconnects is cancelled (its engine requests aborted);
a streaming one is cancelled by Starlette when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from depthmux.serve.errors import APIError
from depthmux.serve.handlers import Serving

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
log = logging.getLogger("depthmux.serve")


def error_response(e: APIError, serving: Serving | None = None) -> JSONResponse:
    if serving is not None:
        serving.count_error(e.status)
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "the Content-Length header is not a number") from None
        if size > limit:
            raise APIError(413, f"the request body of {size} bytes is over the limit of {limit}", None, "too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes", None, "too_large")
        chunks.append(part)
    return b"".join(chunks)


async def until_disconnect(request: Request, coro):
    """Run ``coro``; cancel it (aborting its engine requests) if the client disconnects first.

    The body has been read, so the next ASGI message the server gives is ``http.disconnect``: one task waits
    for it beside ``coro`` (no polling)."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone away (the ASGI ``http.disconnect`` message)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def classify_response(request: Request, serving: Serving, max_body_bytes: int) -> Response:
    """``POST /v1/classify``: 503 before the body is read when every classifier's queue is full."""
    serving.refuse_classify_if_full()
    body = await read_body(request, max_body_bytes)
    result = await until_disconnect(request, serving.classify(body))
    return JSONResponse(result) if result is not None else Response(status_code=499)


def build_app(serving: Serving, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app over ``serving`` (routes of SPEC 5b)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await serving.close()

    app = FastAPI(title="depthmux", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(_request, e: APIError):
        return error_response(e, serving)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request, e):
        return error_response(APIError(400, f"invalid request: {str(e)[:300]}"), serving)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, e):
        status = e.status_code if 400 <= e.status_code < 500 else 500
        message = "no such route" if status == 404 else str(e.detail)
        return error_response(APIError(status, message, None, "not_found" if status == 404 else None), serving)

    @app.exception_handler(Exception)
    async def _bug(_request, e):
        log.exception("internal error")
        return error_response(APIError(500, f"internal error: {type(e).__name__}"), serving)

    @app.get("/health")
    async def health():
        status, body = serving.health()
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    async def models():
        return serving.models()

    @app.get("/metrics")
    async def metrics():
        return Response(serving.render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/classify")
    async def classify(request: Request):
        return await classify_response(request, serving, max_body_bytes)

    async def generation(request: Request, handler):
        body = await read_body(request, max_body_bytes)
        result = await handler(body)
        if isinstance(result, dict):
            return JSONResponse(result)
        if hasattr(result, "__aiter__"):
            return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        done = await until_disconnect(request, result)  # a coroutine: the non-streaming response
        return JSONResponse(done) if done is not None else Response(status_code=499)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generation(request, serving.completions)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generation(request, serving.chat)

    return app
