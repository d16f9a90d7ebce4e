"""A Consul HTTP API test server for restygate's tests and benchmark.

No Consul binary can be installed where restygate is built, so this package serves the slice of Consul's
HTTP API that restygate depends on (shared/CONSUL-API.md): ``/v1/health/service`` and
``/v1/health/state/<state>`` with blocking queries and a ``?filter`` subset,
``/v1/catalog/{datacenters,services,register,deregister}``, ``/v1/agent/self`` and ``/v1/status/leader``,
with Consul's status codes, plain-text error bodies, headers (``X-Consul-LastContact`` for ``?stale``) and
``null`` maps, and the agent's per-client connection cap (429 past it), so that restygate, tested
here, works unchanged against a real agent. `ConsulServer` also has knobs for the faults real Consul
shows (stalls, outages, index resets after a snapshot restore, spurious wake-ups, health flips, vanished
datacenters) and records every request it sees. Time comes from an injected ``IReactorTime`` so tests can
drive blocking queries with ``twisted.internet.task.Clock``. ``python -m restygate.testing.consul --help``
runs it as a stand-alone server for the benchmark and for manual use; it needs no restygate module.

Modules: `model` (constants, entities), `datacenter` (one datacenter's catalog), `decode` (register
bodies), `goparse` (Go's parameter syntax), `bexpr` (the ``?filter`` subset), `wire` (HTTP plumbing),
`connlimit` (the per-client cap), `api` (the endpoints), `dispatch` (recording, stalls, failures,
blocking), `server` (`ConsulServer`), `cli` (the command line).
"""

from .cli import load_registrations, main
from .goparse import parse_go_bool, parse_go_duration
from .model import ConsulError
from .server import ConsulServer
from .wire import ConsulApiResource, SeenRequest

__all__ = [
    "ConsulApiResource",
    "ConsulError",
    "ConsulServer",
    "SeenRequest",
    "load_registrations",
    "main",
    "parse_go_bool",
    "parse_go_duration",
]
