"""The test server's request dispatcher: recording, stalls, injected failures and blocking queries.

Every request to the API passes through `Dispatcher.answer`, the one place where a stall holds it, an
injected failure answers it, or a blocking query parks it until its index moves or its wait runs out.
What the request asks for is decided by the ``route`` callable it is given (the API's endpoints).
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Optional, Set, cast
from urllib.parse import parse_qsl, unquote

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from .model import JITTER_FRACTION, JSON
from .wire import (
    BlockingQuery,
    Exchange,
    Outcome,
    Reply,
    Response,
    SeenRequest,
    Waiter,
    json_reply,
    text_reply,
)

_log = Logger()


class Dispatcher:
    """Answers requests through ``route``, holding blocking queries until their index moves.

    :param reactor: the clock for blocking waits.
    :param route: what a request asks for: a reply, or a blocking query.
    :param known_datacenter: whether a datacenter still exists (a vanished one wakes its queries).
    :param stats: the body of the test-only ``GET /_test/stats``.
    :param jitter: add Consul's random extra of up to wait/16 to blocking waits, drawn from ``rng``.
    :param record_limit: keep only this many of the latest `requests_seen` (None: all; 0: none).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        route: Callable[[Exchange], Outcome],
        known_datacenter: Callable[[str], bool],
        stats: Callable[[], Dict[str, JSON]],
        *,
        jitter: bool,
        rng: random.Random,
        record_limit: Optional[int],
    ) -> None:
        self._reactor = reactor
        self._route = route
        self._known_datacenter = known_datacenter
        self._stats = stats
        self.jitter = jitter
        self._rng = rng
        self.requests_seen: List[SeenRequest] = []
        #: "METHOD /path" -> how many such requests arrived; also served as JSON at GET /_test/stats.
        self.request_counts: Dict[str, int] = {}
        #: API requests naming (``?dc=``) a datacenter the server does not have: what made-up names cost.
        self.unknown_datacenter_requests = 0
        self._record_limit = record_limit
        self._open: Set[Exchange] = set()
        self._waiters: Set[Waiter] = set()
        self._stalled = False
        self._drop_stalled = False
        # Insertion-ordered so that unstall() answers in arrival order.
        self._parked: Dict[Exchange, Callable[[], Outcome]] = {}
        self._hung: Set[Exchange] = set()
        self._failure: Optional[Reply] = None

    @property
    def blocked_count(self) -> int:
        return len(self._waiters)

    @property
    def stalled_count(self) -> int:
        return len(self._parked) + len(self._hung)

    # -- fault knobs (documented on ConsulServer) -----------------------------------------------------

    def stall(self, drop: bool = False) -> None:
        """Accept requests but answer none, like an agent wedged on a lost leader or a full disk.

        Blocking queries that would be answered meanwhile are held too. `unstall` answers everything held
        unless ``drop`` is true: then what arrives during the stall is left hanging until its client goes
        away (or `disconnect_all`).
        """
        self._stalled = True
        self._drop_stalled = drop
        _log.info("Consul test server: stalled (drop={drop})", drop=drop)

    def unstall(self) -> None:
        """End a `stall`: answer the held requests now with current data, unless the stall dropped them."""
        self._stalled = False
        held, self._parked = self._parked, {}
        _log.info("Consul test server: unstalled, {count} held requests", count=len(held))
        if self._drop_stalled:
            self._hung.update(held)
            return
        for exchange, produce in held.items():
            self._answer(exchange, produce)

    def fail(self, status: int = 500, body: str = "No cluster leader") -> None:
        """Answer every API request with ``status`` and plain-text ``body`` until `recover`.

        Blocking queries already waiting get the error when they wake (change or wait expiry).
        """
        self._failure = text_reply(status, body)
        _log.info("Consul test server: failing with {status} {body!r}", status=status, body=body)

    def recover(self) -> None:
        """End a `fail`."""
        self._failure = None
        _log.info("Consul test server: recovered")

    def disconnect_all(self) -> None:
        """Drop the connection of every request still open (blocked, stalled or hung), as a crash would.

        Also the way to leave no pending timers behind at the end of a test.
        """
        for exchange in list(self._open):
            self._forget(exchange)
            transport = getattr(getattr(exchange.request, "channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()

    def handle(self, request: Request) -> None:
        seen = self._describe(request)
        if seen.path == "/_test/stats":
            # The test server's own control plane, for a benchmark running it in another process: not
            # Consul's API, so it is neither recorded nor subject to stall, failure or ACLs.
            self._send(Exchange(request, seen), json_reply(self._stats()))
            return
        self._record(seen)
        exchange = Exchange(request, seen)
        self._open.add(exchange)
        request.notifyFinish().addErrback(self._client_gone, exchange)
        self._answer(exchange, lambda: self._route(exchange))

    def _record(self, seen: SeenRequest) -> None:
        key = f"{seen.method} {seen.path}"
        self.request_counts[key] = self.request_counts.get(key, 0) + 1
        dc = next((value for name, value in seen.args if name == "dc"), "")
        if dc and not self._known_datacenter(dc):
            self.unknown_datacenter_requests += 1
        limit = self._record_limit
        if limit is None or limit > 0:
            self.requests_seen.append(seen)
            # Trim in batches so that recording stays O(1) amortised.
            if limit is not None and len(self.requests_seen) > 2 * limit:
                del self.requests_seen[:-limit]

    def _describe(self, request: Request) -> SeenRequest:
        uri = request.uri.decode("utf-8", "replace")
        path, _, query = uri.partition("?")
        headers: Dict[str, str] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
        content = getattr(request, "content", None)
        body = b""
        if content is not None:
            content.seek(0)
            body = content.read()
        seen = SeenRequest(
            method=request.method.decode("ascii", "replace"),
            path=unquote(path),
            args=parse_qsl(query, keep_blank_values=True),
            headers=headers,
            body=body,
            time=self._reactor.seconds(),
        )
        return seen

    def _client_gone(self, reason: Failure, exchange: Exchange) -> None:
        # The client hung up before we answered: stop tracking it so no timer or wake-up touches it again.
        self._forget(exchange)

    def _forget(self, exchange: Exchange) -> None:
        exchange.done = True
        self._open.discard(exchange)
        self._parked.pop(exchange, None)
        self._hung.discard(exchange)
        self._stop_waiting(exchange)

    def _stop_waiting(self, exchange: Exchange) -> None:
        waiter = exchange.waiter
        if waiter is not None:
            exchange.waiter = None
            self._waiters.discard(waiter)
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()

    def _answer(self, exchange: Exchange, produce: Callable[[], Outcome]) -> None:
        """Answer now, or hold the request: the single place stall, failure and blocking are decided."""
        if exchange.done:
            return
        if self._stalled:
            self._parked[exchange] = produce
            return
        if self._failure is not None:
            self._send(exchange, self._failure)
            return
        outcome = produce()
        if isinstance(outcome, BlockingQuery):
            if outcome.min_index > 0 and not self._should_wake(outcome):
                self._block(exchange, outcome)
                return
            outcome = outcome.answer()
        self._send(exchange, outcome)

    def _send(self, exchange: Exchange, reply: Reply) -> None:
        self._forget(exchange)
        # Request's write methods are unannotated in Twisted; Response states what we rely on.
        request = cast(Response, exchange.request)
        request.setResponseCode(reply.status)
        request.setHeader(b"Content-Type", reply.content_type)
        # Go sends small bodies with a length rather than chunked.
        request.setHeader(b"Content-Length", str(len(reply.body)).encode("ascii"))
        for name, value in reply.headers:
            request.setHeader(name.encode("ascii"), value.encode("utf-8"))
        request.write(reply.body)
        request.finish()

    def _block(self, exchange: Exchange, query: BlockingQuery) -> None:
        wait = query.wait
        if self.jitter:
            wait += self._rng.random() * wait / JITTER_FRACTION
        waiter = Waiter(exchange, query)
        exchange.waiter = waiter
        self._waiters.add(waiter)
        waiter.timer = self._reactor.callLater(wait, self._wake, waiter)

    def _should_wake(self, query: BlockingQuery) -> bool:
        return not self._known_datacenter(query.datacenter) or query.current_index() > query.min_index

    def wake_datacenter(self, dc: str) -> None:
        for waiter in list(self._waiters):
            if waiter.query.datacenter == dc and self._should_wake(waiter.query):
                self._wake(waiter)

    def _wake(self, waiter: Waiter) -> None:
        if waiter not in self._waiters:
            return
        self._stop_waiting(waiter.exchange)
        self._answer(waiter.exchange, waiter.query.answer)


    def wake_all(self) -> None:
        """Answer every blocking query now, as after an index reset."""
        for waiter in list(self._waiters):
            self._wake(waiter)
