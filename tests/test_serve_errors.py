"""Hostile clients (SPEC 5b): a table of malformed requests against a real server, each answered with a
4xx JSON error in OpenAI's shape (400 for invalid fields, never FastAPI's 422; 404 unknown model or
route; 405; 413 oversized body), none with a 500, and the server keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest

from serve_fixtures import Server, tiny_classifiers, tiny_llama_folder

C, CH, CL = "/v1/completions", "/v1/chat/completions", "/v1/classify"
OK_C = {"model": "tiny", "prompt": "Hello", "max_tokens": 4}
OK_CH = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def c(**kw):
    return {**OK_C, **kw}


def ch(**kw):
    return {**OK_CH, **kw}


def without(body, key):
    return {k: v for k, v in body.items() if k != key}


# (id, path, body: dict -> JSON, bytes -> raw, status, param the error names or None)
CASES = [
    ("invalid-json-c", C, b'{"model": "tiny", "prompt": ', 400, None),
    ("invalid-json-ch", CH, b"{'model': 'tiny'}", 400, None),
    ("invalid-json-cl", CL, b"not json", 400, None),
    ("empty-body", C, b"", 400, None),
    ("array-body", C, b"[1, 2, 3]", 400, None),
    ("string-body", CH, b'"hello"', 400, None),
    ("null-body", CL, b"null", 400, None),
    ("deep-nesting", C, b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None),
    ("invalid-utf8", C, b'{"model": "tiny", "prompt": "\xff\xfe"}', 400, None),
    ("nan-literal", C, b'{"model": "tiny", "prompt": "a", "temperature": NaN}', 400, None),
    ("infinity-literal", C, b'{"model": "tiny", "prompt": "a", "top_p": Infinity}', 400, None),
    ("missing-model", C, without(OK_C, "model"), 400, "model"),
    ("model-int", C, c(model=7), 400, "model"),
    ("missing-prompt", C, without(OK_C, "prompt"), 400, "prompt"),
    ("prompt-int", C, c(prompt=5), 400, "prompt"),
    ("prompt-empty-string", C, c(prompt=""), 400, "prompt"),
    ("prompt-empty-list", C, c(prompt=[]), 400, "prompt"),
    ("prompt-mixed-list", C, c(prompt=[1, "a"]), 400, "prompt"),
    ("prompt-negative-id", C, c(prompt=[1, -2]), 400, "prompt"),
    ("prompt-id-outside-vocab", C, c(prompt=[1, 10**9]), 400, "prompt"),
    ("prompt-too-many", C, c(prompt=["a"] * 300), 400, "prompt"),
    ("prompt-longer-than-context", C, c(prompt="word " * 2000), 400, "prompt"),
    ("prompt-nested-empty", C, c(prompt=[[]]), 400, "prompt"),
    ("max-tokens-huge", C, c(max_tokens=10**12), 400, "max_tokens"),
    ("max-tokens-zero", C, c(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-negative", C, c(max_tokens=-3), 400, "max_tokens"),
    ("max-tokens-string", C, c(max_tokens="8"), 400, "max_tokens"),
    ("max-tokens-float", C, c(max_tokens=1.5), 400, "max_tokens"),
    ("max-tokens-bool", C, c(max_tokens=True), 400, "max_tokens"),
    ("temperature-negative", C, c(temperature=-0.5), 400, "temperature"),
    ("temperature-string", C, c(temperature="hot"), 400, "temperature"),
    ("temperature-huge", CH, ch(temperature=1e30), 400, "temperature"),
    ("top-p-zero", C, c(top_p=0), 400, "top_p"),
    ("top-p-above-one", C, c(top_p=1.5), 400, "top_p"),
    ("top-p-negative", CH, ch(top_p=-1), 400, "top_p"),
    ("n-zero", C, c(n=0), 400, "n"),
    ("n-huge", C, c(n=1000, temperature=1.0), 400, "n"),
    ("n-greedy", C, c(n=2, temperature=0), 400, None),
    ("n-greedy-chat", CH, ch(n=3, temperature=0.0), 400, None),
    ("seed-string", C, c(seed="abc"), 400, "seed"),
    ("seed-too-big", C, c(seed=2**70), 400, "seed"),
    ("stop-empty", C, c(stop=""), 400, "stop"),
    ("stop-list-with-empty", C, c(stop=["ok", ""]), 400, "stop"),
    ("stop-int", C, c(stop=3), 400, "stop"),
    ("stop-too-many", C, c(stop=[f"s{i}" for i in range(20)]), 400, "stop"),
    ("stream-string", C, c(stream="yes"), 400, "stream"),
    ("stream-options-without-stream", C, c(stream_options={"include_usage": True}), 400, None),
    ("stream-options-wrong-type", CH, ch(stream=True, stream_options="usage"), 400, "stream_options"),
    ("include-usage-string", CH, ch(stream=True, stream_options={"include_usage": "yes"}), 400, None),
    ("ignore-eos-string", C, c(ignore_eos="true"), 400, "ignore_eos"),
    ("logprobs-unsupported", C, c(logprobs=5), 400, "logprobs"),
    ("echo-unsupported", C, c(echo=True), 400, "echo"),
    ("best-of-unsupported", C, c(best_of=3), 400, "best_of"),
    ("penalty-unsupported", CH, ch(presence_penalty=1.0), 400, "presence_penalty"),
    ("unknown-model-c", C, c(model="gpt-4"), 404, "model"),
    ("unknown-model-ch", CH, ch(model="nope"), 404, "model"),
    ("classifier-name-for-completion", C, c(model="n2"), 404, "model"),
    ("missing-messages", CH, without(OK_CH, "messages"), 400, "messages"),
    ("empty-messages", CH, ch(messages=[]), 400, "messages"),
    ("messages-not-list", CH, ch(messages="hi"), 400, "messages"),
    ("message-bad-role", CH, ch(messages=[{"role": "wizard", "content": "x"}]), 400, "messages.0.role"),
    ("message-content-int", CH, ch(messages=[{"role": "user", "content": 5}]), 400, "messages.0.content"),
    ("message-missing-content", CH, ch(messages=[{"role": "user"}]), 400, "messages.0.content"),
    ("message-parts-wrong", CH, ch(messages=[{"role": "user", "content": [{"type": "image"}]}]), 400, None),
    ("message-not-object", CH, ch(messages=["hello"]), 400, "messages.0"),
    ("two-max-tokens", CH, ch(max_completion_tokens=3), 400, None),
    ("chat-longer-than-context", CH, ch(messages=[{"role": "user", "content": "word " * 2000}]), 400, None),
    ("classify-no-input", CL, {"model": "n2"}, 400, "input"),
    ("classify-empty-list", CL, {"model": "n2", "input": []}, 400, "input"),
    ("classify-100k-inputs", CL, {"model": "n2", "input": ["a"] * 100_000}, 400, "input"),
    ("classify-empty-string", CL, {"model": "n2", "input": ""}, 400, "input"),
    ("classify-blank", CL, {"model": "n2", "input": ["fine", "   "]}, 400, "input"),
    ("classify-int-in-list", CL, {"model": "n2", "input": ["a", 3]}, 400, "input"),
    ("classify-too-long", CL, {"model": "n2", "input": "word " * 2000}, 400, "input"),
    ("classify-unknown-model", CL, {"model": "nope", "input": "a"}, 404, "model"),
    ("classify-llm-name", CL, {"model": "tiny", "input": "a"}, 404, "model"),
    ("body-10mb", C, c(prompt="x" * (10 * 2**20)), 413, None),
    ("body-10mb-classify", CL, {"model": "n2", "input": ["y" * 1000] * 10_000}, 413, None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("hostile")
    ckpts = tiny_classifiers(root, tokenizer)
    s = Server(
        ["--model", str(tiny_llama_folder(root)), "--model-name", "tiny", "--classifier", f"n2={ckpts['n2']}"],
        root / "server.log",
    )
    yield s
    s.stop()


def test_the_table_is_large_enough():
    assert len(CASES) >= 50
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("path", "body", "status", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_request_gets_a_4xx_json_error(server, path, body, status, param):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        if isinstance(body, bytes):
            r = client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    assert httpx.post(server.url + C, json=OK_C, timeout=60).status_code == 200  # still serving


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/nothing", 404), ("GET", C, 405), ("DELETE", "/v1/models", 405), ("PUT", CL, 405)],
)
def test_wrong_routes_and_methods(server, method, path, status):
    r = httpx.request(method, server.url + path, timeout=30)
    assert r.status_code == status
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_errors_are_counted_and_the_server_is_healthy(server):
    assert server.metric("depthmux:http_errors_total", status="400") > 0
    assert httpx.get(server.url + "/health").status_code == 200
