"""
The C{twistd restygate} command: options and the service maker.

C{Options} reads the command line; L{Options.postOptions} layers it over the
config file, the environment and the defaults (L{restygate.config.build}) and
validates once.  A bad value ends the start with one line naming the key, not
a usage dump or a traceback.  C{--check-config} does all of that and stops
there, for deployment scripts and C{ExecReload} guards.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List, Mapping, Optional, Tuple

from twisted.application.service import IService
from twisted.python import usage

from restygate import __version__
from restygate.discovery.catalog import load_catalog
from restygate.config import Config, ConfigError, build, from_environment, load_toml
from restygate.daemon.assembly import make_gateway
from restygate.daemon.workers.pool import make_workers

__all__ = ["Options", "makeService", "check_config", "run_check"]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Route /<datacenter>/<service>/<path> to the passing instances Consul "
        "knows for <service> in <datacenter>."
    )

    optParameters = [
        ["consul", None, None, "Consul agent: HOST:PORT or http(s)://HOST:PORT [env CONSUL_ADDR, default 127.0.0.1:8500]."],
        ["consul-token", None, None, "Consul ACL token, sent as X-Consul-Token [env CONSUL_HTTP_TOKEN]."],
        ["pool-size", None, None, "Idle keep-alive connections kept per upstream instance [64]."],
        ["upstream-timeout", None, None, "Seconds to wait for an upstream's response headers; then 504 [60]."],
        ["connect-timeout", None, None, "Seconds to wait for an upstream TCP connection; then 502 [5]."],
        ["catalog", None, None, "Static catalog TOML file to use instead of Consul."],
        ["watch-idle-timeout", None, None, "Stop watching a service nobody asked for in this many seconds [600]."],
        ["consul-wait", None, None, "Seconds a Consul blocking query may wait for a change [60]."],
        ["discovery-timeout", None, None, "Seconds a first request for a service waits for Consul [5]."],
        ["retries", None, None, "Retries on another instance when an upstream fails before answering [2]."],
        ["max-stale", None, None, "Refuse (503) a service whose Consul view is older than this many seconds while Consul is down [serve stale forever]."],
        ["datacenter-grace", None, None, "Seconds a datacenter Consul stops knowing is still served from its last view [60]."],
        ["max-connections", None, None, "Client connections served at once; more are answered 503 and closed [10000]."],
        ["max-body", None, None, "Largest request body accepted (bytes, or 512k, 10m, 1g); larger get 413 [unlimited]."],
        ["header-timeout", None, None, "Seconds a client may take to send a request's headers; then 408 [30]."],
        ["body-idle-timeout", None, None, "Seconds a request or response body may stall before the exchange is aborted [60]."],
        ["drain-timeout", None, None, "Seconds in-flight requests get to finish on shutdown [30]."],
        ["admin", None, None, "Admin endpoint for /metrics, /status, /healthz, /readyz, or 'none' [tcp:9901:interface=127.0.0.1]."],
        ["access-log", None, None, "Access log file, reopened on SIGUSR1; '-' is the daemon's own log [-]."],
        ["access-log-format", None, None, "Access log lines: combined (Apache/nginx plus upstream fields) or json [combined]."],
        ["upstream-ca", None, None, "PEM bundle of the CAs that certificates of HTTPS upstreams (Consul tag https, or meta protocol=https) must chain to [the platform's trust store]."],
        ["consul-ca", None, None, "PEM bundle of the CAs an https:// Consul agent's certificate must chain to [the platform's trust store]."],
        ["workers", None, None, "Worker processes sharing the listeners, or 'auto' for one per CPU [auto]."],
        ["worker-timeout", None, None, "Seconds a worker may leave the daemon's heartbeat unanswered before it is killed and replaced [30]."],
        ["config", "c", None, "TOML config file; its keys are these option names."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["server-name"] = []
        self["tag"] = []
        self["panic-all-instances"] = None
        self["upstream-tls-insecure"] = None
        self["check-config"] = False
        self.config: Optional[Config] = None
        # As given, for worker processes to parse the same way.
        self.argv: List[str] = []

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted endpoint (repeatable) [tcp:8080].
        """
        self["listen"].append(description)

    def opt_server_name(self, name: str) -> None:
        """
        Serve only requests whose Host is this name; '*.' wildcards allowed (repeatable).
        """
        self["server-name"].append(name)

    def opt_tag(self, tag: str) -> None:
        """
        Use only instances carrying this Consul tag (repeatable; all must match).
        """
        self["tag"].append(tag)

    def opt_panic_all_instances(self) -> None:
        """
        When a service has instances but none passing, route to all of them instead of answering 503.
        """
        self["panic-all-instances"] = True

    def opt_upstream_tls_insecure(self) -> None:
        """
        Do not verify HTTPS upstreams' certificates (logged as a warning): for tests, never for production.
        """
        self["upstream-tls-insecure"] = True

    def opt_check_config(self) -> None:
        """
        Validate the configuration (file, values, catalog, listeners, TLS files), print the verdict and exit 0 or 1.
        """
        self["check-config"] = True

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"restygate {__version__}")  # noqa: T201 - the one place stdout is the interface
        raise SystemExit(0)

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except ConfigError as e:
            raise SystemExit(f"restygate: {e}") from None

    def postOptions(self) -> None:
        if self["check-config"]:
            raise SystemExit(run_check(self, os.environ))
        self.config = load(self, os.environ)


def load(options: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """
    Build the config for these parsed options: command line over file over
    environment over defaults.
    """
    command_line = {key: options.get(key) for key in options if key not in ("config", "check-config")}
    for repeatable in ("listen", "server-name", "tag"):
        if not command_line.get(repeatable):
            command_line[repeatable] = None
    path = options.get("config")
    layers = [from_environment(environ)]
    if path:
        layers.append(load_toml(path))
    layers.append(command_line)
    config = build(layers, config_file=path)
    if config.catalog:
        load_catalog(config.catalog, config.tags)
    return config


def check_config(options: Mapping[str, Any], environ: Mapping[str, str]) -> Tuple[int, str]:
    """
    Build the config as a start would, starting nothing: the exit status
    and the one line that says why.
    """
    try:
        config = load(options, environ)
    except ConfigError as e:
        return 1, f"restygate: {e}"
    return 0, f"restygate: configuration OK ({config.config_file or 'no config file'})"


def run_check(options: Mapping[str, Any], environ: Mapping[str, str]) -> int:
    """
    L{check_config}, its line printed (to stderr for an error): the
    command-line side of C{--check-config} and C{restygate-check-config}.
    """
    status, message = check_config(options, environ)
    print(message, file=sys.stderr if status else sys.stdout)  # noqa: T201 - this output is the interface
    return status


def makeService(options: Options) -> IService:
    assert options.config is not None
    config = options.config

    def reload() -> Config:
        return load(options, os.environ)

    if config.workers > 1:
        return make_workers(config, options.argv, reload)
    return make_gateway(config, load=reload)
