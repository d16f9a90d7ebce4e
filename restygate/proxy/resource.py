"""
The gateway resource: routes a request, picks an instance, forwards it, and
relays the answer.

This module owns the HTTP forwarding rules: which headers are hop-by-hop and
stripped both ways, which C{X-Forwarded-*} headers the upstream gets, and how
each failure maps to a status (route errors 400/404, no instance 503, an
upstream that fails before answering 502, one that is too slow 504).  An
upstream's own answer, 404 and 500 included, is relayed untouched.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.http import NO_BODY_CODES
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from restygate._compat import RequestNotSent
from restygate.upstream.balancer import IBalancer
from restygate.config import Config
from restygate.discovery.model import DiscoveryUnavailable, IDiscovery, Instance, Snapshot, UnknownDatacenter
from restygate.front.answers import send_error
from restygate.upstream.outliers import Outliers
from restygate.upstream.retry import RetryBudget, never_reached, retriable
from restygate.proxy.observe import Completed, RequestObserver
from restygate.proxy.routing import Route, RouteError, host_matches, parse_target
from restygate.front.site import GatewayRequest
from restygate.proxy.relay import ResponseRelay
from restygate.upstream.pool import Upstream

__all__ = ["GatewayResource", "forward_headers", "response_headers"]

log = Logger()

HOP_BY_HOP: FrozenSet[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Set by the gateway from what it knows, never passed on from the client.
_OURS: FrozenSet[bytes] = frozenset(
    {b"x-real-ip", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-prefix", b"expect"}
)


# Built once: every request would otherwise union them again.  With a body
# the upstream client redoes the framing, so Content-Length goes too.
_NOT_FORWARDED = HOP_BY_HOP | _OURS
_NOT_FORWARDED_WITH_BODY = _NOT_FORWARDED | {b"content-length"}


def _dropped(headers: Headers, always: FrozenSet[bytes]) -> FrozenSet[bytes]:
    named = headers.getRawHeaders(b"connection")
    if not named:
        return always
    tokens = {t.strip().lower() for value in named for t in value.split(b",")}
    return always | tokens


def forward_headers(request: Request, route: Route, client_ip: str, has_body: bool) -> Headers:
    """
    The headers the upstream gets: the client's, minus hop-by-hop ones (and
    the body framing, which the upstream client redoes for a streamed body),
    plus the C{X-Forwarded-*} set.
    """
    incoming = request.requestHeaders
    drop = _dropped(incoming, _NOT_FORWARDED_WITH_BODY if has_body else _NOT_FORWARDED)
    out = Headers()
    for name, values in incoming.getAllRawHeaders():
        if name.lower() not in drop:
            out.setRawHeaders(name, values)
    ip = client_ip.encode("ascii")
    earlier = incoming.getRawHeaders(b"x-forwarded-for")
    out.setRawHeaders(b"X-Forwarded-For", [b", ".join([*earlier, ip]) if earlier else ip])
    out.setRawHeaders(b"X-Real-IP", [ip])
    host = incoming.getRawHeaders(b"host")
    if host:
        out.setRawHeaders(b"X-Forwarded-Host", [host[0]])
    out.setRawHeaders(b"X-Forwarded-Proto", [b"https" if request.isSecure() else b"http"])
    out.setRawHeaders(b"X-Forwarded-Prefix", [route.prefix.encode("ascii")])
    return out


def response_headers(upstream: Headers, into: Headers) -> None:
    """
    Copy an upstream response's end-to-end headers, repeats included.
    """
    drop = _dropped(upstream, HOP_BY_HOP)
    for name, values in upstream.getAllRawHeaders():
        if name.lower() not in drop:
            into.setRawHeaders(name, values)


def _upstream_error(failure: Failure) -> Tuple[int, str]:
    if failure.check(ConnectError, DNSLookupError):
        return 502, "upstream unreachable"
    if failure.check(ResponseFailed):
        return 502, "upstream closed the connection before answering"
    return 502, "upstream failed"


class Exchange:
    """
    One request's trip through the gateway, from routing to the last byte.
    """

    def __init__(self, gateway: GatewayResource, request: GatewayRequest) -> None:
        self.gateway = gateway
        self.request = request
        self.started = gateway.clock.seconds()
        self.route: Optional[Route] = None
        self.instance: Optional[Instance] = None
        self._pending: Optional[Deferred[Any]] = None
        self._relay: Optional[ResponseRelay] = None
        self._timer: Optional[IDelayedCall] = None
        self.retries = 0
        self.error: Optional[str] = None
        self.upstream_sent: Optional[float] = None
        self.upstream_latency: Optional[float] = None
        self._cut_short = False
        self._snapshot: Optional[Snapshot] = None
        self._headers = Headers()
        self._tried: List[Instance] = []
        self._active: Optional[Instance] = None
        # Read once: the forwarding headers and the access log both need it.
        self.client_ip = _client_ip(request)
        request.notifyFinish().addBoth(self._finished)

    def run(self) -> None:
        request = self.request
        gateway = self.gateway
        try:
            names = gateway.config.server_names
            if names and not host_matches(request.getHeader(b"host") or b"", names):
                self._fail(404, "unknown server name")
                return
            self.route = route = parse_target(request.uri)
        except RouteError as e:
            self._fail(e.status, e.message)
            return
        self._pending = d = gateway.discovery.lookup(route.dc, route.service)
        d.addCallbacks(self._forward, self._discovery_failed)
        d.addErrback(self._crashed)

    def _discovery_failed(self, failure: Failure) -> None:
        self._pending = None
        route = self.route
        assert route is not None
        if failure.check(UnknownDatacenter):
            self._fail(404, "unknown datacenter", datacenter=route.dc)
        elif failure.check(DiscoveryUnavailable):
            self._fail(
                503, "service discovery unavailable",
                datacenter=route.dc, service=route.service,
            )
        elif not failure.check(CancelledError):
            failure.raiseException()

    def _forward(self, snapshot: Snapshot) -> None:
        self._pending = None
        request = self.request
        route = self.route
        assert route is not None
        if request.finished or request.channel is None:
            return
        if not snapshot.instances:
            if not (self.gateway.config.panic_all_instances and snapshot.registered):
                self._fail(
                    503, "no passing instance",
                    datacenter=route.dc, service=route.service,
                )
                return
            snapshot = self.gateway.panic(snapshot)
        self._snapshot = snapshot
        self._headers = forward_headers(request, route, self.client_ip, request.body is not None)
        self.gateway.budget.request()
        self._attempt(snapshot.instances)

    def _attempt(self, candidates: Tuple[Instance, ...]) -> None:
        gateway = self.gateway
        route = self.route
        snapshot = self._snapshot
        assert route is not None and snapshot is not None
        usable = gateway.outliers.usable(route.dc, route.service, candidates)
        self.instance = instance = gateway.balancer.pick(snapshot, usable)
        self._tried.append(instance)
        gateway.outliers.started(route.dc, route.service, instance)
        self._active = instance
        try:
            d = gateway.upstream.request(
                instance, self.request.method, route.target, self._headers, self.request.body
            )
        except ValueError as e:
            self._release()
            self._fail(400, f"cannot forward this request: {e}")
            return
        self._pending = d
        self.upstream_sent = gateway.clock.seconds()
        self._timer = gateway.clock.callLater(gateway.config.upstream_timeout, self._timed_out)
        d.addCallbacks(self._respond, self._upstream_failed)
        d.addErrback(self._crashed)

    def _release(self) -> None:
        """
        The current attempt is over: it no longer counts as in flight.
        """
        instance, self._active = self._active, None
        if instance is not None and self.route is not None:
            self.gateway.outliers.ended(self.route.dc, self.route.service, instance)

    def _retry(self, failure: Failure) -> bool:
        """
        Try another instance if this failure, this request and the budget
        allow it.
        """
        snapshot = self._snapshot
        body = self.request.body
        if (
            snapshot is None
            or self.retries >= self.gateway.config.retries
            or not retriable(self.request.method, failure)
            or (body is not None and not body.replayable)
        ):
            return False
        untried = tuple(i for i in snapshot.instances if i not in self._tried)
        if not untried:
            return False
        # A request that never reached an upstream costs nothing to send
        # elsewhere, so only retries of requests an upstream may have seen
        # draw on the budget (the per-request limit still bounds the rest).
        if not never_reached(failure) and not self.gateway.budget.try_retry():
            self.gateway.budget_exhausted(snapshot)
            return False
        self.retries += 1
        if body is not None:
            body.rewind()
        log.info(
            "{dc}/{service}: retrying on another instance after {upstream} failed: {error}",
            dc=snapshot.dc, service=snapshot.service,
            upstream=self._upstream_name(), error=_reason(failure),
        )
        self._attempt(untried)
        return True

    def _timed_out(self) -> None:
        # Answer first, then cancel: the attempt's late failure finds the
        # request finished and is dropped, whatever cancelling does.
        self._timer = None
        pending, self._pending = self._pending, None
        self._release()
        log.warn(
            "{dc}/{service}: upstream {upstream} sent no response headers in {timeout:g}s",
            dc=self.route.dc if self.route else "-",
            service=self.route.service if self.route else "-",
            upstream=self._upstream_name(), timeout=self.gateway.config.upstream_timeout,
        )
        self._fail(504, "upstream timed out", upstream=self._upstream_name())
        if pending is not None:
            pending.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _respond(self, response: IResponse) -> None:
        self._stop_timer()
        self._pending = None
        if self.route is not None and self.instance is not None:
            self.gateway.outliers.succeeded(self.route.dc, self.route.service, self.instance)
        if self.upstream_sent is not None:
            self.upstream_latency = self.gateway.clock.seconds() - self.upstream_sent
        request = self.request
        if request.finished or request.channel is None:
            response.deliverBody(_Discard())
            return
        request.setResponseCode(response.code, response.phrase)
        response_headers(response.headers, request.responseHeaders)
        # Twisted's client keeps Content-Length out of response.headers (it
        # is framing, except on HEAD); restore it so the client gets the same
        # framing instead of chunks.
        if (
            response.length is not UNKNOWN_LENGTH
            and response.code not in NO_BODY_CODES
            and request.method != b"HEAD"
        ):
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        # Send the status and headers now, not with the first body bytes: a
        # slow or long-polling upstream's client sees its answer begin.
        request.write(b"")
        self._relay = ResponseRelay(
            request, self._relayed, self.gateway.clock, self.gateway.config.body_idle_timeout
        )
        response.deliverBody(self._relay)

    def _relayed(self, failure: Optional[Failure]) -> None:
        self._cut_short = failure is not None
        if failure is not None and self.request.channel is not None:
            log.warn(
                "upstream {upstream} cut the response body short: {error}",
                upstream=self._upstream_name(), error=failure.getErrorMessage(),
            )

    def _upstream_failed(self, failure: Failure) -> None:
        self._stop_timer()
        self._pending = None
        self._release()
        if self.request.finished or self.request.channel is None:
            return
        route, instance, snapshot = self.route, self.instance, self._snapshot
        if (
            route is not None and instance is not None and snapshot is not None
            and _connection_failure(failure)
        ):
            self.gateway.outliers.failed(route.dc, route.service, instance, snapshot.instances)
        if self._retry(failure):
            return
        status, message = _upstream_error(failure)
        log.warn(
            "{dc}/{service}: upstream {upstream} failed: {error}",
            dc=self.route.dc if self.route else "-",
            service=self.route.service if self.route else "-",
            upstream=self._upstream_name(), error=_reason(failure),
        )
        self._fail(status, message, upstream=self._upstream_name())

    def _crashed(self, failure: Failure) -> None:
        log.failure("internal error routing {uri!r}", failure, uri=self.request.uri)
        self._fail(500, "internal error")

    def _finished(self, result: Any) -> None:
        # The client is done or gone: nothing we still wait for matters.
        self._release()
        self._stop_timer()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self._relay is not None and isinstance(result, Failure):
            self._relay.stop()
        self.gateway.completed(self._record(isinstance(result, Failure)))

    def _record(self, aborted: bool) -> Completed:
        request = self.request
        route = self.route
        return Completed(
            started=self.started,
            duration=self.gateway.clock.seconds() - self.started,
            client=self.client_ip,
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            proto=(request.clientproto or b"-").decode("latin-1"),
            host=(request.getHeader(b"host") or b"").decode("latin-1"),
            referer=(request.getHeader(b"referer") or b"").decode("latin-1"),
            user_agent=(request.getHeader(b"user-agent") or b"").decode("latin-1"),
            status=request.code,
            bytes_sent=request.sentLength,
            dc=route.dc if route else None,
            service=route.service if route else None,
            upstream=self._upstream_name(),
            upstream_latency=self.upstream_latency,
            retries=self.retries,
            error=self.error,
            aborted=aborted or self._cut_short,
        )

    def _fail(self, status: int, error: str, **details: Any) -> None:
        self.error = error
        send_error(self.request, status, error, **details)

    def _upstream_name(self) -> Optional[str]:
        return self.instance.netloc if self.instance is not None else None


def _connection_failure(failure: Failure) -> bool:
    """
    The instance could not be reached or dropped the connection before
    answering: what passive ejection counts.
    """
    return bool(failure.check(ConnectError, DNSLookupError, ResponseFailed, RequestNotSent))


def _reason(failure: Failure) -> str:
    if failure.check(ResponseFailed):
        reasons = getattr(failure.value, "reasons", None) or []
        return "; ".join(r.getErrorMessage() for r in reasons) or failure.getErrorMessage()
    return failure.getErrorMessage()


def _client_ip(request: Request) -> str:
    return str(getattr(request.getClientAddress(), "host", "") or "unknown")


class _Discard(Protocol):
    """
    Swallows a response nobody is waiting for any more, closing its
    connection rather than reading a body no one wants.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.stopProducing()


