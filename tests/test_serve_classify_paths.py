"""``POST /v1/classify`` on the FastAPI app (the one host of ``depthmux serve`` and Ray Serve), in-process:
results per input, OpenAI-shaped errors with their statuses for bad fields and raw bodies, and the 503 of
full queues answered before the body is read."""

from __future__ import annotations

import pytest

from serve_fixtures import tiny_classifiers


@pytest.fixture(scope="module")
def app(tmp_path_factory, tokenizer):
    from fastapi.testclient import TestClient

    from depthmux.serve import ServeConfig, build_app, build_serving

    ckpts = tiny_classifiers(tmp_path_factory.mktemp("ckpt"), tokenizer, ns=(2,))
    cfg = ServeConfig(classifiers={"n2": str(ckpts["n2"])}, max_wait_ms=0.0, max_body_bytes=4096)
    serving = build_serving(cfg)
    with TestClient(build_app(serving, cfg.max_body_bytes)) as client:
        yield serving, client


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "n2", "input": ["a fine film", "dull and long", "ok"]}, 200, None),
        ({"model": "n2", "input": "just one"}, 200, None),
        ({"model": "nope", "input": "x"}, 404, "model"),
        ({"model": "n2", "input": []}, 400, "input"),
        ({"model": "n2", "input": "   "}, 400, "input"),
        ({"model": "n2"}, 400, "input"),
        ({"input": "no model"}, 400, "model"),
        ({"model": "n2", "input": 3}, 400, "input"),
    ],
)
def test_results_and_errors(app, body, status, param):
    _, client = app
    r = client.post("/v1/classify", json=body)
    assert r.status_code == status, r.text
    if status == 200:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = r.json()["data"]
        assert [d["index"] for d in data] == list(range(len(texts)))
        assert all(d["label"] in ("neg", "pos") and sum(d["probs"]) == pytest.approx(1, abs=1e-5) for d in data)
    else:
        err = r.json()["error"]
        assert err["param"] == param and err["message"]


@pytest.mark.parametrize(("raw", "status"), [(b"{not json", 400), (b"\xff\xfe", 400), (b"x" * 5000, 413)])
def test_raw_bodies_get_openai_errors(app, raw, status):
    _, client = app
    r = client.post("/v1/classify", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_full_queues_refuse_before_the_body_is_read(app):
    serving, client = app
    grouper = serving.groupers["n2"]
    real = grouper.full
    grouper.full = lambda: True
    try:
        r = client.post("/v1/classify", content=b"{not even json", headers={"content-type": "application/json"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
    finally:
        grouper.full = real
    assert client.post("/v1/classify", json={"model": "n2", "input": "fine again"}).status_code == 200
