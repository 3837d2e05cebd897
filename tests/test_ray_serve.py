"""``depthmux serve --ray``: the same request handling hosted on Ray Serve.

Fast (no Ray started): :class:`RayBatchGrouper` groups concurrent inputs through ``@serve.batch`` with
a queue per classifier, gives every caller its own results in order, refuses a full queue with 503; the
deployment options map ``--replicas`` / ``--max-replicas`` / limits onto Ray's. Slow: a real
``depthmux serve --ray`` with 2 replicas on a Ray head this test starts on 127.0.0.1 answers
``/v1/classify`` exactly as the single-process server, and a replica killed under load is replaced.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytest.importorskip("ray")

from depthmux.errors import DepthmuxError
from depthmux.serve import APIError, ServeConfig, ServerMetrics
from depthmux.serve.ray_app import RayBatchGrouper, RayServeOptions, deployment_options


@pytest.fixture(autouse=True)
def replica_context(monkeypatch):
    """``@serve.batch`` reads the replica's ``max_ongoing_requests`` (for a warning); outside a replica the
    fast tests give it one."""
    from types import SimpleNamespace

    from ray import serve

    ctx = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=1000))
    monkeypatch.setattr(serve, "get_replica_context", lambda: ctx)


def grouper(n=2, max_batch=8, max_wait_s=0.05, max_queued=16, name="m"):
    calls = []

    def run(texts):
        calls.append(list(texts))
        return [f"{name}:{t}" for t in texts]

    return RayBatchGrouper(name, run, n, max_batch, max_wait_s, max_queued, ServerMetrics()), calls


def test_serve_batch_groups_concurrent_callers_in_order():
    async def main():
        g, calls = grouper()
        a, b, c = await asyncio.gather(g.submit(["a1", "a2", "a3"]), g.submit(["b1"]), g.submit(["c1", "c2"]))
        return a, b, c, calls

    a, b, c, calls = asyncio.run(main())
    assert a == ["m:a1", "m:a2", "m:a3"] and b == ["m:b1"] and c == ["m:c1", "m:c2"]
    assert calls == [["a1", "a2", "a3", "b1", "c1", "c2"]]  # one forward of 6 (< max_batch 8) after the wait


def test_serve_batch_caps_a_forward_at_max_batch_and_keeps_classifiers_apart():
    async def main():
        g1, calls1 = grouper(n=3, max_batch=7, name="x")  # max_batch rounded down to whole groups: 6
        g2, calls2 = grouper(n=2, max_batch=4, name="y")
        r1, r2 = await asyncio.gather(g1.submit([str(i) for i in range(8)]), g2.submit(["p", "q"]))
        return r1, r2, calls1, calls2

    r1, r2, calls1, calls2 = asyncio.run(main())
    assert r1 == [f"x:{i}" for i in range(8)] and r2 == ["y:p", "y:q"]
    assert [len(c) for c in calls1] == [6, 2] and calls2 == [["p", "q"]]


def test_the_incomplete_group_runs_in_a_forward_of_its_own():
    async def main():
        g, calls = grouper(n=2, max_batch=8)
        return await g.submit(["a", "b", "c"]), calls

    out, calls = asyncio.run(main())
    assert out == ["m:a", "m:b", "m:c"] and calls == [["a", "b"], ["c"]]


def test_serve_batch_full_queue_is_503():
    async def main():
        g, _ = grouper(max_queued=4, max_wait_s=0.2)
        first = asyncio.ensure_future(g.submit(["a", "b", "c"]))
        await asyncio.sleep(0)
        with pytest.raises(APIError) as e:
            await g.submit(["d", "e"])
        assert e.value.status == 503 and "Retry-After" in e.value.headers
        return await first

    assert asyncio.run(main()) == ["m:a", "m:b", "m:c"]


def test_deployment_options():
    cfg = ServeConfig(classifiers={}, max_batch=32, max_num_seqs=8, max_queued=100)
    fixed = deployment_options(cfg, RayServeOptions(replicas=2, cpus_per_replica=0.5))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 32 and fixed["max_queued_requests"] == 100  # a replica fills a forward
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5}
    auto = deployment_options(cfg, RayServeOptions(replicas=1, max_replicas=4, target_ongoing_requests=8))
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    assert "num_replicas" not in auto
    with pytest.raises(DepthmuxError, match="--max-replicas must be an integer >= 3"):
        RayServeOptions(replicas=3, max_replicas=2).validate()
    with pytest.raises(DepthmuxError, match="--cpus-per-replica"):
        RayServeOptions(cpus_per_replica=0).validate()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--replicas", "0", "--replicas must be an integer >= 1"),
        ("--max-replicas", "0", "--max-replicas must be an integer >= 1"),
        ("--cpus-per-replica", "nan", "--cpus-per-replica"),
        ("--max-ongoing", "0", "--max-ongoing must be an integer >= 1"),
    ],
)
def test_serve_ray_bad_options_are_one_line(tmp_path, capsys, option, value, message):
    from depthmux.cli import main

    (tmp_path / "ckpt").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["serve", "--ray", "--classifier", f"n2={tmp_path / 'ckpt'}", option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer):
    from serve_fixtures import tiny_classifiers

    return tiny_classifiers(tmp_path_factory.mktemp("ckpt"), tokenizer)


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head owned by this test process (loopback only, 2 CPUs, no dashboard); the server
    subprocess joins it through ``RAY_ADDRESS``, and the test reaches its replicas."""
    import ray

    from depthmux.utils.ray_cluster import start_ray

    start_ray(None, 2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def classify(url, model, inputs):
    import httpx

    r = httpx.post(url + "/v1/classify", json={"model": model, "input": inputs}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["data"]


@pytest.mark.slow
def test_two_replicas_answer_as_one_process_and_survive_a_killed_replica(ckpts, ray_head, tmp_path, monkeypatch):
    import httpx
    import ray
    from ray import serve

    from serve_fixtures import Server

    args = ["--classifier", f"n2={ckpts['n2']}", "--classifier", f"teacher={ckpts['teacher']}", "--max-wait-ms", "20"]
    single = Server(args, tmp_path / "single.log")
    try:
        texts = [f"review {i}: {'great' if i % 2 else 'dull'} {'very ' * (i % 3)}" for i in range(9)]
        expected = {m: [classify(single.url, m, texts[:k]) for k in (1, 4, 9)] for m in ("n2", "teacher")}
    finally:
        single.stop()

    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    served = Server(["--ray", "--replicas", "2", "--cpus-per-replica", "0.5", *args], tmp_path / "ray.log", 300)
    try:
        for _ in range(3):  # several requests: both replicas answer some of them
            for m in ("n2", "teacher"):
                assert [classify(served.url, m, texts[:k]) for k in (1, 4, 9)] == expected[m]

        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
        assert len(replicas) == 2

        async def load(seconds):
            codes = []
            async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:

                async def one(i):
                    try:
                        r = await client.post("/v1/classify", json={"model": "n2", "input": texts[i % 9]})
                        codes.append(r.status_code)
                    except httpx.TransportError:
                        codes.append(-1)

                end = time.monotonic() + seconds
                i = 0
                while time.monotonic() < end:
                    await asyncio.gather(*(one(i + j) for j in range(8)))
                    i += 8
            return codes

        async def kill_during_load():
            task = asyncio.ensure_future(load(20))
            await asyncio.sleep(3)
            victim = replicas[0]
            ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
            return await task

        codes = asyncio.run(kill_during_load())
        failed = sum(c != 200 for c in codes)
        print(f"requests during the kill: {len(codes)}, failed: {failed}")
        assert codes.count(200) > 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # Ray's controller replaces the dead replica
            status = serve.status().applications["depthmux"].deployments["depthmux"]
            if status.replica_states.get("RUNNING", 0) == 2:
                break
            time.sleep(2)
        assert status.replica_states.get("RUNNING", 0) == 2, status
        after = asyncio.run(load(3))
        assert after and all(c == 200 for c in after)
        assert [classify(served.url, "n2", texts[:k]) for k in (1, 4, 9)] == expected["n2"]
    finally:
        served.stop()


def loopback_only(addresses: list[str]) -> bool:
    return all(a.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for a in addresses)


def listening(pids: dict[int, str]) -> dict[str, str]:
    """Address -> process, for the addresses the processes ``pids`` (pid -> name) listen on (TCP) or are
    bound to (UDP)."""
    import psutil

    out = {}
    for c in psutil.net_connections("inet"):
        if c.pid in pids and c.laddr and (c.status == psutil.CONN_LISTEN or c.type == 2):  # 2: SOCK_DGRAM
            out[f"{c.laddr.ip}:{c.laddr.port}"] = f"{pids[c.pid]} ({c.pid})"
    return out


def test_loopback_check_sees_other_addresses():
    assert loopback_only(["127.0.0.1:80", "::ffff:127.0.0.1:9", "::1:5"])
    assert not loopback_only(["127.0.0.1:80", "0.0.0.0:6379"]) and not loopback_only(["192.0.2.2:1"])


@pytest.mark.slow
def test_completions_through_ray_equal_the_single_process_server_on_loopback(ray_head, tmp_path, monkeypatch):
    """``/v1/completions`` (plain and streaming) through ``serve --ray`` equals the uvicorn server's greedy
    completion; meanwhile every process of this test (Ray's GCS, raylet, agents, workers, Serve's controller,
    proxy and replica, the server) listens on loopback only."""
    import httpx
    import psutil

    from serve_fixtures import Server, tiny_llama_folder

    folder = tiny_llama_folder(tmp_path)
    args = ["--model", str(folder), "--model-name", "tiny"]
    body = {"model": "tiny", "prompt": ["Once upon a time", "The capital of"], "max_tokens": 12, "temperature": 0}

    def complete(url, **kw):
        r = httpx.post(url + "/v1/completions", json={**body, **kw}, timeout=120)
        assert r.status_code == 200, r.text
        return r

    def streamed(url):
        r = complete(url, prompt=body["prompt"][0], stream=True)
        events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: {")]
        return "".join(c["text"] for c in (json.loads(e)["choices"][0] for e in events))

    single = Server(args, tmp_path / "single.log")
    try:
        want = complete(single.url).json()
        want_stream = streamed(single.url)
    finally:
        single.stop()
    assert want_stream == want["choices"][0]["text"]

    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    served = Server(["--ray", "--cpus-per-replica", "0.5", *args], tmp_path / "ray.log", 300)
    try:
        got = complete(served.url).json()
        assert [c["text"] for c in got["choices"]] == [c["text"] for c in want["choices"]]
        assert [c["finish_reason"] for c in got["choices"]] == [c["finish_reason"] for c in want["choices"]]
        assert got["usage"] == want["usage"]
        assert streamed(served.url) == want_stream

        me = psutil.Process()
        pids = {p.pid: " ".join(p.cmdline()[:3])[:80] for p in [me, *me.children(recursive=True)]}
        addresses = listening(pids)
        print("listening:", addresses)
        assert served.url.rsplit(":", 1)[1] in {a.rsplit(":", 1)[1] for a in addresses}  # the proxy is seen
        assert loopback_only(list(addresses)), {a: p for a, p in addresses.items() if not loopback_only([a])}
    finally:
        served.stop()
