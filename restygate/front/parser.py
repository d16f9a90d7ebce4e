"""
The parser seam of the front: HTTP/1.1 requests parsed by llhttp (through
C{httptools}, strict: no leniency flag is ever set) into a few events for a
L{RequestSink}, with restygate's own limits on top.  Under PyPy, where every
call between llhttp and Python is slow, by L{restygate.h1request}'s parser in
Python instead, which has httptools' interface and llhttp's rules.

Everything the front refuses for its framing is decided here and raised as
one L{ParseError} carrying the status to answer: bad syntax and the
smuggling vectors llhttp rejects (obs-fold, bare CR or LF, NUL, conflicting
or repeated C{Content-Length}, C{Content-Length} with C{Transfer-Encoding})
400, a transfer coding other than plain C{chunked} 400, a request line over
the limit 414, headers over the limits 431, an HTTP version other than 1.0
and 1.1 505.  Another parser would plug in behind the same two names.
"""

from __future__ import annotations

import re
from typing import Final, List, Optional, Protocol, Tuple

import httptools

from restygate.h1parse import PURE_PYTHON
from restygate.h1request import HttpRequestParser
from restygate.proxy.headers import NOTED
__all__ = ["ParseError", "RequestParser", "RequestSink", "MAX_LINE", "MAX_HEADERS_SIZE", "MAX_HEADERS"]

HeaderList = List[Tuple[bytes, bytes]]

# twisted.web's limits, which restygate has always promised.
MAX_LINE: Final = 16384
MAX_HEADERS_SIZE: Final = 16384
MAX_HEADERS: Final = 100
# Bytes llhttp may be handed inside one request head before it is refused
# whatever it holds: bounds what the parser buffers for a partial header.
_MAX_RAW_HEAD: Final = 4 * MAX_HEADERS_SIZE

_VERSION: Final = re.compile(rb" HTTP/(\d+\.\d+)\r?\n")


class ParseError(Exception):
    """
    The client's bytes are not a request restygate accepts.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestSink(Protocol):
    """
    What a L{RequestParser} reports, in order, for each request.
    """

    def request_head(self, method: bytes, target: bytes, version: bytes, headers: HeaderList,
                     noted: HeaderList, keep_alive: bool, upgrade: bool) -> None:
        """A request's head; C{noted} is its headers that L{NOTED} names, lowercased."""

    def request_body(self, data: bytes) -> None: ...

    def request_end(self, trailers: HeaderList) -> None: ...


class RequestParser:
    """
    Parses a connection's requests one after another.
    """

    def __init__(self, sink: RequestSink) -> None:
        self._sink = sink
        self._parser = HttpRequestParser(self) if PURE_PYTHON else httptools.HttpRequestParser(self)
        self._target: List[bytes] = []
        self._target_size = 0
        self._headers: HeaderList = []
        self._noted: HeaderList = []
        self._headers_size = 0
        self._trailers: Optional[HeaderList] = None
        self._in_head = True
        self._head_fed = 0

    def feed(self, data: bytes) -> Optional[bytes]:
        """
        Parse C{data}; after a request that asks to switch protocols, the
        bytes that followed its head are returned and parsing stops.

        @raise ParseError: the request is refused.
        """
        if self._in_head:
            if self._head_fed > _MAX_RAW_HEAD:
                raise ParseError(431, "request headers too large")
            self._head_fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return data[int(upgrade.args[0]):]
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, ParseError):
                raise e.__context__ from None
            raise
        except httptools.HttpParserError as e:
            version = _VERSION.search(data)
            if version is not None and version.group(1) not in (b"1.0", b"1.1"):
                raise ParseError(505, "HTTP version not supported") from None
            raise ParseError(400, f"malformed request: {e}") from None
        return None

    @property
    def in_head(self) -> bool:
        """Whether a request's head has begun and is not complete yet."""
        return self._in_head and self._head_fed > 0

    # -- llhttp's callbacks ---------------------------------------------------
    # No on_message_begin: a request's state is made fresh when the one
    # before it completes (a callback from llhttp costs more than the work).
    def on_url(self, piece: bytes) -> None:
        self._target_size += len(piece)
        if self._target_size > MAX_LINE:
            raise ParseError(414, "request URI too long")
        self._target.append(piece)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailers is not None:
            self._trailers.append((name, value))
            self._headers_size += len(name) + len(value)
            if len(self._trailers) > MAX_HEADERS or self._headers_size > MAX_HEADERS_SIZE:
                raise ParseError(431, "request trailers too large")
            return
        self._headers_size += len(name) + len(value) + 4
        if self._headers_size > MAX_HEADERS_SIZE:
            raise ParseError(431, "request headers too large")
        if len(self._headers) >= MAX_HEADERS:
            raise ParseError(431, "too many request headers")
        # Each name is lowered here once, for every later step.
        lowered = name.lower()
        if lowered in NOTED:
            if lowered == b"transfer-encoding" and value.strip().lower() != b"chunked":
                raise ParseError(400, "unsupported transfer coding")
            self._noted.append((lowered, value))
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise ParseError(505, "HTTP version not supported")
        self._in_head = False
        self._head_fed = 0
        self._trailers = []
        target = self._target[0] if len(self._target) == 1 else b"".join(self._target)
        self._sink.request_head(
            parser.get_method(), target, b"HTTP/1.1" if version == "1.1" else b"HTTP/1.0",
            self._headers, self._noted, parser.should_keep_alive(), parser.should_upgrade(),
        )

    def on_body(self, data: bytes) -> None:
        self._sink.request_body(data)

    def on_message_complete(self) -> None:
        trailers, self._trailers = self._trailers or [], None
        self._in_head = True
        self._target = []
        self._target_size = 0
        self._headers = []
        self._noted = []
        self._headers_size = 0
        self._sink.request_end(trailers)
