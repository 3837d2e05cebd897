"""``depthmux serve --classifier``: a real server in a subprocess on a free loopback port, RevMUX
classification with dynamic grouping through HTTP, the teacher beside it, models/health/metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

from depthmux.multiplexing import load_classifier
from serve_fixtures import Server, tiny_classifiers

TEXTS = [f"review {i}: {'great fun' if i % 2 else 'dull and slow'} {'very ' * (i % 4)}" for i in range(12)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer):
    return tiny_classifiers(tmp_path_factory.mktemp("ckpt"), tokenizer)


@pytest.fixture(scope="module")
def server(ckpts, tmp_path_factory):
    s = Server(
        ["--classifier", f"n2={ckpts['n2']}", "--classifier", f"teacher={ckpts['teacher']}", "--max-wait-ms", "1000"],
        tmp_path_factory.mktemp("log") / "server.log",
    )
    yield s
    s.stop()


def offline_probs(folder, texts):
    model = load_classifier(folder)
    with torch.no_grad():
        return model(model.body.tokenize(texts)).logits.softmax(-1)


def test_models_and_health(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ids = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
    assert ids == ["n2", "teacher"]


def test_one_request_equals_the_offline_model(server, ckpts):
    for name in ("n2", "teacher"):
        r = httpx.post(server.url + "/v1/classify", json={"model": name, "input": TEXTS}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
        got = torch.tensor([d["probs"] for d in body["data"]])
        assert torch.allclose(got, offline_probs(ckpts[name], TEXTS), atol=1e-5)
        assert [d["label"] for d in body["data"]] == [["neg", "pos"][int(i)] for i in got.argmax(-1)]
        assert body["data"][0]["num_classes"] == 2 and body["usage"]["prompt_tokens"] > len(TEXTS)


def test_a_single_input_is_completed_with_a_dummy(server, ckpts):
    r = httpx.post(server.url + "/v1/classify", json={"model": "n2", "input": TEXTS[3]}, timeout=60)
    got = torch.tensor(r.json()["data"][0]["probs"])
    assert torch.allclose(got, offline_probs(ckpts["n2"], [TEXTS[3]])[0], atol=1e-5)


def test_concurrent_single_inputs_share_full_groups(server, ckpts):
    """8 concurrent single-input requests to N = 2 (wait 1 s): full groups only, fewer forwards than
    requests, and every caller gets the teacher-equal answer for its own text on the teacher."""
    fills_before = server.metric("depthmux:classify_group_fill_count", model_name="n2")
    fill_sum_before = server.metric("depthmux:classify_group_fill_sum", model_name="n2")
    inputs_before = server.metric("depthmux:classify_forward_inputs_sum", model_name="n2")
    waits_before = server.metric("depthmux:classify_group_wait_seconds_count", model_name="n2")
    wait_sum_before = server.metric("depthmux:classify_group_wait_seconds_sum", model_name="n2")

    async def main(model):
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/v1/classify", json={"model": model, "input": t}) for t in TEXTS[:8]))
        return [r.json()["data"][0]["probs"] for r in rs]

    asyncio.run(main("n2"))
    forwards = server.metric("depthmux:classify_group_fill_count", model_name="n2") - fills_before
    fill_sum = server.metric("depthmux:classify_group_fill_sum", model_name="n2") - fill_sum_before
    inputs = server.metric("depthmux:classify_forward_inputs_sum", model_name="n2") - inputs_before
    assert inputs == 8  # every input went through a forward exactly once
    assert fill_sum == pytest.approx(forwards)  # every forward's groups were full
    assert forwards >= 1  # (full groups of N = 2 already bound it by inputs / 2)
    # a full group runs as soon as the worker is free: no input waited for the 1 s max-wait
    waits = server.metric("depthmux:classify_group_wait_seconds_count", model_name="n2") - waits_before
    wait_sum = server.metric("depthmux:classify_group_wait_seconds_sum", model_name="n2") - wait_sum_before
    assert waits == 8 and wait_sum / waits < 0.5
    teacher = torch.tensor(asyncio.run(main("teacher")))
    assert torch.allclose(teacher, offline_probs(ckpts["teacher"], TEXTS[:8]), atol=1e-5)


def test_group_wait_is_recorded(server):
    assert server.metric("depthmux:classify_group_wait_seconds_count", model_name="n2") > 0
    assert server.metric("depthmux:classify_inputs_total", model_name="n2") > 0


def test_bench_fixed_concurrency_on_classify(server):
    from depthmux.serve import BenchConfig, run_bench

    r = run_bench(
        BenchConfig(
            url=server.url, model="n2", endpoint="classify", concurrency=4, num_requests=12, inputs_per_request=3
        )
    )
    assert r["requests"] == 12 and r["completed"] == 12 and r["errors_by_status"] == {}
    assert r["inputs"] == 36 and r["inputs_per_s"] > 0
    lat = r["e2e_latency_s"]
    assert 0 < lat["median"] <= lat["p95"] <= lat["p99"]


def test_bench_poisson_stops_by_itself_and_counts_errors(server):
    from depthmux.serve import BenchConfig, run_bench

    r = run_bench(
        BenchConfig(url=server.url, model="missing", endpoint="classify", rate=50.0, num_requests=1000, duration_s=0.5)
    )
    assert 0 < r["requests"] < 1000  # the duration bound ended it
    assert r["completed"] == 0 and r["errors_by_status"] == {"404": r["requests"]}


def test_bench_summary_is_nearest_rank():
    from depthmux.serve.bench import summary

    s = summary([float(i) for i in range(1, 101)])
    assert (s["median"], s["p95"], s["p99"]) == (50.5, 95.0, 99.0)
    assert summary([]) is None
