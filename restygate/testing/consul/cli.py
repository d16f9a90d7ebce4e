"""The command line of the Consul test server: ``python -m restygate.testing.consul --help``.

Runs a `ConsulServer` stand-alone for the benchmark and for manual use; it needs no restygate module
outside this package.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from .connlimit import DEFAULT_MAX_CONNS_PER_CLIENT
from .model import JSON, ConsulError
from .server import ConsulServer

_log = Logger()


def load_registrations(path: str) -> List[Dict[str, JSON]]:
    """Read a file holding one register body or a list of them."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and all(isinstance(item, dict) for item in data):
        return data
    raise ValueError("expected a register body (a JSON object) or a list of them")


def _parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m restygate.testing.consul",
        description="Serve Consul's HTTP API (the part restygate uses) for tests and benchmarks.",
    )
    parser.add_argument("--port", type=int, default=8500, help="TCP port (default 8500; 0 picks one)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--dc", default="dc1", help="the agent's own datacenter (default dc1)")
    parser.add_argument("--node-name", default="consul-test", help="the agent's node name")
    parser.add_argument(
        "--register",
        action="extend",
        nargs="+",
        default=[],
        metavar="FILE.json",
        help="apply the /v1/catalog/register body, or list of them, in each file at start (repeatable)",
    )
    parser.add_argument(
        "--acl-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="enable ACLs; this token grants full access (repeatable)",
    )
    parser.add_argument(
        "--agent-prefix",
        action="store_true",
        help="prefix 'No path to datacenter' like a client agent does (rpc error making call: ...)",
    )
    parser.add_argument(
        "--http-max-conns-per-client",
        type=int,
        default=DEFAULT_MAX_CONNS_PER_CLIENT,
        metavar="N",
        help="limits.http_max_conns_per_client: concurrent connections per client IP, past it 429 (default "
        f"{DEFAULT_MAX_CONNS_PER_CLIENT}; 0: no limit)",
    )
    parser.add_argument("--no-jitter", action="store_true", help="do not add jitter to blocking waits")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--verbose", action="store_true", help="also log every catalog change (debug level)")
    return parser, parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the server until SIGTERM or SIGINT."""
    parser, args = _parse_args(argv)
    # Imported here so that importing this module (from trial) does not install the default reactor.
    from twisted.internet import reactor as global_reactor

    reactor = cast(Any, global_reactor)
    server = ConsulServer(
        reactor,
        args.dc,
        node_name=args.node_name,
        acl_token=args.acl_token or None,
        agent_prefix=args.agent_prefix,
        jitter=not args.no_jitter,
        # Nobody can read requests_seen from outside the process; /_test/stats has the counts.
        record_limit=0,
        max_conns_per_client=args.http_max_conns_per_client,
    )
    for path in args.register:
        try:
            for body in load_registrations(path):
                server.register(body)
        except (OSError, ValueError) as e:
            parser.error(f"--register {path}: {e}")
        except ConsulError as e:
            parser.error(f"--register {path}: {e.status} {e.message}")
    # Rendering 15,000 checks on the first /v1/health/state reads held every
    # other answer up for ~0.3 s at a benchmark's start; a Go agent's state
    # store answers those in milliseconds from the start.
    server.warm()
    if hasattr(gc, "freeze"):
        # A real agent's collector runs beside it and never stops an answer
        # for long; CPython's full collections would walk every registration
        # loaded here (tens of ms for thousands of services, in the middle of
        # a benchmark).  They live as long as the server: out of its sight.
        gc.collect()
        gc.freeze()
    level = LogLevel.debug if args.verbose else LogLevel.info
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stdout), [LogLevelFilterPredicate(level)])]
    )
    try:
        server.listen(reactor, args.port, args.interface, access_log=args.access_log)
    except Exception as e:  # a CannotListenError and friends: one clean line, not a traceback
        _log.error("Consul test server cannot listen: {error}", error=e)
        return 1
    _log.info(
        "Consul test server for {dc} listening on {url} with {count} datacenters",
        dc=args.dc,
        url=server.url,
        count=len(server.datacenters),
    )
    # A shell starts background jobs with SIGINT ignored, and Twisted then leaves SIGINT alone; restore
    # Python's handler so that the reactor installs its own and SIGINT stops the server as SIGTERM does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reactor.run()
    return 0
