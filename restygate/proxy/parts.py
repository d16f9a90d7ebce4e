"""
What an exchange uses of its engine (L{restygate.proxy.engine.Engine}),
named here so the exchange needs no import of the engine that makes it.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from twisted.internet.interfaces import IReactorTime

from restygate.config import Config
from restygate.discovery.model import IDiscovery
from restygate.proxy.deadlines import Deadlines
from restygate.proxy.failover import Nearest
from restygate.proxy.observe import Completed
from restygate.proxy.policy import Policies
from restygate.upstream.balancer import IBalancer
from restygate.upstream.outliers import Outliers
from restygate.upstream.pool import Upstream
from restygate.upstream.retry import RetryBudget

__all__ = ["EngineParts"]


class EngineParts(Protocol):
    """What an exchange uses of its engine."""

    discovery: IDiscovery
    balancer: IBalancer
    upstream: Upstream
    clock: IReactorTime
    config: Config
    policies: Policies
    nearest: Optional[Nearest]
    outliers: Outliers
    budget: RetryBudget
    deadlines: Deadlines
    tunnels: int

    def trusted(self) -> Optional[Callable[[bytes], bool]]: ...

    def budget_exhausted(self, dc: str, service: str) -> None: ...

    def completed(self, record: Completed) -> None: ...
