"""
The one classification of what can go wrong with a proxied request.

Every failure the data path meets is one L{Failure} member, decided where it
happens (the upstream client, the front, the engine) from what happened on
the wire, never from an exception's message text.  The member alone then
decides everything downstream of it: whether the request may be retried on
another instance, whether it counts against the instance for outlier
ejection, the status and message the client gets, the log line, and the
C{kind} label of C{restygate_upstream_errors_total}.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, Optional, Tuple

from twisted.python.failure import Failure as TwistedFailure

from restygate.discovery.model import DiscoveryUnavailable, NoUsableInstance, UnknownDatacenter, UnknownService

__all__ = ["Failure", "Failed", "discovery_failure"]


class Failure(enum.Enum):
    """
    A kind of failure, with what follows from it.

    Each value starts with the member's own name, so no two members are
    aliases of each other even where their consequences are the same.

    @ivar status: what the client gets when this ends the request before an
        answer started.
    @ivar message: the C{error} of that answer's JSON body.
    @ivar kind: the C{restygate_upstream_errors_total} label, or L{None} for
        failures that are not the upstream side's.
    @ivar ejects: counts toward ejecting the instance (outlier detection):
        it shows a broken instance, where a slow one shows load.
    @ivar never_reached: the request provably never reached the upstream's
        application, so any method may be retried elsewhere.
    @ivar retriable: an idempotent request may be retried elsewhere.
    """

    CONNECT_REFUSED = ("connect_refused", 502, "upstream unreachable", "connect", True, True, True)
    CONNECT_TIMEOUT = ("connect_timeout", 502, "upstream unreachable", "connect", True, True, True)
    TLS_FAILED = ("tls_failed", 502, "upstream unreachable", "tls", True, True, True)
    RESET_BEFORE_RESPONSE = ("reset_before_response", 502, "upstream closed the connection before answering", "reset", True, False, True)
    RESPONSE_TIMEOUT = ("response_timeout", 504, "upstream timed out", "timeout", False, False, False)
    UPSTREAM_PROTOCOL = ("upstream_protocol", 502, "upstream sent an invalid response", "protocol", True, False, False)
    # After the response began: the client connection is cut, never given a
    # short body that looks complete.
    UPSTREAM_CUT = ("upstream_cut", 502, "upstream cut the response short", "reset", True, False, False)
    BODY_STALLED = ("body_stalled", 504, "body transfer stalled", "timeout", False, False, False)
    NO_INSTANCE = ("no_instance", 503, "no passing instance", "no_instance", False, False, False)
    DISCOVERY_UNAVAILABLE = ("discovery_unavailable", 503, "service discovery unavailable", None, False, False, False)
    UNKNOWN_DATACENTER = ("unknown_datacenter", 404, "unknown datacenter", None, False, False, False)
    UNKNOWN_SERVICE = ("unknown_service", 404, "unknown service", None, False, False, False)
    CLIENT_PROTOCOL = ("client_protocol", 400, "invalid request", None, False, False, False)
    BODY_TOO_LARGE = ("body_too_large", 413, "request body too large", None, False, False, False)
    CLIENT_GONE = ("client_gone", 499, "client went away", None, False, False, False)
    INTERNAL = ("internal", 500, "internal error", None, False, False, False)

    def __init__(
        self, name: str, status: int, message: str, kind: Optional[str],
        ejects: bool, never_reached: bool, retriable: bool,
    ) -> None:
        self.status = status
        self.message = message
        self.kind = kind
        self.ejects = ejects
        self.never_reached = never_reached
        self.retriable = retriable


class Failed(Exception):
    """
    A failure on its way through a Deferred or a callback: the kind, and
    what exactly happened, for the log (never for the client).
    """

    def __init__(self, failure: Failure, detail: str = "") -> None:
        super().__init__(detail or failure.message)
        self.failure = failure
        self.detail = detail or failure.message


def discovery_failure(failure: TwistedFailure, dc: str, service: str) -> Optional[Tuple[Failure, Dict[str, Any]]]:
    """
    The kind of a failed discovery lookup of C{service} in C{dc}, and the
    details its answer gives; L{None} for anything else.
    """
    if failure.check(UnknownDatacenter):
        return Failure.UNKNOWN_DATACENTER, {"datacenter": dc}
    if failure.check(UnknownService):
        return Failure.UNKNOWN_SERVICE, {"datacenter": dc, "service": service}
    if failure.check(NoUsableInstance):
        return Failure.NO_INSTANCE, {"datacenter": dc, "service": service}
    if failure.check(DiscoveryUnavailable):
        return Failure.DISCOVERY_UNAVAILABLE, {"datacenter": dc, "service": service}
    return None
