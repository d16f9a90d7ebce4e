"""
The configuration a gateway gets from no layer at all, written out by hand,
so that a changed default is a visible, deliberate change.
"""

from __future__ import annotations

import os

from restygate.config import Config, ConsulAddress

# "auto" workers: one per CPU this process may run on (PyPy 3.9's os has no
# sched_getaffinity: all CPUs then).
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

DEFAULT_CONFIG = Config(
    listen=("tcp:8080",),
    consul=ConsulAddress("http", "127.0.0.1", 8500),
    consul_token=None,
    pool_size=64,
    server_names=(),
    tags=(),
    upstream_timeout=60.0,
    connect_timeout=5.0,
    catalog=None,
    watch_idle_timeout=600.0,
    consul_wait=60.0,
    discovery_timeout=5.0,
    config_file=None,
    retries=2,
    panic_all_instances=False,
    max_stale=None,
    datacenter_grace=60.0,
    max_connections=10000,
    max_body=None,
    header_timeout=30.0,
    tunnel_idle_timeout=3600.0,
    trusted_proxies=(),
    rewrite_location=True,
    rewrite_cookie_path=False,
    body_idle_timeout=60.0,
    drain_timeout=30.0,
    admin="tcp:9901:interface=127.0.0.1",
    access_log=None,
    access_log_format="combined",
    upstream_ca=None,
    upstream_tls_insecure=False,
    consul_ca=None,
    workers=CPUS,
    worker_timeout=30.0,
    max_watched_services=10000,
    consul_max_connections=64,
    consul_max_rps=100,
    consul_consistency="stale",
    balancer="round-robin",
    hash_on="client-ip",
    include_warning=False,
    host_routes=(),
    failover=(),
    failover_limit=None,
    services=(),
)
