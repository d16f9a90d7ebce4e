"""
The Consul HTTP API client: the only module that knows Consul's wire format.

It asks C{/v1/health/service/<name>} for passing instances, as a blocking
query when given an index, sends the ACL token in C{X-Consul-Token} (never in
the URL, where it would reach access logs), and turns Consul's answers into
L{HealthAnswer}s or typed errors.  Bodies from real agents carry C{null} maps
and omit fields on old versions, so parsing is defensive: an entry that
cannot be used is skipped and logged, never allowed to break the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple
from urllib.parse import quote

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from restygate.config import ConsulAddress
from restygate.discovery.model import Instance, UnknownDatacenter
from restygate.tls import CABundle, trust_root
from restygate._compat import quiet_pool

__all__ = ["ConsulClient", "ConsulError", "HealthAnswer", "parse_health"]

log = Logger()

# Consul may hold a blocking query up to wait * 17/16; give the network and a
# busy agent some room beyond that before calling the agent stalled.
_TIMEOUT_MARGIN = 5.0


class ConsulError(Exception):
    """
    Consul answered with an error, or could not be asked.
    """

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HealthAnswer:
    """
    One answer to a health query: the instances and Consul's index.
    """

    index: int
    instances: Tuple[Instance, ...]
    # Every registered instance, passing or not; filled only by a client
    # asked to include failing ones (panic mode needs them).
    registered: Tuple[Instance, ...] = ()


def _mapping(value: Any) -> dict:  # type: ignore[type-arg]
    return value if isinstance(value, dict) else {}


def parse_entry(entry: Any) -> Optional[Instance]:
    """
    One C{/v1/health/service} entry as an L{Instance}, or L{None} when it
    names no usable address and port.
    """
    node = _mapping(_mapping(entry).get("Node"))
    service = _mapping(_mapping(entry).get("Service"))
    address = service.get("Address") or node.get("Address")
    port = service.get("Port")
    if not isinstance(address, str) or not address:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    tags = service.get("Tags")
    meta = _mapping(service.get("Meta"))
    return Instance(
        address=address.strip("[]"),
        port=port,
        tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        meta=tuple(sorted((str(k), str(v)) for k, v in meta.items())),
        id=str(service.get("ID") or ""),
        node=str(node.get("Node") or ""),
    )


def _passing(entry: Any) -> bool:
    checks = _mapping(entry).get("Checks")
    return isinstance(checks, list) and all(_mapping(c).get("Status") == "passing" for c in checks)


def parse_health(body: bytes, passing_only: bool = False) -> Tuple[Instance, ...]:
    """
    The usable instances in a C{/v1/health/service} body (with
    C{passing_only}, those whose every check passes, as Consul's C{?passing}
    would keep), in a stable order so that an answer with the same members
    compares equal to the last one.
    """
    try:
        entries = json.loads(body)
    except ValueError as e:
        raise ConsulError(f"unparsable answer from Consul: {e}") from None
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ConsulError("unexpected answer from Consul: not a JSON array")
    instances: List[Instance] = []
    for entry in entries:
        if passing_only and not _passing(entry):
            continue
        instance = parse_entry(entry)
        if instance is None:
            log.warn("skipping a Consul entry with no usable address or port: {entry!r:.200}", entry=entry)
        else:
            instances.append(instance)
    # Every field in the key: entries alike in address, port and ID (one
    # service address shared by several nodes) must not swap places between
    # answers, or an unchanged service would look changed.
    instances.sort(key=lambda i: (i.address, i.port, i.id, i.node, i.tags, i.meta))
    return tuple(instances)


def _answer_text(body: bytes) -> str:
    """
    The start of an error answer's body, fit for a log line.
    """
    return body[:300].decode("utf-8", "replace").strip()


def format_wait(seconds: float) -> str:
    """
    A wait in Consul's Go duration syntax.
    """
    return f"{max(1, int(seconds * 1000))}ms"


class ConsulClient:
    """
    Asks one Consul agent about service health.
    """

    def __init__(
        self,
        reactor: Any,
        address: ConsulAddress,
        token: Optional[str] = None,
        pool: Optional[HTTPConnectionPool] = None,
        ca: Optional[CABundle] = None,
        include_failing: bool = False,
    ) -> None:
        self._include_failing = include_failing
        self._clock: IReactorTime = reactor
        self._base = address.base_url
        # Every watched service holds one connection during its blocking
        # query, so the pool must keep that many alive, not Twisted's 2.
        self._pool = pool or quiet_pool(reactor, 1024)
        # For an https:// agent: its certificate must chain to the consul-ca
        # bundle (the platform's store without one) and name its host.
        tls = BrowserLikePolicyForHTTPS(trust_root(ca))
        self._http = HTTPClient(Agent(reactor, contextFactory=tls, pool=self._pool))
        self._headers = Headers({b"Accept": [b"application/json"]})
        if token:
            self._headers.setRawHeaders(b"X-Consul-Token", [token.encode("utf-8")])

    @property
    def address(self) -> str:
        return self._base

    def close(self) -> Deferred[None]:
        result: Deferred[None] = self._pool.closeCachedConnections()
        return result

    def ping(self) -> Deferred[str]:
        """
        The cluster leader's address: the cheapest question that shows the
        agent answers and its cluster has a leader.

        @raise ConsulError: no answer, an error answer, or no leader.
        """
        d = Deferred.fromCoroutine(self._leader())
        d.addTimeout(_TIMEOUT_MARGIN, self._clock)
        return d

    async def _leader(self) -> str:
        response: IResponse = await self._http.get(f"{self._base}/v1/status/leader", headers=self._headers)
        body: bytes = await treq.content(response)
        if response.code != 200:
            raise ConsulError(f"Consul answered {response.code}: {_answer_text(body)}", response.code)
        try:
            leader = json.loads(body)
        except ValueError:
            leader = None
        # An agent whose cluster lost its leader answers "" here.
        if not isinstance(leader, str) or not leader:
            raise ConsulError("Consul has no cluster leader")
        return leader

    def health_service(
        self,
        dc: str,
        service: str,
        tags: Sequence[str] = (),
        index: int = 0,
        wait: float = 60.0,
    ) -> Deferred[HealthAnswer]:
        """
        Passing instances of C{service} in C{dc}; a blocking query when
        C{index} > 0.

        @raise UnknownDatacenter: Consul has no path to C{dc}.
        @raise ConsulError: any other failure, with the status when there was one.
        """
        # Normally Consul filters to passing instances itself; panic mode needs
        # the failing ones too, and filters here instead.
        params: List[Tuple[str, str]] = [("dc", dc)]
        if not self._include_failing:
            params.append(("passing", "1"))
        params.extend(("tag", tag) for tag in tags)
        if index > 0:
            params.append(("index", str(index)))
            params.append(("wait", format_wait(wait)))
            timeout = wait * 17 / 16 + _TIMEOUT_MARGIN
        else:
            timeout = _TIMEOUT_MARGIN * 2
        url = f"{self._base}/v1/health/service/{quote(service, safe='')}"
        d = Deferred.fromCoroutine(self._health(url, params, dc))
        # Bounds the whole exchange, body included: a stalled agent must not
        # hold a watcher forever.
        d.addTimeout(timeout, self._clock)
        return d

    async def _health(self, url: str, params: List[Tuple[str, str]], dc: str) -> HealthAnswer:
        response: IResponse = await self._http.get(url, params=params, headers=self._headers)
        body: bytes = await treq.content(response)
        if response.code != 200:
            text = _answer_text(body)
            if response.code == 500 and "No path to datacenter" in text:
                raise UnknownDatacenter(dc)
            raise ConsulError(f"Consul answered {response.code}: {text}", response.code)
        raw_index = response.headers.getRawHeaders(b"X-Consul-Index", [b"0"])[0]
        try:
            index = int(raw_index)
        except ValueError:
            index = 0
        if self._include_failing:
            return HealthAnswer(index, parse_health(body, passing_only=True), parse_health(body))
        return HealthAnswer(index, parse_health(body))
