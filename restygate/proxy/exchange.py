"""
One request's trip through the engine, from routing to the last byte.

Each step's failure is a L{Failure} member, and the member alone decides what
follows: a retry on another instance (any method when the request never
reached the upstream, idempotent ones when it may have), a mark against the
instance for outlier ejection, the status and JSON body the client gets, the
log line, and the metric label.  Gateway-made answers never show an
instance's address; the log and C{/status} do.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure as TwistedFailure
from twisted.web.http import RESPONSES

from restygate.front.answers import error_response
from restygate.discovery.model import Instance, Snapshot
from restygate.proxy.deadlines import Deadline
from restygate.proxy.downstream import Downstream, HeaderList
from restygate.proxy.parts import EngineParts
from restygate.proxy.failure import Failed, Failure, discovery_failure
from restygate.proxy.headers import NotedAt, forward_headers, header, response_headers, wants_upgrade
from restygate.proxy.failover import Found, find, find_now
from restygate.proxy.observe import completed_record
from restygate.proxy.policy import Policy
from restygate.proxy.rewrite import rewriter_for
from restygate.proxy.routing import Route, RouteError, route_request
from restygate.proxy.tunnel import open_tunnel
from restygate.upstream.choice import Choice
from restygate.upstream.client import UpstreamConnection
from restygate.upstream.handler import ResponseHandler
from restygate.upstream.retry import may_retry

__all__ = ["Exchange"]

log = Logger()


class Exchange(ResponseHandler):
    """Serves one L{Downstream}; also the L{ResponseHandler} of its attempts."""

    def __init__(self, engine: EngineParts, request: Downstream) -> None:
        self.engine = engine
        self.request = request
        self.started = engine.clock.seconds()
        self.route: Optional[Route] = None
        self.instance: Optional[Instance] = None
        self.retries = 0
        self.error: Optional[str] = None
        self.failure: Optional[Failure] = None
        self.upstream_sent: Optional[float] = None
        self.upstream_latency: Optional[float] = None
        self.done = False
        self.aborted = False
        self._pending: Optional[Deferred[Any]] = None
        self._connection: Optional[UpstreamConnection] = None
        self._timer: Optional[Deadline] = None
        self.snapshot: Optional[Snapshot] = None
        # The datacenter asked for, when another one served (failover).
        self.failed_over: Optional[str] = None
        self._choice: Optional[Choice] = None
        # Its service's, once routed: the settings the request runs with.
        self.policy: Policy = engine.policies.default
        self._headers: HeaderList = []
        self._tried: List[Instance] = []
        self._active: Optional[Instance] = None
        self._upgrade: Optional[bytes] = None
        self._progress = False
        self._response_started = False
        self._host_pending = False
        self.tunnel_bytes_up = 0

    # -- routing --------------------------------------------------------------
    def run(self) -> None:
        request = self.request
        try:
            config, hosts = self.engine.config, [value for name, value in request.noted if name == b"host"]
            self.route = route = route_request(request.target, hosts, config.server_names, config.host_routes)
        except RouteError as e:
            self._fail(Failure.CLIENT_PROTOCOL if e.status == 400 else None, e.message, status=e.status)
            return
        engine = self.engine
        self.policy = policy = engine.policies.policy(route.dc, route.service)
        found = find_now(engine, route, policy)
        if found is None:
            self._pending = d = find(engine, route, policy)
            d.addCallbacks(self._forward, self._discovery_failed)
            d.addErrback(self._crashed)
            return
        # What the Deferred chain would do with an exception from it.
        try:
            self._forward(found, self.started)
        except Exception:
            self._crashed(TwistedFailure())

    def _discovery_failed(self, failure: TwistedFailure) -> None:
        self._pending = None
        route = self.route
        assert route is not None
        found = discovery_failure(failure, route.dc, route.service)
        if found is not None:
            self._fail(found[0], **found[1])
        elif not failure.check(CancelledError):
            failure.raiseException()

    def _forward(self, found: Found, now: Optional[float] = None) -> None:
        self._pending = None
        if self.done:
            return
        route, self.policy, self.snapshot, choice = found.route, found.policy, found.snapshot, found.choice
        if route is not self.route and self.route is not None:
            self.failed_over = self.route.dc
        self.route, self._choice = route, choice
        request = self.request
        self._upgrade = wants_upgrade(request.noted)
        self._headers, has_host = forward_headers(request.headers, route.prefix.encode("ascii"), request.client_ip.encode(
            "ascii"), request.secure, request.body is not None, self._upgrade, self.engine.trusted(), request.noted)
        self._host_pending = not has_host  # HTTP/1.0 clients may send no Host; HTTP/1.1 requires one
        now = self.engine.clock.seconds() if now is None else now  # run()'s, when it was just read
        self.engine.budget.request(now)
        self._attempt(choice.instances, now)

    # -- attempts -------------------------------------------------------------
    def _attempt(self, candidates: Tuple[Instance, ...], now: float) -> None:
        # Each attribute read once: compiled, every read of a part's is a lookup by name.
        engine, route, choice, policy, request = self.engine, self.route, self._choice, self.policy, self.request
        assert route is not None and choice is not None
        dc, service, outliers, balancer, config = route.dc, route.service, engine.outliers, policy.balancer, policy.config
        usable = outliers.usable(dc, service, candidates)
        key = policy.hash_key(request.headers, request.client_ip) if balancer == "hash" else None
        self.instance = instance = engine.balancer.pick(balancer, dc, service, choice, usable, key)
        self._tried.append(instance)
        outliers.started(dc, service, instance)
        self._active = instance
        self.upstream_sent = now
        self._timer = engine.deadlines.start(now, config.upstream_timeout, self._timed_out)
        kept = engine.upstream.take_idle(instance, config.connect_timeout)
        if kept is not None:
            self._connected(kept)
            return
        self._pending = d = engine.upstream.acquire(instance, config.connect_timeout)
        d.addCallbacks(self._connected, self._not_connected)
        d.addErrback(self._crashed)

    def _connected(self, connection: UpstreamConnection) -> None:
        self._pending = None
        if self.done or self._active is None:
            connection.abort()
            return
        self._connection = connection
        headers = self._headers
        if self._host_pending:
            assert self.instance is not None
            headers = [(b"Host", self.instance.netloc.encode("ascii")), *headers]
        assert self.route is not None
        connection.send(self.request.method, self.route.target, headers, self.request.body, self)

    def _not_connected(self, failure: TwistedFailure) -> None:
        self._pending = None
        if failure.check(CancelledError):
            return
        failure.trap(Failed)
        failed: Any = failure.value
        self.response_failed(failed)

    def _release(self) -> None:
        """The current attempt is over: its timer stops, it no longer counts as in flight."""
        timer, self._timer = self._timer, None
        if timer is not None:
            self.engine.deadlines.stop(timer)
        instance, self._active = self._active, None
        if instance is not None and self.route is not None:
            self.engine.outliers.ended(self.route.dc, self.route.service, instance)

    def _timed_out(self) -> None:
        self._timer = None
        if self._response_started:
            if not self._progress:
                self._stalled()
                return
            self._progress = False
            self._timer = self.engine.deadlines.start(
                self.engine.clock.seconds(), self.policy.config.body_idle_timeout, self._timed_out)
            return
        pending, self._pending = self._pending, None
        connection, self._connection = self._connection, None
        self._release()
        log.warn("{route}: upstream {upstream} sent no response headers in {timeout:g}s",
                 route=self.route, upstream=self.upstream, timeout=self.policy.config.upstream_timeout)
        self._fail(Failure.RESPONSE_TIMEOUT)
        if pending is not None:
            pending.cancel()
        if connection is not None:
            connection.abort()

    def _stalled(self) -> None:
        log.warn(
            "upstream {upstream}: response body made no progress for {timeout:g}s; cut",
            upstream=self.upstream, timeout=self.policy.config.body_idle_timeout,
        )
        self.failure = Failure.BODY_STALLED
        self._cut()

    def _retry(self, failure: Failure, detail: str) -> bool:
        """Try another instance if this failure, this request and the budget allow it."""
        route, choice, request = self.route, self._choice, self.request
        if route is None or choice is None or self.retries >= self.policy.config.retries or not may_retry(
            failure.never_reached, failure.retriable, request.method, request.body
        ):
            return False
        untried = tuple(i for i in choice.instances if i not in self._tried)
        if not untried:
            return False
        # A request that never reached an upstream costs nothing to send
        # elsewhere, so only retries of requests an upstream may have seen
        # draw on the budget (the per-request limit still bounds the rest).
        if not failure.never_reached and not self.engine.budget.try_retry():
            self.engine.budget_exhausted(route.dc, route.service)
            return False
        self.retries += 1
        log.info(
            "{dc}/{service}: retrying on another instance after {upstream} failed: {error}",
            dc=route.dc, service=route.service, upstream=self.upstream, error=detail,
        )
        self._attempt(untried, self.engine.clock.seconds())
        return True

    # -- the upstream's answer (ResponseHandler) ------------------------------
    def response_interim(self, status: int, headers: HeaderList) -> None:
        # 100 Continue is the gateway's own business with its client.
        if status != 100 and not self.done:
            self.request.interim(status, response_headers(headers))

    def response_started(self, status: int, reason: bytes, headers: HeaderList, noted: NotedAt,
                         length: Optional[int]) -> None:
        engine = self.engine
        route, instance = self.route, self.instance
        if route is not None and instance is not None:
            engine.outliers.succeeded(route.dc, route.service, instance)
        now = engine.clock.seconds()
        if self.upstream_sent is not None:
            self.upstream_latency = now - self.upstream_sent
        if self.done:
            timer, self._timer = self._timer, None
            if timer is not None:
                engine.deadlines.stop(timer)
            return
        self._response_started = True
        request = self.request
        out = response_headers(headers, rewrite=self._rewrite, noted=noted)
        out.append((b"X-Restygate-Datacenter", (self.snapshot.dc if self.snapshot else "").encode("ascii")))
        request.respond(status, reason, out, length)
        request.set_source(self._connection)
        self._progress = False
        # The response timeout's timer becomes the body's.
        if self._timer is not None:
            engine.deadlines.move(self._timer, now, engine.config.body_idle_timeout)
        else:
            self._timer = engine.deadlines.start(now, engine.config.body_idle_timeout, self._timed_out)

    def _rewrite(self, name: bytes, value: bytes) -> bytes:
        # Made only for a response that names a place: most name none.
        host = header(self.request.noted, b"host")
        rewriter = rewriter_for(self.policy.config, self.route, self.instance, self.request.secure, host)
        return value if rewriter is None else rewriter(name, value)

    def response_body(self, data: bytes) -> None:
        self._progress = True
        if not self.done:
            self.request.write(data)

    def response_flush(self) -> None:
        if not self.done:
            self.request.flush()

    def response_done(self, trailers: HeaderList) -> None:
        self._connection = None
        self._release()
        if not self.done:
            self.request.set_source(None)
            self.request.finish(response_headers(trailers) if trailers else [])
            self._end()

    def response_failed(self, failed: Failed) -> None:
        self._connection = None
        self._release()
        if self.done:
            return
        failure, route, instance, choice = failed.failure, self.route, self.instance, self._choice
        if failure.ejects and route is not None and instance is not None and choice is not None:
            self.engine.outliers.failed(route.dc, route.service, instance, choice.instances)
        if self._response_started:
            log.warn(
                "upstream {upstream} cut the response body short: {error}",
                upstream=self.upstream, error=failed.detail,
            )
            self.failure = Failure.UPSTREAM_CUT
            self._cut()
            return
        if self._retry(failure, failed.detail):
            return
        log.warn("{route}: upstream {upstream} failed: {error}", route=route, upstream=self.upstream,
                 error=failed.detail)
        self._fail(failure)

    def upgraded(self, connection: UpstreamConnection, reason: bytes, headers: HeaderList, rest: bytes) -> None:
        self._connection = None
        self._release()
        if self.done:
            connection.abort()
            return
        if self._upgrade is None or not open_tunnel(self, connection, reason, headers, rest):
            log.warn("upstream {upstream} switched protocols unasked; refused", upstream=self.upstream)
            connection.abort()
            self._fail(Failure.UPSTREAM_PROTOCOL)

    def tunnel_closed(self, bytes_up: int) -> None:
        """The Upgrade tunnel this exchange became is closed."""
        self.tunnel_bytes_up = bytes_up
        self._end()

    # -- the client's side ----------------------------------------------------
    def client_gone(self) -> None:
        """The client connection closed before the response was complete."""
        if self.done:
            return
        self.aborted = True
        if self.failure is None:
            self.failure = Failure.CLIENT_GONE
        # Ended first: a cancelled step's late answer then finds it done.
        self._end()
        self._stop_attempt()

    def client_failed(self, failure: Failure) -> None:
        """The client broke a rule mid-request: answer so, if still possible."""
        if self.done:
            return
        # Answered first: a cancelled step's late answer then finds it done.
        self._fail(failure)
        self._stop_attempt()

    def _stop_attempt(self) -> None:
        """Drop whatever attempt is under way."""
        self._release()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            # Its state is unknown now: it can never be reused.
            connection.abort()

    def _cut(self) -> None:
        """A response that began cannot be completed: the client must see it cut."""
        self.aborted = True
        self.request.abort()
        self._end()
        self._stop_attempt()

    def _crashed(self, failure: TwistedFailure) -> None:
        log.failure("internal error routing {uri!r}", failure, uri=self.request.target)
        self._fail(Failure.INTERNAL)

    def _fail(self, failure: Optional[Failure], message: Optional[str] = None,
              status: Optional[int] = None, **details: Any) -> None:
        """Answer with a gateway error, if it can still be answered."""
        if self.done:
            return
        if failure is not None:
            self.failure = failure
        if self.request.started:
            self._cut()
            return
        status = status or (failure.status if failure is not None else 500)
        self.error = message or (failure.message if failure is not None else "error")
        headers, body = error_response(status, self.error, **details)
        request = self.request
        request.respond(status, RESPONSES.get(status, b"Error"), headers, len(body))
        request.write(body)
        request.finish([])
        self._end()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        self.engine.completed(completed_record(self.request, self.engine.clock.seconds(), self.started, self.route,
            self.snapshot, self.instance, self.upstream_latency, self.retries, self.error, self.aborted, self.failure,
            self.tunnel_bytes_up, self.failed_over))

    @property
    def upstream(self) -> Optional[str]:
        """C{host:port} of the instance tried last, if any."""
        return self.instance.netloc if self.instance is not None else None
