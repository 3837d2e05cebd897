"""Joining or starting Ray, the one place both Ray hosts use (``serve --ray``, ``mux predict --ray``).

``RAY_ADDRESS`` (or an explicit address such as ``auto`` or ``ray://head:10001``) joins a running
cluster (``ray start --head`` on the head node, ``ray start --address HEAD:6379`` on the others);
without one a local instance starts on loopback only, without the dashboard.

Loopback: on Linux, Ray turns a node address of 127.0.0.1 into the machine's own address (so that other
nodes can reach it), and its servers (GCS, raylet, agents, workers, Serve's controller and proxy gRPC
ports) then listen on every interface. Ray's single-machine mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
(the default on macOS and Windows), keeps the node address at 127.0.0.1, and every one of those servers
listens on 127.0.0.1 only (checked with ``ss -ltnp``: README, Scale-out). Ray reads that variable when it
is imported, so :func:`start_ray` sets it for the processes Ray starts and in Ray's constants for this one.
"""

from __future__ import annotations

import os

#: Ray's switch between single-machine mode ("0") and cluster mode (the default on Linux).
RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``), or start a local instance with ``num_cpus`` CPUs (None: all)
    listening on 127.0.0.1 only; nothing when Ray is already initialised in this process. True when a
    local instance was started here (it ends with this process)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    local_only()
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return True


def local_only() -> None:
    """Put Ray in single-machine mode (module docstring): for the processes a new local instance starts
    (they inherit the environment) and for this one (Ray read the variable when it was imported)."""
    os.environ[RAY_CLUSTER_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