class GatewayResource(Resource):
    """
    The root and only resource of a gateway L{Site}.
    """

    isLeaf = True

    def __init__(
        self,
        discovery: IDiscovery,
        balancer: IBalancer,
        upstream: Upstream,
        clock: IReactorTime,
        config: Config,
        observers: Sequence[RequestObserver] = (),
    ) -> None:
        super().__init__()
        self.observers = list(observers)
        self.discovery = discovery
        self.balancer = balancer
        self.upstream = upstream
        self.clock = clock
        # Replaced whole on reload; each request reads it once per use.
        self.config = config
        self.outliers = Outliers(clock)
        # Per (dc, service): the snapshot that had no passing instance, and
        # the all-instances one built from it (built once, logged once).
        self._panicked: Dict[Tuple[str, str], Tuple[Snapshot, Snapshot]] = {}
        self.budget = RetryBudget(clock)
        self.budget_refusals = 0
        self._budget_logged = float("-inf")

    def panic(self, snapshot: Snapshot) -> Snapshot:
        """
        A snapshot routing to every registered instance of a service none of
        whose instances passes: better a chance than a certain 503.
        """
        key = (snapshot.dc, snapshot.service)
        cached = self._panicked.get(key)
        if cached is None or cached[0] is not snapshot:
            log.warn(
                "{dc}/{service}: no passing instance; panic mode routes to all {n} registered",
                dc=snapshot.dc, service=snapshot.service, n=len(snapshot.registered),
            )
            cached = (snapshot, Snapshot(snapshot.dc, snapshot.service, snapshot.registered, snapshot.index))
            self._panicked[key] = cached
        return cached[1]

    def budget_exhausted(self, snapshot: Snapshot) -> None:
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
                dc=snapshot.dc, service=snapshot.service, n=self.budget_refusals,
            )

    def completed(self, record: Completed) -> None:
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.failure("request observer {observer!r} failed", observer=observer)

    def render(self, request: GatewayRequest) -> int:
        Exchange(self, request).run()
        return NOT_DONE_YET
