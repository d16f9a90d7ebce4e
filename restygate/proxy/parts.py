"""
The engine's state and the services its exchanges use of it: the base class
of L{restygate.proxy.engine.Engine}, here so that an exchange needs no import
of the engine that makes it.

A class rather than a protocol: compiled (setup.py), an exchange reads these
parts and calls these methods natively, where through a protocol every read
is a lookup by name (a fifth of a compiled request's instructions were).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from restygate.config import Config
from restygate.discovery.model import IDiscovery
from restygate.proxy.deadlines import Deadlines
from restygate.proxy.observe import Completed, RequestObserver
from restygate.proxy.policy import Policies
from restygate.upstream.pickers import Balancer
from restygate.upstream.outliers import Outliers
from restygate.upstream.pool import Upstream
from restygate.upstream.retry import RetryBudget

__all__ = ["EngineParts", "Nearest"]

log = Logger()


class Nearest(Protocol):
    """Datacenters by network distance from C{dc}, nearest first (C{dc} itself may be among them)."""

    def __call__(self, dc: str) -> Deferred[List[str]]: ...


class EngineParts:
    """
    What the engine's exchanges share: outliers, the balancer, the routing
    policies, the retry budget, the timers, and the observers every finished
    request is told to.

    @ivar config: replaced whole on reload; each request reads it once per use.
    @ivar tunnels: open Upgrade tunnels, for metrics.
    """

    def __init__(
        self,
        discovery: IDiscovery,
        upstream: Upstream,
        clock: IReactorTime,
        config: Config,
        observers: Sequence[RequestObserver] = (),
        nearest: Optional[Nearest] = None,
    ) -> None:
        self.observers: List[RequestObserver] = list(observers)
        self.discovery = discovery
        self.upstream = upstream
        self.clock = clock
        self.config = config
        # Each service's settings, and its instances weighted per snapshot.
        self.policies = Policies(config)
        # Datacenters by network distance, for failover = "nearest" (Consul only).
        self.nearest = nearest
        self.outliers = Outliers(clock)
        self.balancer = Balancer(self.outliers.inflight)
        self.budget = RetryBudget(clock)
        self.deadlines = Deadlines(clock)
        self.budget_refusals = 0
        self._budget_logged = float("-inf")
        self.tunnels = 0
        self._trusted_for: Optional[Config] = None
        self._trusted: Optional[Callable[[bytes], bool]] = None

    def trusted(self) -> Optional[Callable[[bytes], bool]]:
        """
        Whether an address is one of the C{trusted-proxies} of the config in
        force; L{None} when there are none.
        """
        config = self.config
        if self._trusted_for is not config:
            self._trusted_for = config
            networks = config.trusted_proxies
            self._trusted = (lambda address: _within(address, networks)) if networks else None
        return self._trusted

    def budget_exhausted(self, dc: str, service: str) -> None:
        """
        A retry was refused by the budget: say so, at most every 10 seconds,
        since the failures it leaves would otherwise look unexplained.
        """
        self.budget_refusals += 1
        now = self.clock.seconds()
        if now - self._budget_logged >= 10:
            self._budget_logged = now
            log.warn(
                "{dc}/{service}: retry budget exhausted; failing without retrying "
                "({n} refused so far)",
                dc=dc, service=service, n=self.budget_refusals,
            )

    def completed(self, record: Completed) -> None:
        """Tell every observer about a finished request."""
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.failure("request observer {observer!r} failed", observer=observer)


def _within(address: bytes, networks: Tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.decode("ascii"))
    except ValueError:
        return False
    return any(ip in network for network in networks)
