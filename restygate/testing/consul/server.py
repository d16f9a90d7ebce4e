"""`ConsulServer`: an in-process Consul agent for tests and benchmarks, and its fault knobs.

It owns the catalog (datacenters and the raft-like index every write bumps) and composes the API's
endpoints (`api`) with the dispatcher that records, stalls, fails and blocks requests (`dispatch`).
"""

from __future__ import annotations

import random
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.web.server import Site

from .api import ConsulApi
from .connlimit import DEFAULT_MAX_CONNS_PER_CLIENT, PerClientLimit
from .datacenter import Datacenter, Mutation
from .decode import decode_registration, str_field
from .dispatch import Dispatcher
from .model import HEALTH_STATUSES, JSON, Agent, ConsulError, new_coordinate
from .wire import ConsulApiResource, QuietSite, SeenRequest

_log = Logger()


class ConsulServer:
    """An in-process Consul agent speaking Consul's HTTP API, with fault knobs.

    State: datacenters with nodes, services and checks, one global raft-like index that every change
    bumps, and per (datacenter, service) the index of its last change (what ``X-Consul-Index`` reports
    on ``/v1/health/service``). The server's own datacenter exists from the start.

    :param reactor: the clock used for blocking-query timeouts (``twisted.internet.task.Clock`` in tests).
    :param datacenter: the agent's own datacenter, used when a request has no ``?dc=``.
    :param node_name: the agent's node name, reported by ``/v1/agent/self``.
    :param acl_token: a token or tokens that grant full access; None disables ACLs.
    :param agent_prefix: answer "No path to datacenter" the way a client agent does, with its RPC prefix.
    :param jitter: add Consul's random extra of up to wait/16 to blocking waits.
    :param rng: the source of that jitter.
    :param record_limit: keep only this many of the latest `requests_seen` (None: all; 0: none), so a
        long benchmark run does not grow without bound. `request_counts` is kept regardless.
    :param max_conns_per_client: the agent's ``limits.http_max_conns_per_client`` for `listen` (0: none).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        datacenter: str = "dc1",
        *,
        node_name: str = "consul-test",
        acl_token: Union[str, Iterable[str], None] = None,
        agent_prefix: bool = False,
        jitter: bool = True,
        rng: Optional[random.Random] = None,
        record_limit: Optional[int] = None,
        max_conns_per_client: int = DEFAULT_MAX_CONNS_PER_CLIENT,
    ) -> None:
        self.agent = Agent(
            datacenter=datacenter,
            node_name=node_name,
            acl_tokens=None
            if acl_token is None
            else frozenset([acl_token] if isinstance(acl_token, str) else acl_token),
            agent_prefix=agent_prefix,
        )
        self._index = 1
        self._datacenters: Dict[str, Datacenter] = {datacenter: Datacenter(datacenter, self._index)}
        api = ConsulApi(self.agent, self._datacenters, self.register, self.deregister)
        self._dispatcher = Dispatcher(
            reactor,
            api.route,
            lambda dc: dc in self._datacenters,
            self._stats,
            jitter=jitter,
            rng=rng if rng is not None else random.Random(),
            record_limit=record_limit,
        )
        #: Every request recorded (see ``record_limit``), oldest first.
        self.requests_seen: List[SeenRequest] = self._dispatcher.requests_seen
        #: "METHOD /path" -> how many such requests arrived; also served as JSON at GET /_test/stats.
        self.request_counts: Dict[str, int] = self._dispatcher.request_counts
        self.resource = ConsulApiResource(self._dispatcher.handle)
        self._port: Optional[IListeningPort] = None
        #: The per-client connection cap of `listen` (go-connlimit); its counters show the connections.
        self.connections = PerClientLimit(self.site(), max_conns_per_client)

    @property
    def datacenter(self) -> str:
        """The agent's own datacenter."""
        return self.agent.datacenter

    @property
    def acl_tokens(self) -> Optional[FrozenSet[str]]:
        """The tokens that grant full access (None: ACLs off); tests may swap them to revoke a token."""
        return self.agent.acl_tokens

    @acl_tokens.setter
    def acl_tokens(self, tokens: Optional[FrozenSet[str]]) -> None:
        self.agent.acl_tokens = tokens

    # -- serving --------------------------------------------------------------------------------------

    def site(self, access_log: bool = False) -> Site:
        """A `Site` serving this server's API, writing an access log line per request if ``access_log``."""
        site_class = Site if access_log else QuietSite
        site = site_class(self.resource)
        site.displayTracebacks = False
        site.noisy = False
        return site

    def listen(
        self, reactor: IReactorTCP, port: int = 0, interface: str = "127.0.0.1", *, access_log: bool = False
    ) -> IListeningPort:
        """Listen on TCP ``interface:port`` (0 picks a free port) and return the listening port.

        The caller owns the port: call ``stopListening()`` on it when done.
        """
        if access_log:
            self.connections.wrappedFactory = self.site(access_log)
        # IReactorTCP wants ServerFactory[P]; WrappingFactory's unannotated base does not say which P.
        self._port = reactor.listenTCP(port, self.connections, interface=interface)  # type: ignore[arg-type]
        return self._port

    def _stats(self) -> Dict[str, JSON]:
        return {
            "requests": self.request_counts,
            "index": self._index,
            "blocked": self.blocked_count,
            "connections": self.connections.total,
            "peak_connections": self.connections.peak,
            "refused_connections": self.connections.refused,
            "unknown_datacenter_requests": self._dispatcher.unknown_datacenter_requests,
        }

    @property
    def address(self) -> str:
        """``HOST:PORT`` of the last `listen`, in the form ``CONSUL_HTTP_ADDR`` takes (``127.0.0.1:8500``)."""
        if self._port is None:
            raise RuntimeError("ConsulServer.listen() has not been called")
        host = self._port.getHost()
        if isinstance(host, IPv6Address):
            return f"[{host.host}]:{host.port}"
        if isinstance(host, IPv4Address):
            return f"{host.host}:{host.port}"
        raise RuntimeError(f"not listening on TCP: {host!r}")

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the last `listen`."""
        return f"http://{self.address}"

    @property
    def index(self) -> int:
        """The current global raft index."""
        return self._index

    def service_index(self, dc: str, service: str) -> int:
        """What ``X-Consul-Index`` would say now for ``/v1/health/service/<service>?dc=<dc>``."""
        return self._datacenters[dc].index_of_service(service)

    @property
    def datacenters(self) -> List[str]:
        """The known datacenters, sorted, as ``/v1/catalog/datacenters`` lists them."""
        return sorted(self._datacenters)

    def warm(self) -> None:
        """Make every datacenter's first answers as cheap as later ones (see `Datacenter.warm`)."""
        for dc in self._datacenters.values():
            dc.warm()

    @property
    def blocked_count(self) -> int:
        """How many blocking queries are waiting for a change or for their wait to run out."""
        return self._dispatcher.blocked_count

    @property
    def stalled_count(self) -> int:
        """How many requests are held by `stall` (parked or, after ``drop=True``, hung for good)."""
        return self._dispatcher.stalled_count

    def requests_for(self, path_prefix: str) -> List[SeenRequest]:
        """The recorded requests whose path starts with ``path_prefix``."""
        return [r for r in self.requests_seen if r.path.startswith(path_prefix)]

    # -- catalog changes ------------------------------------------------------------------------------

    def register(self, body: Mapping[str, JSON]) -> None:
        """Apply a ``PUT /v1/catalog/register`` body; the HTTP endpoint and `register_service` land here.

        A new ``Datacenter`` is created (a real cluster would need a WAN join first). Raises `ConsulError`
        with Consul's status and message for a body Consul would refuse; nothing changes then.
        """
        registration = decode_registration(body, self.datacenter)
        known = self._datacenters.get(registration.datacenter)
        # A datacenter about to be created is empty: validate against an empty one.
        (known if known is not None else Datacenter(registration.datacenter, 0)).validate(registration)
        self._commit(
            registration.datacenter,
            lambda dc, index: dc.apply_registration(registration, index),
            create=True,
        )

    def deregister(self, body: Mapping[str, JSON]) -> None:
        """Apply a ``PUT /v1/catalog/deregister`` body (``Datacenter, Node, ServiceID?, CheckID?``).

        Without ``ServiceID`` and ``CheckID`` the node goes with all its services and checks.
        """
        node = str_field(body, "Node", "")
        service_id = str_field(body, "ServiceID", "")
        check_id = str_field(body, "CheckID", "")
        if not node:
            raise ConsulError(500, "Must provide node")
        dc = str_field(body, "Datacenter", "") or self.datacenter
        self._commit(dc, lambda d, index: d.apply_deregistration(node, service_id, check_id, index))

    def register_service(
        self,
        dc: str,
        node: str,
        address: str,
        service: str,
        port: int,
        service_id: Optional[str] = None,
        tags: Iterable[str] = (),
        service_address: str = "",
        meta: Optional[Mapping[str, str]] = None,
        status: str = "passing",
        *,
        node_meta: Optional[Mapping[str, str]] = None,
        tagged_addresses: Optional[Mapping[str, str]] = None,
        weights: Optional[Mapping[str, int]] = None,
    ) -> str:
        """Register one service instance with a ``service:<ID>`` check in ``status``; return its ID.

        Builds a ``/v1/catalog/register`` body and applies it with `register`. A new node also gets a
        passing ``serfHealth`` check, as an agent's node has; an existing node keeps its checks and, unless
        the address or ``node_meta``/``tagged_addresses`` are given anew, its node data
        (``SkipNodeUpdate``). ``meta``, ``node_meta`` and ``tagged_addresses`` left as None show as ``null``.
        """
        sid = service_id if service_id is not None else service
        service_body: Dict[str, JSON] = {
            "ID": sid,
            "Service": service,
            "Tags": list(tags),
            "Address": service_address,
            "Port": port,
        }
        if meta is not None:
            service_body["Meta"] = dict(meta)
        if weights is not None:
            service_body["Weights"] = dict(weights)
        checks: List[JSON] = []
        known = self._datacenters.get(dc)
        existing = known.nodes.get(node) if known is not None else None
        node_checks = known.checks.get(node, {}) if known is not None else {}
        if "serfHealth" not in node_checks:
            checks.append(
                {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "ServiceID": ""}
            )
        checks.append(
            {"CheckID": f"service:{sid}", "Name": f"Service '{service}' check", "Status": status, "ServiceID": sid}
        )
        body: Dict[str, JSON] = {
            "Datacenter": dc,
            "Node": node,
            "Address": address,
            "Service": service_body,
            "Checks": checks,
        }
        if node_meta is not None:
            body["NodeMeta"] = dict(node_meta)
        if tagged_addresses is not None:
            body["TaggedAddresses"] = dict(tagged_addresses)
        if (
            existing is not None
            and existing.address == address
            and node_meta is None
            and tagged_addresses is None
        ):
            body["SkipNodeUpdate"] = True
        self.register(body)
        return sid

    def add_datacenter(self, dc: str) -> None:
        """Create an empty datacenter (as a WAN join would); a no-op if it exists."""
        self._commit(dc, lambda d, index: None, create=True)

    def remove_datacenter(self, dc: str) -> None:
        """Forget a datacenter: its queries then fail with 500 "No path to datacenter".

        Blocking queries on it are answered at once, with that error. Raises ``KeyError`` if unknown.
        """
        del self._datacenters[dc]
        _log.info("Consul test server: datacenter {dc} removed", dc=dc)
        self._dispatcher.wake_datacenter(dc)

    def set_coordinates(self, dc: str, servers: Mapping[str, Sequence[float]], height: float = 1e-5) -> None:
        """Place ``dc``'s servers (node name -> 8-dimensional ``Vec``, in seconds) for
        ``/v1/coordinate/datacenters``; they replace its current ones. Raises ``KeyError`` if unknown."""
        self._datacenters[dc].coordinates = {
            node: new_coordinate(vec, height=height) for node, vec in servers.items()
        }

    # -- fault knobs ----------------------------------------------------------------------------------

    def set_check_status(
        self, dc: str, service_id_or_check_id: str, status: str, node: Optional[str] = None
    ) -> None:
        """Flip the health of matching checks (by CheckID, or every check of a ServiceID) and wake blockers.

        Matches on every node of ``dc`` unless ``node`` is given (``serfHealth`` exists on every node).
        Raises ``KeyError`` when nothing matches, ``ValueError`` for an unknown status.
        """
        if status not in HEALTH_STATUSES:
            raise ValueError(f"status must be one of {HEALTH_STATUSES}, not {status!r}")
        self._commit(dc, lambda d, index: d.set_status(service_id_or_check_id, status, node, index))

    def spurious_wakeup(self, dc: str, service: str) -> None:
        """Bump a service's index without changing its data, waking its blocking queries.

        Real Consul does this when an unrelated write touches a shared index; clients must cope.
        """
        self._commit(dc, lambda d, index: {service.lower()})

    def reset_index(self, to: int = 1) -> None:
        """Move every index back to ``to``, as after a snapshot restore, and answer all blocking queries.

        Later changes count on from ``to``. Clients see ``X-Consul-Index`` go backwards and must reset.
        """
        if to < 1:
            raise ValueError("Consul's index is never below 1")
        self._index = to
        for dc in self._datacenters.values():
            dc.lower_indexes(to)
        _log.info("Consul test server: raft index reset to {to}", to=to)
        self._dispatcher.wake_all()

    def stall(self, drop: bool = False) -> None:
        """Accept requests but answer none, like an agent wedged on a lost leader or a full disk.

        Blocking queries that would be answered meanwhile are held too. `unstall` answers everything held
        unless ``drop`` is true: then what arrives during the stall is left hanging until its client goes
        away (or `disconnect_all`).
        """
        self._dispatcher.stall(drop)

    def unstall(self) -> None:
        """End a `stall`: answer the held requests now with current data, unless the stall dropped them."""
        self._dispatcher.unstall()

    def fail(self, status: int = 500, body: str = "No cluster leader") -> None:
        """Answer every API request with ``status`` and plain-text ``body`` until `recover`.

        Blocking queries already waiting get the error when they wake (change or wait expiry).
        """
        self._dispatcher.fail(status, body)

    def recover(self) -> None:
        """End a `fail`."""
        self._dispatcher.recover()

    def disconnect_all(self) -> None:
        """Drop the connection of every request still open (blocked, stalled or hung), as a crash would.

        Also the way to leave no pending timers behind at the end of a test.
        """
        self._dispatcher.disconnect_all()

    # -- index bookkeeping ----------------------------------------------------------------------------

    def _commit(self, dc_name: str, mutate: Mutation, create: bool = False) -> None:
        """Apply one write at the next raft index.

        The index is spent, and blocking queries woken, only if the write changed something.
        """
        dc = self._datacenters.get(dc_name)
        created = dc is None
        if dc is None:
            if not create:
                raise ConsulError(500, self.agent.no_path_message())
            dc = Datacenter(dc_name, 0)
        index = self._index + 1
        touched = mutate(dc, index)
        if touched is None and not created:
            return
        self._index = index
        dc.index = index
        for name in touched or ():
            dc.service_index[name] = index
        if created:
            self._datacenters[dc_name] = dc
        _log.debug(
            "Consul test server: index {index} in {dc} touches {services}",
            index=index,
            dc=dc_name,
            services=sorted(touched or ()),
        )
        self._dispatcher.wake_datacenter(dc_name)
