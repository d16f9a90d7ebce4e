"""The test server's endpoints: Consul's HTTP API over a catalog of datacenters.

Each endpoint validates its query string the way Consul does (same order, same status codes, same
plain-text messages) and returns either a `Reply` or a `BlockingQuery` for the dispatcher to hold.
"""

from __future__ import annotations

from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from .bexpr import compile_filter
from .datacenter import Datacenter
from .decode import decode_json_object, node_write_denied
from .goparse import UINT, parse_go_bool, parse_go_duration
from .model import (
    ACL_NOT_FOUND,
    DEFAULT_WAIT_SECONDS,
    HEALTH_STATUSES,
    JSON,
    MAX_WAIT_SECONDS,
    Agent,
    ConsulError,
)
from .wire import (
    TEXT_TYPE,
    BlockingQuery,
    Exchange,
    Outcome,
    Reply,
    json_reply,
    text_reply,
)

_Handler = Callable[[Exchange], Outcome]

#: What ``?filter`` selectors may start with on each endpoint, as in Consul's bodies.
HEALTH_ENTRY_FIELDS = frozenset({"Node", "Service", "Checks"})
CHECK_FIELDS = frozenset(
    {"Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "ServiceTags", "Type"}
)


class ConsulApi:
    """Consul's HTTP API over ``datacenters``, as the agent described by ``agent`` serves it.

    ``register`` and ``deregister`` apply catalog writes (they own the raft index).
    """

    def __init__(
        self,
        agent: Agent,
        datacenters: Mapping[str, Datacenter],
        register: Callable[[Mapping[str, JSON]], None],
        deregister: Callable[[Mapping[str, JSON]], None],
    ) -> None:
        self._agent = agent
        self._datacenters = datacenters
        self._register = register
        self._deregister = deregister
        # ?filter text -> each rendered check it was asked about (kept, so its id stays its own) and the
        # verdict: the datacenter reuses a check's rendering until the check changes, and a change feed
        # asks the same filter of every check of its datacenter on each answer.
        self._verdicts: Dict[str, Dict[int, Tuple[JSON, bool]]] = {}
        self._routes: Dict[str, Tuple[Tuple[str, ...], _Handler]] = {
            "/v1/catalog/datacenters": (("GET",), self._catalog_datacenters),
            "/v1/coordinate/datacenters": (("GET",), self._coordinate_datacenters),
            "/v1/catalog/services": (("GET",), self._catalog_services),
            "/v1/catalog/register": (("PUT",), self._catalog_register),
            "/v1/catalog/deregister": (("PUT",), self._catalog_deregister),
            "/v1/agent/self": (("GET",), self._agent_self),
            "/v1/status/leader": (("GET",), self._status_leader),
        }

    def route(self, exchange: Exchange) -> Outcome:
        """What ``exchange`` asks for: a reply now, or a blocking query; Consul's errors as replies."""
        path = exchange.seen.path
        route: Optional[Tuple[Tuple[str, ...], Callable[[Exchange], Outcome]]]
        if path.startswith("/v1/health/service/"):
            route = (("GET",), self._health_service)
        elif path.startswith("/v1/health/state/"):
            route = (("GET",), self._health_state)
        else:
            route = self._routes.get(path)
        if route is None:
            # Go's http.NotFound.
            return text_reply(404, "404 page not found\n")
        methods, handler = route
        allow = (("Allow", ",".join(("OPTIONS",) + methods)),)
        if exchange.seen.method == "OPTIONS":
            return Reply(200, b"", TEXT_TYPE, allow)
        if exchange.seen.method not in methods:
            return text_reply(405, f"method {exchange.seen.method} not allowed", allow)
        try:
            return handler(exchange)
        except ConsulError as e:
            return text_reply(e.status, e.message)

    # -- request parsing helpers ----------------------------------------------------------------------

    def _dc_of(self, exchange: Exchange) -> str:
        return exchange.query.get("dc") or self._agent.datacenter

    def _token_of(self, exchange: Exchange) -> str:
        # Consul's order: the deprecated ?token=, then X-Consul-Token, then Authorization: Bearer.
        token = exchange.query.get("token")
        if token:
            return token
        token = exchange.seen.headers.get("x-consul-token", "")
        if token:
            return token
        scheme, _, value = exchange.seen.headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""

    def _authorized(self, exchange: Exchange) -> bool:
        """True for full access, False for the anonymous token; a token Consul does not know is a 403."""
        if self._agent.acl_tokens is None:
            return True
        token = self._token_of(exchange)
        if not token or token == "anonymous":
            return False
        if token not in self._agent.acl_tokens:
            raise ConsulError(403, ACL_NOT_FOUND)
        return True

    def _blocking_params(self, exchange: Exchange) -> Tuple[int, float, str]:
        """``(min_index, wait_seconds, consistency)``, refusing what Consul refuses, in Consul's order."""
        query = exchange.query
        stale = query.has("stale")
        consistent = query.has("consistent")
        if stale and consistent:
            raise ConsulError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        consistency = "stale" if stale else "consistent" if consistent else "leader"
        wait = DEFAULT_WAIT_SECONDS
        raw_wait = query.get("wait")
        if raw_wait:
            try:
                wait = parse_go_duration(raw_wait)
            except ValueError:
                raise ConsulError(400, "Invalid wait time") from None
        if wait <= 0:
            wait = DEFAULT_WAIT_SECONDS
        wait = min(wait, MAX_WAIT_SECONDS)
        min_index = 0
        raw_index = query.get("index")
        if raw_index:
            if not UINT.fullmatch(raw_index) or int(raw_index) >= 2**64:
                raise ConsulError(400, "Invalid index")
            min_index = int(raw_index)
        return min_index, wait, consistency

    def _node_meta_filters(self, exchange: Exchange) -> List[Tuple[str, str]]:
        filters = []
        for item in exchange.query.get_all("node-meta"):
            key, _, value = item.partition(":")
            filters.append((key, value))
        return filters

    def _filter(self, exchange: Exchange, fields: FrozenSet[str]) -> Callable[[JSON], bool]:
        raw = exchange.query.get("filter")
        return compile_filter(raw, fields) if raw.strip() else (lambda entry: True)

    def _refuse_filter(self, exchange: Exchange) -> None:
        # Consul evaluates ?filter as a bexpr expression; this server does not, and silently ignoring it
        # would make a test pass against data a real agent would not return.
        if exchange.query.has("filter"):
            raise ConsulError(
                400, "Failed to create boolean expression evaluator: ?filter is not supported by the test server"
            )

    def _meta_headers(self, index: int, consistency: str, filtered: bool) -> Tuple[Tuple[str, str], ...]:
        headers = [
            ("X-Consul-Index", str(max(1, index))),
            ("X-Consul-Knownleader", "true" if self._agent.leader else "false"),
            # Only a stale read can be served by a follower that lost touch with the leader.
            ("X-Consul-Lastcontact", str(self._agent.last_contact_ms if consistency == "stale" else 0)),
            ("X-Consul-Effective-Consistency", consistency),
            ("X-Consul-Default-Acl-Policy", "allow" if self._agent.acl_tokens is None else "deny"),
        ]
        if filtered:
            headers.append(("X-Consul-Results-Filtered-By-Acls", "true"))
        return tuple(headers)

    # -- endpoints ------------------------------------------------------------------------------------

    def _health_service(self, exchange: Exchange) -> Outcome:
        params = self._blocking_params(exchange)
        service = exchange.seen.path[len("/v1/health/service/") :]
        if not service:
            raise ConsulError(400, "Missing service name")
        passing = False
        if exchange.query.has("passing"):
            raw = exchange.query.get("passing")
            try:
                passing = True if raw == "" else parse_go_bool(raw)
            except ValueError:
                raise ConsulError(400, "Invalid value for ?passing") from None
        keep = self._filter(exchange, HEALTH_ENTRY_FIELDS)
        tags = exchange.query.get_all("tag")
        node_meta = self._node_meta_filters(exchange)
        return self._dc_query(
            exchange,
            params,
            lambda dc: dc.index_of_service(service),
            lambda dc: [e for e in dc.health(service, tags, passing, node_meta) if keep(e)],
            [],
        )

    def _health_state(self, exchange: Exchange) -> Outcome:
        params = self._blocking_params(exchange)
        state = exchange.seen.path[len("/v1/health/state/") :]
        if state not in ("any",) + HEALTH_STATUSES:
            raise ConsulError(400, "Bad check state")
        keep = self._remembered(exchange.query.get("filter"), self._filter(exchange, CHECK_FIELDS))
        node_meta = self._node_meta_filters(exchange)
        return self._dc_query(
            exchange,
            params,
            lambda dc: dc.index,
            lambda dc: [c for c in dc.checks_in_state(state, node_meta) if keep(c)],
            [],
        )

    def _remembered(self, raw: str, keep: Callable[[JSON], bool]) -> Callable[[JSON], bool]:
        """``keep``, remembering its verdict on each rendered check (bounded: forgotten past a size)."""
        if len(self._verdicts) > 64:
            self._verdicts.clear()
        verdicts = self._verdicts.setdefault(raw, {})
        if len(verdicts) > 200_000:
            verdicts.clear()

        def remembered(check: JSON) -> bool:
            held = verdicts.get(id(check))
            if held is not None and held[0] is check:
                return held[1]
            verdict = keep(check)
            verdicts[id(check)] = (check, verdict)
            return verdict

        return remembered

    def _catalog_services(self, exchange: Exchange) -> Outcome:
        params = self._blocking_params(exchange)
        self._refuse_filter(exchange)
        node_meta = self._node_meta_filters(exchange)
        return self._dc_query(
            exchange, params, lambda dc: max(1, dc.catalog_index), lambda dc: dc.service_tags(node_meta), {}
        )

    def _dc_query(
        self,
        exchange: Exchange,
        params: Tuple[int, float, str],
        index_of: Callable[[Datacenter], int],
        body_of: Callable[[Datacenter], JSON],
        hidden: JSON,
    ) -> Outcome:
        """A blocking read of one datacenter: ``body_of`` it at ``index_of`` it, ``hidden`` for no ACL."""
        min_index, wait, consistency = params
        dc_name = self._dc_of(exchange)
        if dc_name not in self._datacenters:
            return text_reply(500, self._agent.no_path_message())
        # Consul filters what the token may not read rather than refusing the request.
        allowed = self._authorized(exchange)

        def answer() -> Reply:
            dc = self._datacenters.get(dc_name)
            if dc is None:
                return text_reply(500, self._agent.no_path_message())
            body = body_of(dc) if allowed else hidden
            return json_reply(body, self._meta_headers(index_of(dc), consistency, not allowed))

        return BlockingQuery(dc_name, min_index, wait, lambda: index_of(self._datacenters[dc_name]), answer)

    def _catalog_datacenters(self, exchange: Exchange) -> Outcome:
        # No ACL and no blocking on this endpoint in Consul.
        return json_reply(sorted(self._datacenters))

    def _coordinate_datacenters(self, exchange: Exchange) -> Outcome:
        # Consul: the WAN coordinates of every datacenter's servers; no ACL, no blocking, no ?dc.
        return json_reply([
            {
                "Datacenter": name,
                "AreaID": "WAN",
                "Coordinates": [{"Node": node, "Coord": coord} for node, coord in sorted(dc.coordinates.items())],
            }
            for name, dc in sorted(self._datacenters.items())
        ])

    def _agent_self(self, exchange: Exchange) -> Outcome:
        if not self._authorized(exchange):
            raise ConsulError(
                403,
                f"Permission denied: anonymous token lacks permission 'agent:read' on \"{self._agent.node_name}\"",
            )
        return json_reply(
            {
                "Config": {
                    "Datacenter": self._agent.datacenter,
                    "PrimaryDatacenter": self._agent.datacenter,
                    "NodeName": self._agent.node_name,
                    "NodeID": "00000000-0000-4000-8000-000000000001",
                    "Server": True,
                    "Revision": "restygate-test",
                    "Version": "1.18.1",
                },
                "Coord": {"Adjustment": 0, "Error": 1.5, "Vec": [0, 0, 0, 0, 0, 0, 0, 0]},
                "Member": {
                    "Name": self._agent.node_name,
                    "Addr": "127.0.0.1",
                    "Port": 8301,
                    "Tags": {"dc": self._agent.datacenter, "role": "consul", "port": "8300", "vsn": "2"},
                    "Status": 1,
                },
                "Meta": {"consul-network-segment": ""},
            }
        )

    def _status_leader(self, exchange: Exchange) -> Outcome:
        return json_reply(self._agent.leader)

    def _catalog_register(self, exchange: Exchange) -> Outcome:
        body = decode_json_object(exchange.seen.body)
        if not self._authorized(exchange):
            raise node_write_denied(body)
        self._register(body)
        return json_reply(True)

    def _catalog_deregister(self, exchange: Exchange) -> Outcome:
        body = decode_json_object(exchange.seen.body)
        if not self._authorized(exchange):
            raise node_write_denied(body)
        self._deregister(body)
        return json_reply(True)
