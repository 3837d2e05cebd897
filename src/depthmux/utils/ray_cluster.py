"""Joining or starting Ray, the one place both Ray hosts use (``serve --ray``, ``mux predict --ray``).

``RAY_ADDRESS`` (or an explicit address such as ``auto`` or ``ray://head:10001``) joins a running
cluster (``ray start --head`` on the head node, ``ray start --address HEAD:6379`` on the others);
without one a local instance starts, bound to 127.0.0.1 and without the dashboard.
"""

from __future__ import annotations

import os


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``), or start a local instance with ``num_cpus`` CPUs (None: all);
    nothing when Ray is already initialised in this process. True when a local instance was started here
    (it ends with this process)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return True
