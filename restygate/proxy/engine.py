"""
The engine: everything that decides where a request goes and what becomes
of it, whichever front received it.

A front hands it a L{Downstream} (the request and the means to answer it);
the engine runs one L{Exchange} for it: route, discovery, balancer and
outlier detection, attempts on instances with retries inside the retry
budget, and the relay of the answer.  It holds the state those steps share
(outliers, the balancer, the routing policies, the retry budget) and tells its observers
(access log, metrics) about every finished request.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from restygate.config import Config
from restygate.discovery.model import IDiscovery
from restygate.proxy.deadlines import Deadlines
from restygate.proxy.downstream import Downstream
from restygate.proxy.exchange import Exchange
from restygate.proxy.observe import Completed, RequestObserver
from restygate.proxy.failover import Nearest
from restygate.proxy.policy import Policies
from restygate.upstream.balancer import Balancer, IBalancer
from restygate.upstream.outliers import Outliers
from restygate.upstream.pool import Upstream
from restygate.upstream.retry import RetryBudget

__all__ = ["Engine"]

log = Logger()


class Engine:
    """
    The gateway's data path behind its fronts.

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
        self.balancer: IBalancer = Balancer(self.outliers.inflight)
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

    def handle(self, request: Downstream) -> Exchange:
        """Serve one request."""
        exchange = Exchange(self, request)
        request.attach(exchange)
        exchange.run()
        return exchange

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
