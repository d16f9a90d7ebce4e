"""
What discovery hands the data path: immutable snapshots of a service's
usable instances, and the one interface every source of them provides.

Consul (L{restygate.discovery.consul.source}) and the static catalog file
(L{restygate.discovery.catalog}) are two implementations of L{IDiscovery}; the proxy
knows only this module.  A snapshot is replaced whole when its source learns
something new, never changed in place, so a request holding one is never
surprised halfway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from twisted.internet.defer import Deferred
from zope.interface import Interface

__all__ = [
    "Instance",
    "Snapshot",
    "IDiscovery",
    "DiscoveryError",
    "UnknownDatacenter",
    "UnknownService",
    "DiscoveryUnavailable",
    "NoUsableInstance",
]


@dataclass(frozen=True)
class Instance:
    """
    One place a service can be reached.
    """

    address: str
    port: int
    tags: Tuple[str, ...] = ()
    meta: Tuple[Tuple[str, str], ...] = ()
    id: str = ""
    node: str = ""
    # Consul's Service.Weights: the share of traffic the instance gets while
    # its checks pass, and while they warn (include-warning; 0 means none).
    weight: int = 1
    warning_weight: int = 1
    # Precomputed once so the data path does not format strings per request.
    netloc: str = field(init=False, compare=False, repr=False)
    # An instance keys the pool's endpoints, the outliers' table and the
    # balancers' indexes, several lookups per request: a frozen dataclass
    # would hash every field (tags and meta included) each time.
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        host = f"[{self.address}]" if ":" in self.address else self.address
        object.__setattr__(self, "netloc", f"{host}:{self.port}")
        object.__setattr__(
            self,
            "_hash",
            hash((self.address, self.port, self.tags, self.meta, self.id, self.node, self.weight, self.warning_weight)),
        )

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True)
class Snapshot:
    """
    The usable instances of one (datacenter, service), as last learned.
    """

    dc: str
    service: str
    instances: Tuple[Instance, ...]
    index: int = 0
    # All registered instances, passing or not, when the source knows them
    # (for panic mode); empty otherwise.
    registered: Tuple[Instance, ...] = ()
    # Those whose worst check is warning, none critical (for include-warning).
    warning: Tuple[Instance, ...] = ()


class DiscoveryError(Exception):
    """
    Discovery could not say where a service is.
    """


class UnknownDatacenter(DiscoveryError):
    """
    The datacenter does not exist (Consul: C{No path to datacenter}).
    """

    def __init__(self, dc: str) -> None:
        super().__init__(f"unknown datacenter {dc!r}")
        self.dc = dc


class NoUsableInstance(DiscoveryError):
    """
    The service has no instance a request may use, in its datacenter nor in
    any its failover order names (L{restygate.proxy.failover}).
    """


class UnknownService(DiscoveryError):
    """
    The datacenter exists but Consul has no service of that name in it.
    """

    def __init__(self, dc: str, service: str) -> None:
        super().__init__(f"unknown service {service!r} in datacenter {dc!r}")
        self.dc = dc
        self.service = service


class DiscoveryUnavailable(DiscoveryError):
    """
    No answer about the service yet: the source is down, erring, or slower
    than the discovery timeout, and there is no earlier answer to fall back on.
    """


class IDiscovery(Interface):
    """
    A source of service instances.
    """

    def lookup(dc: str, service: str) -> Deferred[Snapshot]:
        """
        The current snapshot of C{service} in C{dc}, waiting (bounded) for the
        first answer when the pair was not known yet.

        Fails with L{UnknownDatacenter} or L{DiscoveryUnavailable}.
        """

    def current(dc: str, service: str) -> Optional[Snapshot]:
        """
        What L{lookup} would answer at once, without a L{Deferred}: the
        snapshot of C{service} in C{dc} when one is held and may be served
        now (the usual case, on every request), else L{None} -- then
        L{lookup} waits for it, or says why there is none.
        """
