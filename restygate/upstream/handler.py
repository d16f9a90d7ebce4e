"""
What an upstream connection talks to for one request: the L{BodySource} it
sends the request body from and the L{ResponseHandler} it hands the response
to as it arrives (the engine's exchange implements both ends).
"""

from __future__ import annotations

from typing import Any, List, Optional, Protocol, Tuple

from restygate.proxy.failure import Failed

__all__ = ["HeaderList", "ResponseHandler", "BodySource"]

HeaderList = List[Tuple[bytes, bytes]]


class ResponseHandler:
    """
    Where an upstream connection delivers one response: the base class of
    the engine's exchange, which overrides every method.  A class, not a
    protocol: compiled (setup.py), the connection then calls the exchange
    natively, not by looking each method up by name.
    """

    def response_interim(self, status: int, headers: HeaderList) -> None:
        """A 1xx answer other than 101 arrived."""

    def response_started(self, status: int, reason: bytes, headers: HeaderList, noted: List[Tuple[bytes, int]],
                         length: Optional[int]) -> None:
        """
        The final status and headers; C{noted}, where the headers hold a
        field L{restygate.proxy.headers.RESPONSE_NOTED} names; C{length}, the
        body's, when known.
        """

    def response_body(self, data: bytes) -> None:
        """Some response body."""

    def response_done(self, trailers: HeaderList) -> None:
        """The whole response arrived."""

    def response_flush(self) -> None:
        """What arrived in one read is handed over: send it on."""

    def response_failed(self, failed: Failed) -> None:
        """The exchange failed; nothing more comes."""

    def upgraded(self, connection: Any, reason: bytes, headers: HeaderList, rest: bytes) -> None:
        """The upstream switched protocols (C{101}); C{rest} came after its head."""


class BodySource(Protocol):
    """
    A request body the connection sends as it becomes available.
    """

    length: Optional[int]

    def start(self, consumer: Any) -> None:
        """Write into C{consumer} (C{write}, C{finish}, C{fail}) from the first byte."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def detach(self) -> None:
        """Stop writing: the exchange is over."""
