"""
Every configuration key, defined once: its name (the long option and the
TOML key), the L{Config} field it fills, the kind of value it takes, its
default, its help text and whether a reload may change it.

The command line (L{restygate.daemon.tap.Options}), its help, the config
file's parsing, C{--check-config}, the reload's split between live and
restart-only keys, the README's configuration table
(L{restygate.config.reference}) and the key list of C{etc/restygate.toml}
(checked by a test) all follow from this table, so adding a key is one
entry here and one field on L{Config}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from restygate.config import services, values
from restygate.config.values import Kind

__all__ = ["Key", "KEYS", "DEFAULTS", "RESTART_ONLY"]


@dataclass(frozen=True)
class Key:
    """
    One configuration key.

    @ivar form: C{"value"} (C{--key VALUE}), C{"list"} (repeatable
        C{--key VALUE}; a list in the file), C{"switch"} (C{--key} alone
        turns it on; true or false in the file) or C{"table"} (TOML tables,
        in the file only).
    @ivar shown: how the default reads to a person, where the value itself
        says too little (C{"auto"} is one worker per CPU...).
    @ivar live: a reload puts a new value in force at once; otherwise the
        key needs a restart (bound sockets, the discovery source).
    """

    name: str
    field: str
    kind: Kind
    default: Any
    help: str
    live: bool = True
    form: str = "value"
    shown: Optional[str] = None

    def default_text(self) -> str:
        """
        The default as the help and the README show it.
        """
        if self.shown is not None:
            return self.shown
        if isinstance(self.default, (list, dict)):
            return ", ".join(self.default) or "none"
        if self.default is None or self.default is False:
            return "off" if self.form == "switch" else "none"
        return str(self.default)


def _keys(*keys: Key) -> Dict[str, Key]:
    return {key.name: key for key in keys}


KEYS: Mapping[str, Key] = _keys(
    Key("workers", "workers", values.workers, "auto",
        "Worker processes sharing the listeners, or 'auto' for one per CPU; 1 serves from the daemon's own process.",
        live=False, shown="auto (one per CPU)"),
    Key("worker-timeout", "worker_timeout", values.seconds(0), 30,
        "Seconds a worker may leave the daemon's heartbeat unanswered before it is killed and replaced."),
    Key("listen", "listen", values.endpoints_list, ["tcp:8080"],
        "Twisted endpoint to listen on (repeatable): tcp:8080:interface=127.0.0.1, "
        "ssl:8443:privateKey=key.pem:certKey=cert.pem, unix:/run/restygate.sock.",
        live=False, form="list"),
    Key("consul", "consul", values.consul, "127.0.0.1:8500",
        "Consul agent: HOST:PORT or http(s)://HOST:PORT.",
        live=False, shown="$CONSUL_ADDR, $CONSUL_HTTP_ADDR, 127.0.0.1:8500"),
    Key("consul-token", "consul_token", values.optional_string, None,
        "Consul ACL token, sent as X-Consul-Token; never logged, shown or put in a URL.",
        live=False, shown="$CONSUL_HTTP_TOKEN"),
    Key("consul-ca", "consul_ca", values.ca_bundle, None,
        "PEM bundle of the CAs an https:// Consul agent's certificate must chain to.",
        live=False, shown="the platform's trust store"),
    Key("catalog", "catalog", values.catalog, None,
        "Static catalog TOML file used instead of Consul (format in etc/catalog.toml), re-read when it changes.",
        live=False),
    Key("tag", "tags", values.tags, [],
        "Use only instances carrying this Consul tag (repeatable; all must match; sent to Consul as tag=).",
        form="list"),
    Key("server-name", "server_names", values.server_names, [],
        "Serve only requests whose Host is this name, '*.' wildcards allowed (repeatable); others get 404.",
        form="list"),
    Key("trusted-proxies", "trusted_proxies", values.networks, [],
        "Addresses or CIDR blocks of proxies in front of restygate (repeatable): their X-Forwarded-For, "
        "X-Forwarded-Proto and Forwarded are extended, not replaced, and X-Real-IP is the first address "
        "before them.",
        form="list"),
    Key("rewrite-location", "rewrite_location", values.flag, True,
        "Rewrite Location and Content-Location in responses to stay behind the gateway: /x becomes "
        "/<dc>/<service>/x, a URL at the instance's own address the gateway's URL (like nginx's proxy_redirect "
        "default)."),
    Key("rewrite-cookie-path", "rewrite_cookie_path", values.flag, False,
        "Rewrite the Path of Set-Cookie in responses: Path=/x becomes Path=/<dc>/<service>/x.",
        form="switch"),
    Key("pool-size", "pool_size", values.count(1), 64,
        "Idle keep-alive connections kept per upstream instance (maxPersistentPerHost)."),
    Key("upstream-timeout", "upstream_timeout", values.seconds(0), 60,
        "Seconds to wait for an upstream's response headers; then 504."),
    Key("connect-timeout", "connect_timeout", values.seconds(0), 5,
        "Seconds to wait for an upstream TCP connection; then another instance, or 502."),
    Key("retries", "retries", values.count(0), 2,
        "Retries on another instance when an upstream fails before answering."),
    Key("panic-all-instances", "panic_all_instances", values.flag, False,
        "When a service has instances but none passing, route to all of them instead of answering 503.",
        form="switch"),
    Key("max-stale", "max_stale", values.optional(values.seconds(0)), None,
        "Refuse (503) a service whose Consul view is older than this many seconds while Consul is down.",
        shown="serve stale forever"),
    Key("datacenter-grace", "datacenter_grace", values.seconds(0), 60,
        "Seconds a datacenter Consul stops knowing is still served from its last view."),
    Key("consul-wait", "consul_wait", values.seconds(0, 600), 60,
        "Seconds a Consul blocking query may wait for a change."),
    Key("discovery-timeout", "discovery_timeout", values.seconds(0), 5,
        "Seconds a first request for a service waits for Consul's first answer."),
    Key("watch-idle-timeout", "watch_idle_timeout", values.seconds(0), 600,
        "Stop watching a service nobody asked for in this many seconds."),
    Key("max-watched-services", "max_watched_services", values.count(1), 10000,
        "Watched (datacenter, service) pairs at most; past it the least recently used is dropped "
        "(and watched again when asked for)."),
    Key("consul-max-connections", "consul_max_connections", values.count(4), 64,
        "Connections to the Consul agent at most, whatever the number of watched services "
        "(keep it well under the agent's limits.http_max_conns_per_client, 200).",
        live=False),
    Key("consul-max-rps", "consul_max_rps", values.count(1), 100,
        "Background Consul queries per second at most (refreshes, retries, re-fetches after an index "
        "reset); a first fetch a client waits for goes first.",
        live=False),
    Key("consul-consistency", "consul_consistency", values.choice("default", "stale", "consistent"), "stale",
        "Consul read consistency: stale (any server answers; X-Consul-LastContact is exported), "
        "default (the leader) or consistent.",
        live=False),
    Key("max-connections", "max_connections", values.count(1), 10000,
        "Client connections served at once; more are answered 503 and closed."),
    Key("max-body", "max_body", values.optional(values.size), None,
        "Largest request body accepted (bytes, or 512k, 10m, 1g); larger get 413.",
        shown="unlimited"),
    Key("header-timeout", "header_timeout", values.seconds(0), 30,
        "Seconds a client may take to send a request's headers; then 408."),
    Key("body-idle-timeout", "body_idle_timeout", values.seconds(0), 60,
        "Seconds a body transfer (either way) or an idle keep-alive client connection may stall before it is closed."),
    Key("tunnel-idle-timeout", "tunnel_idle_timeout", values.seconds(0), 3600,
        "Seconds an Upgrade tunnel (a WebSocket...) may carry no byte either way before both its connections are closed."),
    Key("drain-timeout", "drain_timeout", values.seconds(0), 30,
        "On SIGTERM: stop accepting, then let in-flight requests finish for this many seconds."),
    Key("admin", "admin", values.optional(values.endpoint), "tcp:9901:interface=127.0.0.1",
        "Admin endpoint for /metrics, /status, /healthz, /readyz, or 'none'.",
        live=False),
    Key("access-log", "access_log", values.access_log, "-",
        "Access log file, reopened on SIGUSR1; '-' is the daemon's own log."),
    Key("access-log-format", "access_log_format", values.choice("combined", "json"), "combined",
        "Access log lines: combined (Apache/nginx plus upstream fields) or json."),
    Key("upstream-ca", "upstream_ca", values.ca_bundle, None,
        "PEM bundle of the CAs that certificates of HTTPS upstreams (Consul tag https, or meta "
        "protocol=https) must chain to.",
        shown="the platform's trust store"),
    Key("upstream-tls-insecure", "upstream_tls_insecure", values.flag, False,
        "Do not verify HTTPS upstreams' certificates (logged as a warning): for tests, never for production.",
        form="switch"),
    Key("balancer", "balancer", values.choice(*values.BALANCERS), "round-robin",
        "How a request picks an instance, always by Consul Weights and never an ejected one: round-robin; "
        "least-request, the less busy of two drawn at random; random; or hash, consistent hashing on hash-on."),
    Key("hash-on", "hash_on", values.hash_on, "client-ip",
        "The hash balancer's key: header:<name>, cookie:<name> or client-ip; a request without it is "
        "balanced round-robin."),
    Key("include-warning", "include_warning", values.flag, False,
        "Also route to instances whose Consul checks warn (none critical), at their Weights.Warning.",
        form="switch"),
    Key("host-route", "host_routes", values.host_routes, [],
        "Route by Host too (repeatable): a template like {service}.{dc}.gw.example.com, each placeholder one "
        "DNS label; a matching Host (port ignored) goes to that service and datacenter with its path whole. "
        "Its hosts need no server-name.",
        form="list"),
    Key("failover", "failover", values.failover, [],
        "When a request's datacenter has no usable instance (none passing, or all ejected), serve it from the "
        "first datacenter in this order that has one: datacenter names (repeatable), or \"nearest\" for all "
        "by Consul's network coordinates. Off unless set: clients often pick a datacenter for its data.",
        form="list", shown="off"),
    Key("failover-limit", "failover_limit", values.optional(values.count(1)), None,
        "How many datacenters failover tries at most.", shown="all"),
    Key("services", "services", services.table(lambda: KEYS), {},
        "Per-service settings: [services.<name>] and [services.\"<dc>/<name>\"] tables (the latter wins) "
        "setting tags, balancer, hash-on, retries, upstream-timeout, connect-timeout, failover, failover-limit, "
        "include-warning, rewrite-location, max-body or panic-all-instances for one service (file only).",
        form="table"),
)

DEFAULTS: Mapping[str, Any] = {name: key.default for name, key in KEYS.items()}

# Keys whose new value needs a restart: listeners are bound sockets, and the
# discovery source and its credentials are wired into every watcher.
RESTART_ONLY: Tuple[str, ...] = tuple(name for name, key in KEYS.items() if not key.live)
