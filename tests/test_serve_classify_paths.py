"""``POST /v1/classify`` has two hosts: the FastAPI route (Ray Serve ingresses the FastAPI app) and
``ClassifyFastPath`` in front of it (``depthmux serve``). Both must answer every request the same way:
results, OpenAI-shaped errors and statuses, the 503 of full queues before the body is read; other
routes pass through the fast path to FastAPI unchanged."""

from __future__ import annotations

import pytest

from serve_fixtures import tiny_classifiers


class _Client:
    """Requests to one host, through the test's one client (one event loop: the serving's queues live on it)."""

    def __init__(self, client, host: str) -> None:
        self.client, self.host = client, host

    def post(self, path, **kw):
        return self.client.post(path, headers={**kw.pop("headers", {}), "x-host": self.host}, **kw)

    def get(self, path):
        return self.client.get(path, headers={"x-host": self.host})


@pytest.fixture(scope="module")
def apps(tmp_path_factory, tokenizer):
    from fastapi.testclient import TestClient

    from depthmux.serve import ServeConfig, build_app, build_serving
    from depthmux.serve.http import ClassifyFastPath

    ckpts = tiny_classifiers(tmp_path_factory.mktemp("ckpt"), tokenizer, ns=(2,))
    cfg = ServeConfig(classifiers={"n2": str(ckpts["n2"])}, max_wait_ms=0.0, max_body_bytes=4096)
    serving = build_serving(cfg)
    app = build_app(serving, cfg.max_body_bytes)
    fast = ClassifyFastPath(app, serving, cfg.max_body_bytes)

    async def either(scope, receive, send):  # the x-host header picks the host
        plain = scope["type"] == "http" and (b"x-host", b"plain") in scope["headers"]
        await (app if plain or scope["type"] != "http" else fast)(scope, receive, send)

    with TestClient(either) as client:
        yield serving, _Client(client, "plain"), _Client(client, "fast")


REQUESTS = [
    {"model": "n2", "input": ["a fine film", "dull and long", "ok"]},
    {"model": "n2", "input": "just one"},
    {"model": "nope", "input": "x"},
    {"model": "n2", "input": []},
    {"model": "n2", "input": "   "},
    {"model": "n2"},
    {"input": "no model"},
    {"model": "n2", "input": 3},
]


@pytest.mark.parametrize("body", REQUESTS)
def test_the_fast_path_answers_as_the_fastapi_route(apps, body):
    _, plain, fast = apps
    a, b = plain.post("/v1/classify", json=body), fast.post("/v1/classify", json=body)
    assert a.status_code == b.status_code
    ja, jb = a.json(), b.json()
    if a.status_code == 200:
        for x in (ja, jb):
            x.pop("id"), x.pop("created")
        for da, db in zip(ja["data"], jb["data"], strict=True):
            assert da["label"] == db["label"] and da["probs"] == pytest.approx(db["probs"], abs=1e-6)
            da.pop("probs"), db.pop("probs")
    assert ja == jb


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"x" * 5000])
def test_raw_bodies_get_the_same_errors(apps, raw):
    _, plain, fast = apps
    a = plain.post("/v1/classify", content=raw, headers={"content-type": "application/json"})
    b = fast.post("/v1/classify", content=raw, headers={"content-type": "application/json"})
    assert a.status_code == b.status_code and a.status_code in (400, 413)
    assert a.json() == b.json()


def test_other_routes_pass_through(apps):
    _, plain, fast = apps
    assert fast.get("/v1/models").json() == plain.get("/v1/models").json()
    assert fast.get("/v1/classify").status_code == plain.get("/v1/classify").status_code == 405
    assert fast.get("/nowhere").json() == plain.get("/nowhere").json()


def test_full_queues_refuse_before_the_body_is_read(apps):
    serving, plain, fast = apps
    grouper = serving.groupers["n2"]
    real = grouper.full
    grouper.full = lambda: True
    try:
        for client in (plain, fast):
            r = client.post("/v1/classify", content=b"{not even json", headers={"content-type": "application/json"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "overloaded"
    finally:
        grouper.full = real
    assert fast.post("/v1/classify", json={"model": "n2", "input": "fine again"}).status_code == 200
