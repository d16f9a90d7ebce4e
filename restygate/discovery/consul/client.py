"""
The Consul HTTP API client: the only module that asks the agent anything
(its bytes go through L{restygate.discovery.consul.wire}).

It asks C{/v1/health/service/<name>} for a service's instances (all of
them: L{restygate.discovery.consul.answers} sorts them by health, since
warning instances and panic mode need more than Consul's C{?passing} keeps,
and the index a blocking query waits on is the same either way),
C{/v1/catalog/datacenters} and C{/v1/catalog/services} for the names Consul
knows, and C{/v1/health/state/any} for the change feed; reads are blocking
queries when given an index.  Every request goes through one L{ConsulGate}
(a bounded number of connections, background requests paced), carries the
configured consistency mode (C{?stale} by default) and the ACL token in
C{X-Consul-Token} (never in the URL, where it would reach access logs).
Answers become values or typed errors (L{restygate.discovery.consul.answers}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar
from urllib.parse import quote, urlencode

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import BrowserLikePolicyForHTTPS

from restygate.config import ConsulAddress
from restygate.discovery.consul.answers import (
    CONNECTION_LIMIT,
    ConsulError,
    Coordinate,
    HealthAnswer,
    answer_text,
    parse_coordinates,
    parse_datacenters,
    parse_health,
    parse_service_names,
)
from restygate.discovery.consul.checks import parse_check_states
from restygate.discovery.consul.gate import ConsulGate
from restygate.discovery.consul.wire import AgentAnswer, AgentPool, agent_endpoint
from restygate.discovery.model import UnknownDatacenter
from restygate.tls import CABundle, trust_root

__all__ = ["ConsulClient", "ConsulError", "HealthAnswer", "Indexed", "parse_health", "CONSISTENCY_MODES"]

log = Logger()

T = TypeVar("T")

# Consul may hold a blocking query up to wait * 17/16; give the network and a
# busy agent some room beyond that before calling the agent stalled.
_TIMEOUT_MARGIN = 5.0

#: consul-consistency: what each mode adds to a read's query string.
CONSISTENCY_MODES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "default": (),
    "stale": (("stale", ""),),
    "consistent": (("consistent", ""),),
}


@dataclass(frozen=True)
class Indexed:
    """
    A read's value with Consul's index for it.
    """

    index: int
    value: Any


def format_wait(seconds: float) -> str:
    """
    A wait in Consul's Go duration syntax.
    """
    return f"{max(1, int(seconds * 1000))}ms"


class ConsulClient:
    """
    Asks one Consul agent about datacenters, service names and health.

    @ivar last_contact: per datacenter, X-Consul-LastContact of the last
        answer in seconds: how far behind the leader a stale read may be.
    """

    def __init__(
        self,
        reactor: Any,
        address: ConsulAddress,
        token: Optional[str] = None,
        ca: Optional[CABundle] = None,
        gate: Optional[ConsulGate] = None,
        consistency: str = "stale",
    ) -> None:
        self._clock: IReactorTime = reactor
        self._base = address.base_url
        self.gate = gate or ConsulGate(reactor, 64, 100.0)
        self.consistency = consistency
        self.last_contact: Dict[str, float] = {}
        # For an https:// agent: its certificate must chain to the consul-ca
        # bundle (the platform's store without one) and name its host.
        tls = BrowserLikePolicyForHTTPS(trust_root(ca))
        endpoint = agent_endpoint(reactor, address.scheme, address.host, address.port, tls.creatorForNetloc)
        # Idle connections kept for reuse; the gate bounds those in use.
        self._pool = AgentPool(reactor, endpoint, self._base.partition("://")[2], self.gate.limit)
        self._headers = b"Accept: application/json\r\n"
        if token:
            self._headers += b"X-Consul-Token: " + token.encode("utf-8") + b"\r\n"

    @property
    def address(self) -> str:
        return self._base

    def close(self) -> Deferred[None]:
        self.gate.close()
        return self._pool.close()

    def ping(self) -> Deferred[str]:
        """
        The cluster leader's address: the cheapest question that shows the
        agent answers and its cluster has a leader.

        @raise ConsulError: no answer, an error answer, or no leader.
        """
        return self._read("/v1/status/leader", [], "", 0, 0.0, True, _leader)

    def datacenters(self, urgent: bool = False) -> Deferred[Tuple[str, ...]]:
        """
        The datacenters Consul knows (C{/v1/catalog/datacenters}).
        """
        return self._read("/v1/catalog/datacenters", [], "", 0, 0.0, urgent, parse_datacenters)

    def coordinates(self) -> Deferred[Dict[str, Tuple[Coordinate, ...]]]:
        """
        The network coordinates of every datacenter's servers
        (C{/v1/coordinate/datacenters}), for C{failover = "nearest"}.
        """
        return self._read("/v1/coordinate/datacenters", [], "", 0, 0.0, False, parse_coordinates)

    def service_names(self, dc: str, index: int = 0, wait: float = 60.0, urgent: bool = False) -> Deferred[Indexed]:
        """
        The service names registered in C{dc}, as L{Indexed}; a blocking
        query when C{index} > 0.
        """
        return self._indexed("/v1/catalog/services", dc, index, wait, urgent, parse_service_names)

    def check_states(
        self, dc: str, index: int = 0, wait: float = 60.0, urgent: bool = False, filter: str = "",
        prompt: bool = False,
    ) -> Deferred[Indexed]:
        """
        The checks of C{dc} (L{CheckStates}) from C{/v1/health/state/any},
        those C{filter} (a Consul C{?filter} expression) keeps, as L{Indexed}.
        """
        return self._read(
            "/v1/health/state/any", [("filter", filter)] if filter else [], dc, index, wait, urgent,
            lambda body, i: Indexed(i, parse_check_states(body)), indexed=True, prompt=prompt,
        )

    def health_service(
        self,
        dc: str,
        service: str,
        tags: Sequence[str] = (),
        index: int = 0,
        wait: float = 60.0,
        urgent: bool = False,
        prompt: bool = False,
    ) -> Deferred[HealthAnswer]:
        """
        Passing instances of C{service} in C{dc}; a blocking query when
        C{index} > 0.  C{urgent}: a client waits for it; C{prompt}: a change
        Consul recorded asks for it (L{ConsulGate}'s queues).

        @raise UnknownDatacenter: Consul has no path to C{dc}.
        @raise ConsulError: any other failure, with the status when there was one.
        """
        params: List[Tuple[str, str]] = [("tag", tag) for tag in tags]
        path = f"/v1/health/service/{quote(service, safe='')}"

        def parse(body: bytes, index: int) -> HealthAnswer:
            passing, warning, registered = parse_health(body)
            return HealthAnswer(index, passing, registered, warning)

        return self._read(path, params, dc, index, wait, urgent, parse, indexed=True, prompt=prompt)

    def _indexed(
        self, path: str, dc: str, index: int, wait: float, urgent: bool, parse: Callable[[bytes], Any]
    ) -> Deferred[Indexed]:
        return self._read(path, [], dc, index, wait, urgent, lambda body, i: Indexed(i, parse(body)), indexed=True)

    def _read(
        self,
        path: str,
        params: List[Tuple[str, str]],
        dc: str,
        index: int,
        wait: float,
        urgent: bool,
        parse: Callable[..., T],
        indexed: bool = False,
        prompt: bool = False,
    ) -> Deferred[T]:
        query = list(params)
        if dc:
            query.insert(0, ("dc", dc))
        if indexed:
            query.extend(CONSISTENCY_MODES[self.consistency])
        if index > 0:
            query.append(("index", str(index)))
            query.append(("wait", format_wait(wait)))
            timeout = wait * 17 / 16 + _TIMEOUT_MARGIN
        else:
            timeout = _TIMEOUT_MARGIN * 2 if indexed else _TIMEOUT_MARGIN

        def start() -> Deferred[T]:
            d = Deferred.fromCoroutine(self._get(path, query, dc, parse, indexed))
            # Bounds the whole exchange, body included: a stalled agent must
            # not hold a watch, or a connection of the budget, forever.
            d.addTimeout(timeout, self._clock)
            return d

        return self.gate.run(start, urgent, prompt)

    async def _get(
        self, target: str, params: List[Tuple[str, str]], dc: str, parse: Callable[..., T], indexed: bool
    ) -> T:
        if params:
            target += "?" + urlencode(params, quote_via=quote)
        answer: AgentAnswer = await self._pool.get(target.encode("utf-8"), self._headers)
        body = answer.body
        if answer.status != 200:
            text = answer_text(body)
            if answer.status == 500 and "No path to datacenter" in text:
                raise UnknownDatacenter(dc)
            if answer.status == 429:
                raise ConsulError(f"{CONNECTION_LIMIT} (429: {text})", 429)
            raise ConsulError(f"Consul answered {answer.status}: {text}", answer.status)
        if not indexed:
            return parse(body)
        headers = answer.headers
        self.last_contact[dc] = _number(headers.get(b"x-consul-lastcontact", b"0")) / 1000.0
        return parse(body, int(_number(headers.get(b"x-consul-index", b"0"))))


def _number(raw: bytes) -> float:
    try:
        return float(raw)
    except ValueError:
        return 0.0


def _leader(body: bytes) -> str:
    try:
        leader = json.loads(body)
    except ValueError:
        leader = None
    # An agent whose cluster lost its leader answers "" here.
    if not isinstance(leader, str) or not leader:
        raise ConsulError("Consul has no cluster leader")
    return leader
