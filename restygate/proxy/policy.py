"""
Routing policy: what a request for a (datacenter, service) may use and how
it chooses.

A L{Policy} is the effective setting of one service -- the global config
with its C{[services...]} tables laid over it: which balancer, the hash key
it reads from the request, timeouts and retries, whether warning instances
and panic mode count -- and L{Policies} turns a discovery snapshot into the weighted
L{Choice} a balancer picks from, once per snapshot rather than per request:
passing instances at their C{Weights.Passing}, with C{include-warning} those
whose checks warn at their C{Weights.Warning} (as Consul's DNS does), and in
panic mode, when none of those exist, every registered instance.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.logger import Logger
from zope.interface import classImplements

from restygate.config import Config
from restygate.config.services import Overrides, effective
from restygate.discovery.model import Instance, Snapshot
from restygate.ops.views import IRoutingView
from restygate.proxy.downstream import HeaderList
from restygate.proxy.headers import header, headers_named
from restygate.proxy.routing import RouteError, route_request
from restygate.upstream.choice import Choice

__all__ = ["Policy", "Policies", "hash_source"]

log = Logger()


def hash_source(hash_on: str) -> Tuple[str, bytes]:
    """
    C{hash-on} as (kind, name): C{("header", b"x-user")},
    C{("cookie", b"session")} or C{("client-ip", b"")}; already validated.
    """
    kind, _, name = hash_on.partition(":")
    return kind, name.encode("ascii").lower() if kind == "header" else name.encode("ascii")


def _cookie(headers: HeaderList, name: bytes) -> Optional[bytes]:
    for line in headers_named(headers, b"cookie"):
        for pair in line.split(b";"):
            key, equals, value = pair.strip().partition(b"=")
            if equals and key == name:
                return value
    return None


class Policy:
    """
    The effective routing settings of requests to one (datacenter, service).

    @ivar config: the configuration those requests run with.
    @ivar balancer: the name of the balancing strategy.
    """

    __slots__ = ("config", "balancer", "_hash")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.balancer = config.balancer
        self._hash = hash_source(config.hash_on) if config.balancer == "hash" else None

    def describe(self) -> Dict[str, Any]:
        """
        The effective settings, JSON-ready, for /status.
        """
        config = self.config
        return {
            "balancer": self.balancer,
            "hash_on": config.hash_on if self._hash is not None else None,
            "tags": list(config.tags),
            "retries": config.retries,
            "upstream_timeout": config.upstream_timeout,
            "connect_timeout": config.connect_timeout,
            "include_warning": config.include_warning,
            "panic_all_instances": config.panic_all_instances,
            "max_body": config.max_body,
            "rewrite_location": config.rewrite_location,
            "failover": config.failover if isinstance(config.failover, str) else list(config.failover),
            "failover_limit": config.failover_limit,
        }

    def hash_key(self, headers: HeaderList, client_ip: str) -> Optional[bytes]:
        """
        The key a C{hash} balancer places a request with these headers by,
        or L{None} (no hashing, or the request lacks the header or cookie).
        """
        if self._hash is None:
            return None
        kind, name = self._hash
        if kind == "client-ip":
            return client_ip.encode("ascii", "replace")
        return header(headers, name) if kind == "header" else _cookie(headers, name)

    def weighted(self, snapshot: Snapshot) -> Optional[Choice]:
        """
        What a request may be sent to from this snapshot, weighted; L{None}
        when nothing is (the service gets a 503).
        """
        instances: List[Instance] = list(snapshot.instances)
        weights = [i.weight for i in instances]
        if self.config.include_warning:
            for instance in snapshot.warning:
                if instance.warning_weight > 0:
                    instances.append(instance)
                    weights.append(instance.warning_weight)
        if not instances and self.config.panic_all_instances and snapshot.registered:
            log.warn(
                "{dc}/{service}: no passing instance; panic mode routes to all {n} registered",
                dc=snapshot.dc, service=snapshot.service, n=len(snapshot.registered),
            )
            instances = list(snapshot.registered)
            weights = [i.weight for i in instances]
        if not instances:
            return None
        # The snapshot's own tuple when it is all there is, so the data path's
        # "nothing ejected" fast path sees the same object every time.
        members = snapshot.instances if len(instances) == len(snapshot.instances) else tuple(instances)
        return Choice(members, tuple(weights))


class Policies:
    """
    The policy of every service, and the weighted choice of each watched
    service's current snapshot, rebuilt only when the snapshot or the policy
    changes.
    """

    def __init__(self, config: Config) -> None:
        self._choices: Dict[Tuple[str, str], Tuple[Snapshot, Policy, Optional[Choice]]] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        Take a new config: requests that start from now on get its policies.
        """
        self._config = config
        self.default = Policy(config)
        self._table: Dict[str, Overrides] = dict(config.services)
        self._set = frozenset(field for overrides in self._table.values() for field, _ in overrides)
        # Keyed by the most specific table that applies, not by (dc,
        # service): a client naming made-up datacenters must not grow it.
        self._policies: Dict[str, Policy] = {}

    def max_body(self, target: bytes, headers: HeaderList) -> Optional[int]:
        """
        The max-body of the service a request (its target and headers)
        routes to; the global one for a request that routes nowhere: it is
        refused before any body matters.
        """
        if "max_body" not in self._set:
            return self._config.max_body
        try:
            route = route_request(target, headers_named(headers, b"host"), (), self._config.host_routes)
        except RouteError:
            return self._config.max_body
        return self.policy(route.dc, route.service).config.max_body

    def policy(self, dc: str, service: str) -> Policy:
        """
        The policy of C{service} in C{dc}.
        """
        table = self._table
        if not table:
            return self.default
        key = f"{dc}/{service}".lower()
        if key not in table:
            key = service.lower()
            if key not in table:
                return self.default
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = Policy(effective(self._config, table, dc, service))
        return policy

    def described(self, dc: str, service: str) -> Dict[str, Any]:
        return self.policy(dc, service).describe()

    def tables(self) -> Dict[str, Dict[str, Any]]:
        shown = {"*": self.default.describe()}
        for name in self._table:
            dc, _, service = name.rpartition("/")
            shown[name] = self.policy(dc, service).describe()
        return shown

    def choice(self, policy: Policy, snapshot: Snapshot) -> Optional[Choice]:
        """
        The weighted instances of C{snapshot} under C{policy}.
        """
        if not snapshot.registered and not snapshot.instances:
            # Made-up names get empty snapshots: they must not get entries.
            return None
        key = (snapshot.dc, snapshot.service)
        cached = self._choices.get(key)
        if cached is not None and cached[0] is snapshot and cached[1] is policy:
            return cached[2]
        choice = policy.weighted(snapshot)
        # Only services discovery holds a snapshot of get an entry; one that
        # went away leaves its last entry, replaced if it comes back.
        self._choices[key] = (snapshot, policy, choice)
        return choice


# Declared here, not with @implementer: a class decorator would keep mypyc
# (setup.py) from compiling the class as a native one.
classImplements(Policies, IRoutingView)
