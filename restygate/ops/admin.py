"""
The admin side of a gateway: C{/metrics} (Prometheus), C{/status} (HTML for
people, JSON for tools), C{/healthz} (liveness) and C{/readyz} (readiness),
on a site and endpoint of their own (loopback by default), never on the
public listeners, where any client could read the fleet's layout.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from restygate.ops.metrics import Metrics
from restygate.ops.pages import gateway_page
from restygate.ops.selection import TooManyNames, asked
from restygate.ops.status import gateway_status
from restygate.ops.views import Inspected

__all__ = [
    "Admin", "AdminSite", "ADMIN_LOG_PREFIX", "PROBE_INTERVAL", "answer", "answer_html", "answer_json", "refuse_names",
]

log = Logger()

# Seconds between probes of a Consul agent that has not answered yet.
PROBE_INTERVAL = 10.0

# What the admin site's port calls it in its "... starting on <port>" line.
ADMIN_LOG_PREFIX = "restygate admin"


class Admin(Service):
    """
    The admin endpoints' state: the gateway's metrics, when it started, and
    whether discovery has answered yet.

    Until a watch has succeeded, readiness can also come from the Consul
    agent answering a cheap probe (C{ping}), tried at start and then every
    L{PROBE_INTERVAL} seconds until it succeeds: a gateway nobody has sent
    a request yet is ready as soon as its agent is.

    @ivar site: the admin L{Site}, for a listener.
    """

    def __init__(
        self, gateway: Inspected, reactor: Any, ping: Optional[Callable[[], Deferred[Any]]] = None
    ) -> None:
        self.gateway = gateway
        self.metrics = Metrics(gateway, reactor)
        self.started = reactor.seconds()
        self.clock = reactor
        self._ping = ping
        self._agent_answered = False
        self._probing: Optional[Deferred[Any]] = None
        self._prober = LoopingCall(self._probe)
        self._prober.clock = reactor
        self.site = AdminSite(_root(self), reactor)

    def startService(self) -> None:
        Service.startService(self)
        self.started = self.clock.seconds()
        if self._ping is not None:
            self._prober.start(PROBE_INTERVAL, now=True)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        if self._prober.running:
            self._prober.stop()
        if self._probing is not None:
            self._probing.cancel()
        return succeed(None)

    def not_ready(self) -> Optional[str]:
        """
        Why the gateway is not ready, or L{None} when it is: every listener
        bound and discovery has answered at least once.
        """
        gateway = self.gateway
        unbound = [listener.description for _, listener in gateway.listeners() if listener.listening() is None]
        if unbound:
            return f"not listening on {', '.join(unbound)}"
        if self._agent_answered or gateway.discovery.answered():
            return None
        config = gateway.config()
        if config.catalog:
            return f"the static catalog {config.catalog} is not loaded"
        return f"no answer from Consul at {config.consul.base_url} yet"

    def _probe(self) -> Optional[Deferred[Any]]:
        # Each probe's failure is handled here: an unhandled one would stop
        # the LoopingCall for good.
        if self.gateway.discovery.answered():
            self._prober.stop()
            return None
        assert self._ping is not None
        try:
            self._probing = d = self._ping()
        except Exception:
            log.failure("probing the Consul agent failed")
            return None
        d.addCallbacks(self._agent_up, self._agent_down)
        return d

    def _agent_up(self, leader: Any) -> None:
        self._probing = None
        self._agent_answered = True
        log.info("the Consul agent answers (leader {leader})", leader=leader)
        if self._prober.running:
            self._prober.stop()

    def _agent_down(self, failure: Failure) -> None:
        self._probing = None
        if not failure.check(CancelledError):
            log.info(
                "not ready: the Consul agent did not answer a probe ({error}); next in {interval:.0f}s",
                error=failure.getErrorMessage(), interval=PROBE_INTERVAL,
            )


def refuse_names(request: Request, error: TooManyNames) -> bytes:
    """
    A scrape that named too many samples: 400 and a log line.
    """
    log.warn("admin {path}: {error}", path=request.path, error=error)
    return answer(request, 400, b"text/plain; charset=utf-8", f"{error}\n".encode("ascii"))


def answer(request: Request, status: int, content_type: bytes, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    # Live state: never from a cache; and never sniffed into something else.
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return body


def answer_html(request: Request, status: int, page: bytes) -> bytes:
    # A status page runs nothing and loads nothing: no script, only inline style.
    request.setHeader(b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'")
    return answer(request, status, b"text/html; charset=utf-8", page)


def answer_json(request: Request, status: int, document: Dict[str, Any]) -> bytes:
    body = json.dumps(document, indent=1).encode("utf-8") + b"\n"
    return answer(request, status, b"application/json", body)


class _Endpoint(Resource):
    """
    One admin page: a leaf reading the admin state.
    """

    isLeaf = True

    def __init__(self, admin: Admin) -> None:
        Resource.__init__(self)
        self._admin = admin


class _Health(_Endpoint):
    def render_GET(self, request: Request) -> bytes:
        # Answering at all is the point: the reactor is turning.
        return answer(request, 200, b"text/plain; charset=utf-8", b"ok\n")


class _Ready(_Endpoint):
    def render_GET(self, request: Request) -> bytes:
        reason = self._admin.not_ready()
        if reason is None:
            return answer_json(request, 200, {"ready": True})
        return answer_json(request, 503, {"ready": False, "reason": reason})


class _Metrics(_Endpoint):
    def render_GET(self, request: Request) -> bytes:
        try:
            names = asked(request.args)
        except TooManyNames as e:
            return refuse_names(request, e)
        return answer(request, 200, CONTENT_TYPE_LATEST.encode("ascii"), self._admin.metrics.exposition(names))


class _Status(_Endpoint):
    def render_GET(self, request: Request) -> bytes:
        admin = self._admin
        document = gateway_status(admin.gateway, admin.started, admin.clock.seconds())
        accept = request.getHeader(b"accept") or b""
        if request.args.get(b"format") == [b"json"] or b"application/json" in accept.lower():
            return answer_json(request, 200, document)
        return answer_html(request, 200, gateway_page(document))


def _root(admin: Admin) -> Resource:
    root = Resource()
    for name, page in [(b"metrics", _Metrics), (b"status", _Status), (b"healthz", _Health), (b"readyz", _Ready)]:
        root.putChild(name, page(admin))
    return root


class AdminSite(Site):
    """
    The admin endpoints' site: quiet, and without tracebacks in answers.
    """

    displayTracebacks = False
    noisy = False

    def __init__(self, root: Resource, reactor: Any) -> None:
        Site.__init__(self, root, reactor=reactor)

    def log(self, request: Any) -> None:
        # Scrapes and probes every few seconds would drown the daemon's log.
        pass

    def logPrefix(self) -> str:
        return ADMIN_LOG_PREFIX
