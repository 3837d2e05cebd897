"""Generation overload and queue time, through a real ``depthmux serve`` (a tiny random LLaMA) with
``--max-num-seqs 1 --max-queued 1``: at most 2 generation requests are held, more concurrent ones get
503 with ``Retry-After`` in OpenAI's error shape, the admitted ones finish, and the server then answers
normally; ``request_queue_time_seconds`` (arrival to the engine's first admission) is on ``/metrics``
after a request."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serve_fixtures import Server, tiny_llama_folder

LIMIT = 2  # --max-num-seqs 1 + --max-queued 1
BODY = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tiny_llama_folder(tmp_path_factory.mktemp("llm"))
    s = Server(
        ["--model", str(folder), "--model-name", "tiny", "--max-num-seqs", "1", "--max-queued", "1"],
        tmp_path_factory.mktemp("log") / "server.log",
    )
    yield s
    s.stop()


def assert_overloaded(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text[:300]
    assert int(r.headers["Retry-After"]) >= 1
    error = r.json()["error"]
    assert error["code"] == "overloaded" and "full" in error["message"]


def test_places_are_given_back_once_even_by_a_response_dropped_unstarted():
    from depthmux.serve import APIError, Serving
    from depthmux.serve.handlers import _Slots

    serving = Serving(max_running=1, max_queued=1)
    held = _Slots(serving, LIMIT)
    with pytest.raises(APIError) as e:
        _Slots(serving, 1)
    assert e.value.status == 503 and serving.in_flight == LIMIT
    held.release()
    held.release()  # once only
    assert serving.in_flight == 0

    async def response(slots):  # stands for a response coroutine that never gets to run
        slots.release()

    coro = response(_Slots(serving, LIMIT))
    assert serving.in_flight == LIMIT
    coro.close()  # dropped unstarted (a client gone before its response began)
    assert serving.in_flight == 0


def test_more_choices_than_the_limit_in_one_request_is_503(server):
    r = httpx.post(server.url + "/v1/completions", json={**BODY, "temperature": 1.0, "n": LIMIT + 1}, timeout=60)
    assert_overloaded(r)
    ok = httpx.post(server.url + "/v1/completions", json={**BODY, "temperature": 1.0, "n": LIMIT}, timeout=120)
    assert ok.status_code == 200 and len(ok.json()["choices"]) == LIMIT


def test_concurrent_requests_beyond_the_limit_get_503_and_the_rest_finish(server):
    async def burst(k):
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/completions", json=BODY) for _ in range(k)))

    responses = asyncio.run(burst(3 * LIMIT))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes  # 300 tokens each: the burst overlaps
    for r in responses:
        if r.status_code == 503:
            assert_overloaded(r)
        else:
            assert r.json()["usage"]["completion_tokens"] == BODY["max_tokens"]
    assert server.metric("depthmux:http_errors_total", status="503") >= codes.count(503)
    after = httpx.post(server.url + "/v1/completions", json={**BODY, "max_tokens": 4}, timeout=60)
    assert after.status_code == 200


def test_queue_time_histogram_after_a_request(server):
    name = "depthmux:request_queue_time_seconds"
    before = server.metric(name + "_count", model_name="tiny")
    r = httpx.post(server.url + "/v1/completions", json={**BODY, "max_tokens": 3}, timeout=60)
    assert r.status_code == 200
    assert server.metric(name + "_count", model_name="tiny") == before + 1
    assert server.metric(name + "_sum", model_name="tiny") > 0
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert f"# TYPE {name} histogram" in text and "first admitted" in text
    # the engine's admission comes before the first token: queue time <= time to first token (all requests)
    assert server.metric(name + "_sum", model_name="tiny") <= server.metric(
        "depthmux:time_to_first_token_seconds_sum", model_name="tiny"
    )
