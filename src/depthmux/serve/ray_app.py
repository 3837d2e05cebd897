"""The second host of ``depthmux serve``: a Ray Serve deployment (SPEC 5b, scale-out).

The request handling is the same object as under uvicorn, :class:`~depthmux.serve.handlers.Serving`,
wrapped by the same FastAPI app (:func:`~depthmux.serve.http.build_app`); what differs is the host:

* **Replicas** of the whole application (the engine and / or the classifiers) behind Ray's HTTP proxy,
  ``num_replicas`` fixed or an autoscaling config (``min_replicas`` .. ``max_replicas`` at
  ``target_ongoing_requests`` per replica). Each replica loads its own models; an engine's KV cache
  lives in its replica (a streaming request stays on the replica that started it).
* **RevMUX grouping** through Ray Serve's ``@serve.batch(max_batch_size, batch_wait_timeout_s)``
  (:class:`RayBatchGrouper`) instead of our :class:`~depthmux.serve.grouping.DynamicGrouper`: a forward
  runs when ``max_batch`` inputs wait or the oldest waited ``max_wait_ms``; the classifier completes an
  incomplete last group with dummies, as it does under uvicorn.
* **Backpressure**: ``max_ongoing_requests`` per replica (at least ``max_batch``, or a replica could
  never fill a forward) and ``max_queued_requests`` for the deployment; beyond those Ray's proxy answers
  503. The handlers' own limits (``max_queued``) still apply inside each replica.
* A replica whose engine loop died fails Ray's health check (``check_health``) and Ray replaces it.

Three ways in: ``depthmux serve --ray ...`` (:func:`run_ray_server`); ``serve run
depthmux.serve.ray_app:build_app_from_args classifiers=n2=runs/n2 replicas=2`` (:func:`build_app_from_args`,
Ray's application-builder convention); or ``DepthmuxDeployment.options(num_replicas=2).bind(asdict(cfg))``
inside a user's own Ray Serve application.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import asdict, dataclass

from ray import serve

from depthmux.errors import require
from depthmux.serve.errors import overloaded
from depthmux.serve.http import build_app
from depthmux.serve.metrics import ServerMetrics
from depthmux.serve.server import ServeConfig, build_serving, check_port
from depthmux.utils.checks import check_float, check_int
from depthmux.utils.ray_cluster import start_ray

APP_NAME = "depthmux"


class RayBatchGrouper:
    """One classifier's queue on Ray: the same interface as :class:`DynamicGrouper` (``submit``, ``close``),
    grouping by ``@serve.batch``. Each input is one batch item ``(text, enqueued)``; the batch function runs
    the classifier in a worker thread on the whole groups of N, then on the incomplete last group alone (as
    :class:`DynamicGrouper` does when the remainder's wait runs out), so one request on an idle server gets
    the same groups and batches, hence the same outputs, under both hosts."""

    def __init__(self, name, run, n, max_batch, max_wait_s, max_queued, metrics: ServerMetrics) -> None:
        self.name, self.run, self.n, self.max_queued, self.metrics = name, run, n, max_queued, metrics
        self.waiting = 0
        # a queue of its own (a decorated method would share one queue between all instances)
        self._forward = serve.batch(max_batch_size=max(n, max_batch - max_batch % n), batch_wait_timeout_s=max_wait_s)(
            self._run_batch
        )

    async def submit(self, texts: list[str]) -> list:
        """Queue ``texts`` and wait for their results (in order); 503 beyond ``max_queued`` waiting inputs."""
        if self.waiting + len(texts) > self.max_queued:
            raise overloaded(f"the queue of {self.name!r} ({self.max_queued} inputs)")
        self.waiting += len(texts)
        try:
            now = time.monotonic()
            return list(await asyncio.gather(*(self._forward((t, now)) for t in texts)))
        finally:
            self.waiting -= len(texts)

    async def _run_batch(self, items: list[tuple[str, float]]) -> list:
        start = time.monotonic()
        for _, enqueued in items:
            self.metrics.group_wait.labels(self.name).observe(start - enqueued)
        groups = -(-len(items) // self.n)
        self.metrics.group_fill.labels(self.name).observe(len(items) / (groups * self.n))
        self.metrics.forward_inputs.labels(self.name).observe(len(items))
        texts = [t for t, _ in items]
        whole = len(texts) - len(texts) % self.n
        results = []
        for part in (texts[:whole], texts[whole:]):  # whole groups, then the incomplete one alone (as uvicorn's)
            if part:
                results += await asyncio.to_thread(self.run, part)
        self.metrics.classify_inputs.labels(self.name).inc(len(items))
        return results

    async def close(self) -> None:
        """Nothing to stop: Ray owns the batching task."""


def ray_serving(cfg: ServeConfig):
    """:func:`build_serving` with every classifier grouped by :class:`RayBatchGrouper`."""
    serving = build_serving(cfg)
    serving.groupers = {
        name: RayBatchGrouper(name, c, c.n, cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_queued, serving.metrics)
        for name, c in serving.classifiers.items()
    }
    return serving


def replica_grpc_on_loopback() -> None:
    """Ray Serve (2.60) starts an inter-deployment gRPC server in every replica on ``[::]:0``, i.e. on every
    interface, whatever the node's address (``ray.serve._private.replica``; not configurable). On a
    loopback-only node (address 127.0.0.1: a local instance of :func:`~depthmux.utils.ray_cluster.start_ray`)
    bind it to 127.0.0.1 like the rest of Ray; nothing on a cluster node, or where Ray's code differs.
    Called in the replica before Ray starts that server (it does so once the deployment is built)."""
    import ray
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if ray.util.get_node_ip_address() != "127.0.0.1" or bind is None or getattr(bind, "loopback", False):
        return

    def on_loopback(server, address: str):
        return bind(server, "127.0.0.1:0" if address == "[::]:0" else address)

    on_loopback.loopback = True
    replica.add_port_to_grpc_server = on_loopback


@serve.deployment(name=APP_NAME)
@serve.ingress()
class DepthmuxDeployment:
    """One replica: the models of a :class:`ServeConfig` (given as a dict) and the FastAPI app over them."""

    def __init__(self, config: dict) -> None:
        replica_grpc_on_loopback()
        config = dict(config)
        threads = config.pop("threads", None)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.cfg = ServeConfig(**config)
        self.serving = ray_serving(self.cfg)

    def __serve_build_asgi_app__(self):
        return build_app(self.serving, self.cfg.max_body_bytes)

    def check_health(self) -> None:
        """Ray's periodic health check: a dead engine loop fails it, and Ray replaces the replica."""
        status, body = self.serving.health()
        if status != 200:
            raise RuntimeError(body.get("message", "unhealthy"))


@dataclass
class RayServeOptions:
    """How the application is hosted on Ray (``depthmux serve --ray``).

    Attributes:
        replicas: replicas to run (the minimum when ``max_replicas`` is set).
        max_replicas: autoscale between ``replicas`` and this at ``target_ongoing_requests`` per replica.
        target_ongoing_requests: the autoscaler's target load per replica.
        max_ongoing_requests: requests one replica holds at once (default: ``max(max_batch, max_num_seqs)``,
            so a replica can fill a forward of ``max_batch`` inputs).
        max_queued_requests: requests queued for the deployment beyond that before Ray answers 503
            (default: ``--max-queued``).
        cpus_per_replica: CPUs Ray reserves per replica (torch threads: the value rounded, at least 1).
        address: a Ray cluster to join (None: ``RAY_ADDRESS`` or a new local instance on 127.0.0.1).
        num_cpus: CPUs of a new local instance (None: all).
    """

    replicas: int = 1
    max_replicas: int | None = None
    target_ongoing_requests: float = 16.0
    max_ongoing_requests: int | None = None
    max_queued_requests: int | None = None
    cpus_per_replica: float = 1.0
    address: str | None = None
    num_cpus: int | None = None

    def validate(self) -> RayServeOptions:
        check_int("--replicas", self.replicas, 1)
        check_int("--max-replicas", self.max_replicas, self.replicas, allow_none=True)
        check_float("--target-ongoing", self.target_ongoing_requests, 0.0, low_open=True)
        check_int("--max-ongoing", self.max_ongoing_requests, 1, allow_none=True)
        check_int("--max-queued", self.max_queued_requests, 1, allow_none=True)
        check_float("--cpus-per-replica", self.cpus_per_replica, 0.0, low_open=True)
        check_int("--num-cpus", self.num_cpus, 1, allow_none=True)
        return self


def deployment_options(cfg: ServeConfig, opts: RayServeOptions) -> dict:
    """The keyword arguments of ``DepthmuxDeployment.options`` for ``cfg`` hosted as ``opts`` says."""
    out = {
        "name": APP_NAME,
        "max_ongoing_requests": opts.max_ongoing_requests or max(cfg.max_batch, cfg.max_num_seqs),
        "max_queued_requests": opts.max_queued_requests or cfg.max_queued,
        "ray_actor_options": {"num_cpus": opts.cpus_per_replica},
        "health_check_period_s": 5,
    }
    if opts.max_replicas is not None and opts.max_replicas > opts.replicas:
        out["autoscaling_config"] = {
            "min_replicas": opts.replicas,
            "max_replicas": opts.max_replicas,
            "target_ongoing_requests": opts.target_ongoing_requests,
        }
    else:
        out["num_replicas"] = opts.replicas
    return out


def build_ray_app(cfg: ServeConfig, opts: RayServeOptions | None = None):
    """The bound application (for ``serve.run``): ``cfg`` validated, models loaded in each replica."""
    cfg.validate()
    opts = (opts or RayServeOptions()).validate()
    config = {**asdict(cfg), "threads": max(1, round(opts.cpus_per_replica))}
    return DepthmuxDeployment.options(**deployment_options(cfg, opts)).bind(config)


def build_app_from_args(args: dict[str, str]):
    """Ray's application builder for ``serve run depthmux.serve.ray_app:build_app_from_args key=value ...``.

    Keys: ``classifiers`` (``name=dir[,name=dir]``), ``model``, ``exit_threshold``, ``speculative``,
    ``replicas``, ``max_replicas``, ``max_batch``, ``max_wait_ms``, ``max_queued``, ``max_num_seqs``,
    ``cpus_per_replica``. Ray's HTTP options (host, port) come from ``serve run``'s own flags or the Serve
    config file.
    """
    from depthmux.serve.server import parse_classifiers

    known = {"classifiers", "model", "replicas", "max_replicas", "max_batch", "max_wait_ms", "max_queued"}
    known |= {"max_num_seqs", "cpus_per_replica", "exit_threshold", "speculative"}
    unknown = sorted(set(args) - known)
    require(not unknown, f"unknown argument(s) {unknown}: use {sorted(known)}")
    items = [c for c in args.get("classifiers", "").split(",") if c]
    cfg = ServeConfig(
        model=args.get("model"),
        classifiers=parse_classifiers(items),
        max_batch=int(args.get("max_batch", 64)),
        max_wait_ms=float(args.get("max_wait_ms", 10.0)),
        max_queued=int(args.get("max_queued", 256)),
        max_num_seqs=int(args.get("max_num_seqs", 64)),
        exit_threshold=float(args["exit_threshold"]) if "exit_threshold" in args else None,
        speculative=int(args["speculative"]) if "speculative" in args else None,
    )
    opts = RayServeOptions(
        replicas=int(args.get("replicas", 1)),
        max_replicas=int(args["max_replicas"]) if "max_replicas" in args else None,
        cpus_per_replica=float(args.get("cpus_per_replica", 1.0)),
    )
    return build_ray_app(cfg, opts)


def start_ray_server(cfg: ServeConfig, opts: RayServeOptions) -> tuple[str, bool]:
    """Start Ray (or join a cluster), Ray's HTTP proxy on ``cfg.host:cfg.port`` and the application;
    return its URL once every replica is up, and whether a local Ray instance was started here."""
    local = start_ray_for(cfg, opts)
    return deploy(cfg, opts), local


def start_ray_for(cfg: ServeConfig, opts: RayServeOptions) -> bool:
    """Check ``cfg`` and ``opts`` and the port, then start Ray or join the cluster; True when a local
    instance was started here."""
    cfg.validate()
    opts.validate()
    check_port(cfg.host, cfg.port)
    return start_ray(opts.address, opts.num_cpus)


def deploy(cfg: ServeConfig, opts: RayServeOptions) -> str:
    """Ray's HTTP proxy on ``cfg.host:cfg.port`` and the application on a Ray already started; its URL once
    every replica is up."""
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_ray_app(cfg, opts), name=APP_NAME, route_prefix="/")
    return f"http://{cfg.host}:{cfg.port}"


def run_ray_server(cfg: ServeConfig, opts: RayServeOptions, on_ready=None) -> None:
    """:func:`start_ray_server`, then block until Ctrl-C / SIGTERM (exit 0). On the way out (also from a
    signal while the replicas start) a local Ray instance is shut down; on a cluster the application is deleted
    (without waiting: the cluster finishes it)."""
    import ray

    def _term(*_):
        raise KeyboardInterrupt

    local = start_ray_for(cfg, opts)
    signal.signal(signal.SIGTERM, _term)  # after ray.init, whose own handler aborts the process
    try:
        url = deploy(cfg, opts)
        if on_ready is not None:
            on_ready(url)
        threading.Event().wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a normal end of a server (as under uvicorn)
        pass
    finally:
        if local:
            ray.shutdown()
        else:
            serve.delete(APP_NAME, _blocking=False)
