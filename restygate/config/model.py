"""
The configuration a running gateway holds: one immutable, validated
L{Config}, and the error every unusable value raises.

Values come in layers -- built-in defaults, then the environment, then a TOML
file, then the command line -- and every layer uses the same key names as the
long command-line options (C{pool-size}, C{server-name}...).  Each key is
defined once, in L{restygate.config.keys}; L{restygate.config.sources.build}
merges the layers and validates everything once, so the rest of the code
never sees a malformed value; a reload builds a new L{Config} the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple, Union

from restygate.tls import CABundle

# The type of the services key; spelled here, not imported, because the
# services module builds on this one.
ServiceTable = Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...]

__all__ = ["Config", "ConfigError", "ConsulAddress"]


class ConfigError(ValueError):
    """
    A configuration value is unusable; the message names the key and says why,
    in one line fit to show an operator.
    """


@dataclass(frozen=True)
class ConsulAddress:
    """
    Where the Consul agent's HTTP API listens.
    """

    scheme: str
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.base_url


@dataclass(frozen=True)
class Config:
    """
    Everything a gateway needs to start, already validated.  Each field is
    one key of L{restygate.config.keys.KEYS}, which holds its default.
    """

    listen: Tuple[str, ...]
    consul: ConsulAddress
    # Kept out of repr: the token must never reach a log line.
    consul_token: Optional[str] = field(repr=False)
    pool_size: int
    server_names: Tuple[str, ...]
    tags: Tuple[str, ...]
    upstream_timeout: float
    connect_timeout: float
    catalog: Optional[str]
    watch_idle_timeout: float
    consul_wait: float
    discovery_timeout: float
    config_file: Optional[str]
    retries: int
    panic_all_instances: bool
    max_stale: Optional[float]
    datacenter_grace: float
    max_connections: int
    max_body: Optional[int]
    header_timeout: float
    body_idle_timeout: float
    tunnel_idle_timeout: float
    trusted_proxies: Tuple[Any, ...]
    rewrite_location: bool
    rewrite_cookie_path: bool
    drain_timeout: float
    admin: Optional[str]
    access_log: Optional[str]
    access_log_format: str
    upstream_ca: Optional[CABundle]
    upstream_tls_insecure: bool
    consul_ca: Optional[CABundle]
    workers: int
    worker_timeout: float
    max_watched_services: int
    consul_max_connections: int
    consul_max_rps: int
    consul_consistency: str
    balancer: str
    hash_on: str
    include_warning: bool
    host_routes: Tuple[str, ...]
    # "nearest", or the datacenters to try in order (empty: off).
    failover: Union[str, Tuple[str, ...]]
    failover_limit: Optional[int]
    # [services.<name>] and [services."<dc>/<name>"] (config.services).
    services: ServiceTable
