"""
What the admin side (status, metrics, readiness) reads from the other parts,
as small interfaces each part implements, and L{Inspected}, the bundle of
them the assembly hands the admin side.

The admin side must only observe: reading a view never starts a watch, opens
a connection or changes a counter.  It knows no concrete class of another
part and no private attribute; a part that wants to be shown implements the
view for it (discovery sources L{IDiscoveryView}, the upstream pool
L{IPoolView}, outlier detection L{IOutlierView}, listeners L{IListenerView},
the routing policies L{IRoutingView}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.interfaces import IListeningPort
from zope.interface import Attribute, Interface

from restygate.config import Config
from restygate.discovery.model import Instance

__all__ = [
    "Watched",
    "IDiscoveryView",
    "ConsulLoad",
    "FeedState",
    "IConsulLoadView",
    "IPoolView",
    "IOutlierView",
    "IListenerView",
    "IRoutingView",
    "Inspected",
]


@dataclass(frozen=True)
class Watched:
    """
    One (dc, service) discovery knows about, as of now.

    @ivar instances: its usable instances, empty before the first answer.
    @ivar synced: there has been an answer (Consul) or it is in the catalog.
    @ivar index: Consul's index of the last answer; L{None} for the catalog.
    @ivar last_success: when Consul last answered, L{None} if never or for
        the catalog.
    @ivar errors: Consul queries failed in a row since the last answer.
    """

    dc: str
    service: str
    instances: Tuple[Instance, ...]
    synced: bool
    index: Optional[int] = None
    last_success: Optional[float] = None
    last_error: Optional[str] = None
    errors: int = 0


class IDiscoveryView(Interface):
    """
    A discovery source as the admin side sees it.  Unlike
    L{restygate.discovery.model.IDiscovery.lookup}, nothing here starts
    watching a service.
    """

    def watched() -> List[Watched]:
        """
        Every (dc, service) the source holds, sorted.
        """

    def has_instances(dc: str, service: str) -> bool:
        """
        Whether at least one instance of C{service} in C{dc} is known right
        now: the metrics' test for a (dc, service) worth series of its own.
        """

    def answered() -> bool:
        """
        Whether the source has had a usable answer yet (some Consul watch
        succeeded, the catalog is loaded): part of readiness.
        """


@dataclass(frozen=True)
class FeedState:
    """
    One datacenter's change feed.

    @ivar lag: seconds from its last answer until the fetches it caused had
        their answers, plus how far behind the leader the answer was.
    @ivar refetches: one-off fetches it caused so far.
    """

    dc: str
    lag: float
    last_contact: float
    refetches: int


@dataclass(frozen=True)
class ConsulLoad:
    """
    What discovery costs Consul and how close it is to its caps.
    """

    connections: int
    max_connections: int
    peak_connections: int
    watches: int
    max_watches: int
    dedicated: int
    evicted: int
    name_misses: int
    feeds: Tuple[FeedState, ...]
    failing: int


class IConsulLoadView(Interface):
    """
    Consul discovery's load against its caps (C{consul-max-connections},
    C{max-watched-services}) and its change feeds.
    """

    def consul_load() -> ConsulLoad:
        """
        The counts as of now.
        """


class IPoolView(Interface):
    """
    The upstream connection pool, counted.
    """

    def idle_connections() -> int:
        """
        Keep-alive connections to instances, idle and ready for reuse.
        """


class IOutlierView(Interface):
    """
    Passive outlier detection's view of the instances.
    """

    def is_ejected(dc: str, service: str, instance: Instance) -> bool:
        """
        Whether C{instance} is out of rotation right now.
        """

    def inflight(dc: str, service: str, instance: Instance) -> int:
        """
        Requests sent to C{instance} and not finished yet.
        """

    def ejections() -> int:
        """
        Ejections so far.
        """


class IListenerView(Interface):
    """
    A listening endpoint.
    """

    description = Attribute("The endpoint description it listens on (C{str}).")

    def listening() -> Optional[IListeningPort]:
        """
        The port, once it is bound; L{None} before (or after stopping).
        """


class IRoutingView(Interface):
    """
    The routing policies in force, as plain data.
    """

    def described(dc: str, service: str) -> Dict[str, Any]:
        """
        The effective policy of C{service} in C{dc}: balancer, timeouts...
        """

    def tables() -> Dict[str, Dict[str, Any]]:
        """
        The global policy (C{"*"}) and each C{[services...]} table's
        effective one, by table name.
        """


@dataclass(frozen=True)
class Inspected:
    """
    Everything the admin side shows, handed over by the assembly.

    @ivar config: the config in force (it changes on reload).
    @ivar listeners: (role, listener) for every listener, the admin one
        included; a callable since the admin listener is made after the admin
        side it serves.
    """

    discovery: IDiscoveryView
    outliers: IOutlierView
    pool: IPoolView
    config: Callable[[], Config]
    listeners: Callable[[], Sequence[Tuple[str, IListenerView]]]
    # Open Upgrade tunnels (WebSocket...).
    tunnels: Callable[[], int] = lambda: 0
    routing: Optional[IRoutingView] = None
