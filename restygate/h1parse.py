"""
HTTP/1.1 parsers in pure Python, with C{httptools}' interface
(L{restygate.h1request.HttpRequestParser}, L{HttpResponseParser}:
C{feed_data}, the same callbacks, getters and exceptions) and llhttp's strict
behaviour, for PyPy.

Under PyPy every call into a C extension goes through cpyext, and llhttp
calls back into Python for every part of a message: measured here, parsing
one small request head through C{httptools} costs about 12 us under PyPy and
a small response 15 us, against about 1 us for the same work in Python that
PyPy's JIT compiles.  The front and the upstream client pick the parser by
interpreter (L{restygate.front.parser}, L{restygate.upstream.client}); under
CPython C{httptools} stays.

What llhttp refuses is refused here, as the same L{HttpParserError}: methods
llhttp does not know, request targets outside its grammar, versions other
than 0.9, 1.0, 1.1 and 2.0 (the front answers 505 for all but 1.0 and 1.1),
header names that are not tokens, control characters in header values, bare
CR or LF, obs-fold, a repeated or malformed C{Content-Length}, C{Content-Length}
with C{Transfer-Encoding}, a repeated C{Transfer-Encoding} or one not ending
in C{chunked} in a request, malformed chunk sizes and extensions, chunk data
not followed by CRLF.  tests/test_h1parse.py holds both parsers to the same
events and refusals.  Where llhttp is lenient in ways restygate never relied
on, this parser refuses: RTSP and ICE request lines, and a head line over
L{MAX_HEAD_LINE}.
"""

from __future__ import annotations

import platform
import re
from typing import Any, Callable, List, Optional

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade


__all__ = ["MessageParser", "HttpResponseParser", "MAX_HEAD_LINE", "PURE_PYTHON"]

# Whether restygate parses with these parsers (under PyPy) or llhttp.
PURE_PYTHON = platform.python_implementation() == "PyPy"

# A head line longer than this is refused whoever sent it: bounds what is
# buffered for a line that never ends (the front's own limits are lower).
MAX_HEAD_LINE = 1 << 20
# The largest Content-Length or chunk size llhttp takes (64 bits).
_MAX_SIZE = (1 << 64) - 1

_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d\d\d)(?: ([^\r\n]*))?\r")
# Searching for a byte outside a class is what PyPy's regex engine does
# fastest (a fullmatch with groups costs four times as much).
_NOT_TOKEN = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_NOT_VALUE = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")
# The common status lines' starts.
_COMMON_VERSIONS = {b"HTTP/1.1 ": (1, 1), b"HTTP/1.0 ": (1, 0)}
_CONTENT_LENGTH = re.compile(rb"(\d+)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)((?:;[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
                         rb"(?:=(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]*|\"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]"
                         rb"|\\[\t\x20-\x7e\x80-\xff])*\"))?)*)\r")
_VERSION_NAMES = {(0, 9): "0.9", (1, 0): "1.0", (1, 1): "1.1", (2, 0): "2.0"}
_VERSIONS = frozenset(_VERSION_NAMES)

# Where a parser is.
_START, _HEAD, _LENGTH, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_EOF, _CLOSED, _DEAD = range(10)

# Connection header flags.
_CLOSE, _KEEP_ALIVE, _UPGRADE = 1, 2, 4
_CONNECTION_TOKENS = {b"close": _CLOSE, b"keep-alive": _KEEP_ALIVE, b"upgrade": _UPGRADE}


class MessageParser:
    """
    What requests and responses share: the header block, the body framing
    (a length, chunks and trailers, or until the connection closes) and the
    callbacks.  A subclass parses its start line.
    """

    _is_request = True

    def __init__(self, protocol: Any) -> None:
        self._on_message_begin: Optional[Callable[[], Any]] = getattr(protocol, "on_message_begin", None)
        self._on_header: Optional[Callable[[bytes, bytes], Any]] = getattr(protocol, "on_header", None)
        self._on_headers_complete: Optional[Callable[[], Any]] = getattr(protocol, "on_headers_complete", None)
        self._on_body: Optional[Callable[[bytes], Any]] = getattr(protocol, "on_body", None)
        self._on_message_complete: Optional[Callable[[], Any]] = getattr(protocol, "on_message_complete", None)
        self._state = _START
        self._pending: List[bytes] = []
        self._pending_size = 0
        self._major = self._minor = 0
        self._version = "0.0"
        self._reset()

    def _reset(self) -> None:
        self._begun = False
        self._connection = 0
        self._has_upgrade = False
        self._length = -1
        self._chunked = False
        self._te = False
        self._left = 0

    # -- httptools' interface -------------------------------------------------
    def get_http_version(self) -> str:
        return self._version

    def should_keep_alive(self) -> bool:
        if self._major > 0 and self._minor > 0:
            if self._connection & _CLOSE:
                return False
        elif not self._connection & _KEEP_ALIVE:
            return False
        return not self._needs_eof()

    def feed_data(self, data: bytes) -> None:
        if self._state == _DEAD:
            raise HttpParserError("the parser stopped at an earlier error")
        try:
            self._feed(data)
        except (HttpParserError, HttpParserUpgrade):
            self._state = _DEAD
            raise
        except Exception as e:
            # A callback raised: httptools' shape, the cause as the context.
            self._state = _DEAD
            raise HttpParserCallbackError("a callback failed") from e

    # -- the parse ------------------------------------------------------------
    def _needs_eof(self) -> bool:
        return False

    def _feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _LENGTH or state == _CHUNK_DATA:
                take = min(self._left, end - pos)
                self._body(data if take == end else data[pos:pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    if state == _LENGTH:
                        self._complete()
                    else:
                        self._state = _CHUNK_END
            elif state == _UNTIL_EOF:
                self._body(data if pos == 0 else data[pos:])
                return
            elif state == _CLOSED:
                if data[pos:].lstrip(b"\r\n"):
                    raise HttpParserError("Data after `Connection: close`")
                return
            else:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._partial(data[pos:] if pos else data)
                    return
                if self._pending:
                    line = b"".join(self._pending) + data[pos:newline]
                    self._pending = []
                    self._pending_size = 0
                else:
                    line = data[pos:newline]
                pos = newline + 1
                if self._line(line):
                    # An upgrade: the rest is another protocol's.
                    raise HttpParserUpgrade(pos)

    def _partial(self, piece: bytes) -> None:
        if self._state == _START and not self._begun and piece.lstrip(b"\r"):
            self._begin()
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size > MAX_HEAD_LINE:
            raise HttpParserError("head line too long")
        if self._state == _CHUNK_END and (self._pending_size > 1 or piece != b"\r"):
            raise HttpParserError("Expected LF after chunk data")

    def _starting(self) -> bool:
        """Whether no message has its start line yet."""
        return self._state == _START

    def _connection_upgrade(self) -> bool:
        """Whether C{Connection} named C{upgrade} and an C{Upgrade} was sent."""
        return self._has_upgrade and bool(self._connection & _UPGRADE)

    def _begin(self) -> None:
        self._begun = True
        if self._on_message_begin is not None:
            self._on_message_begin()

    def _body(self, data: bytes) -> None:
        if self._on_body is not None:
            self._on_body(data)

    def _line(self, line: bytes) -> bool:
        """One line of a head, trailers or chunk framing; True: upgraded."""
        state = self._state
        if state == _START:
            stripped = line.lstrip(b"\r")
            if stripped:
                if not self._begun:
                    self._begin()
                self._start_line(stripped)
                self._state = _HEAD
        elif state == _HEAD:
            if line == b"\r":
                return self._headers_done()
            self._field(line, False)
        elif state == _CHUNK_SIZE_LINE:
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise HttpParserError("Invalid character in chunk size")
            size = int(match.group(1), 16)
            if size > _MAX_SIZE:
                raise HttpParserError("Chunk size overflow")
            self._left = size
            self._state = _CHUNK_DATA if size else _TRAILERS
        elif state == _CHUNK_END:
            if line != b"\r":
                raise HttpParserError("Expected LF after chunk data")
            self._state = _CHUNK_SIZE_LINE
        elif state == _TRAILERS:
            if line == b"\r":
                self._complete()
            else:
                self._field(line, True)
        return False

    def _start_line(self, line: bytes) -> None:
        raise NotImplementedError()

    def _check_version(self) -> None:
        if (self._major, self._minor) not in _VERSIONS:
            raise HttpParserError("Invalid HTTP version")
        self._version = _VERSION_NAMES[self._major, self._minor]

    def _field(self, line: bytes, trailer: bool) -> None:
        name, colon, value = line.partition(b":")
        if (not colon or not name or _NOT_TOKEN.search(name) is not None or value[-1:] != b"\r"
                or _NOT_VALUE.search(value, 0, len(value) - 1) is not None):
            raise HttpParserError(_field_error(line))
        value = value[:-1].lstrip(b" \t")
        if len(name) in (7, 10, 14, 16, 17):
            lowered = name.lower()
            if lowered == b"content-length":
                self._content_length(value, trailer)
            elif lowered == b"transfer-encoding":
                if value:
                    self._transfer_encoding(value)
            elif lowered in (b"connection", b"proxy-connection"):
                for token in value.lower().split(b","):
                    self._connection |= _CONNECTION_TOKENS.get(token.strip(b" \t"), 0)
            elif lowered == b"upgrade":
                self._has_upgrade = self._has_upgrade or bool(value)
        if self._on_header is not None:
            self._on_header(name, value)

    def _content_length(self, value: bytes, trailer: bool) -> None:
        if self._te or trailer:
            raise HttpParserError("Content-Length can't be present with Transfer-Encoding")
        if self._length >= 0:
            raise HttpParserError("Duplicate Content-Length")
        match = _CONTENT_LENGTH.fullmatch(value)
        if match is None:
            raise HttpParserError("Empty Content-Length" if not value else "Invalid character in Content-Length")
        length = int(match.group(1))
        if length > _MAX_SIZE:
            raise HttpParserError("Content-Length overflow")
        self._length = length

    def _transfer_encoding(self, value: bytes) -> None:
        if self._length >= 0:
            raise HttpParserError("Transfer-Encoding can't be present with Content-Length")
        if self._chunked and self._is_request:
            raise HttpParserError("Invalid `Transfer-Encoding` header value")
        self._te = True
        # Chunked when the last coding named is; anything after it undoes it
        # (and is refused at once in a request).
        codings = [coding.strip(b" \t") for coding in value.lower().split(b",")]
        if self._is_request and b"chunked" in codings[:-1]:
            raise HttpParserError("Invalid `Transfer-Encoding` header value")
        self._chunked = codings[-1] == b"chunked"

    def _headers_done(self) -> bool:
        raise NotImplementedError()

    def _framing(self, skip_body: bool) -> None:
        """After the head: where the body ends (llhttp's rules)."""
        if skip_body:
            self._complete()
        elif self._chunked:
            self._state = _CHUNK_SIZE_LINE
        elif self._te:
            if self._is_request:
                raise HttpParserError("Request has invalid `Transfer-Encoding`")
            self._state = _UNTIL_EOF
        elif self._length > 0:
            self._left = self._length
            self._state = _LENGTH
        elif self._length < 0 and self._needs_eof():
            self._state = _UNTIL_EOF
        else:
            self._complete()

    def _complete(self) -> None:
        # After a message that closes the connection, llhttp takes nothing more.
        self._state = _START if self.should_keep_alive() else _CLOSED
        self._reset()
        if self._on_message_complete is not None:
            self._on_message_complete()


class HttpResponseParser(MessageParser):
    """
    Parses responses, one after another, as C{httptools.HttpResponseParser}.
    """

    _is_request = False

    def __init__(self, protocol: Any) -> None:
        super().__init__(protocol)
        self._on_status: Optional[Callable[[bytes], Any]] = getattr(protocol, "on_status", None)
        self._status = 0

    def get_status_code(self) -> int:
        return self._status

    def _needs_eof(self) -> bool:
        if _no_body(self._status):
            return False
        if self._te and not self._chunked:
            return True
        return not self._chunked and self._length < 0

    def _partial(self, piece: bytes) -> None:
        super()._partial(piece)
        if self._state == _START and self._pending_size < 16:
            # Refused at the first byte that cannot start a status line.
            line = b"".join(self._pending).lstrip(b"\r")[:5]
            if line != b"HTTP/"[:len(line)]:
                raise HttpParserError("Expected HTTP/, RTSP/ or ICE/")

    def _start_line(self, line: bytes) -> None:
        version = _COMMON_VERSIONS.get(line[:9])
        code = line[9:12]
        reason: Optional[bytes] = None
        if (version is not None and code.isdigit() and line[-1] == 13
                and (len(line) == 13 or (line[12] == 32 and b"\r" not in line[13:-1]))):
            self._major, self._minor = version
            if len(line) > 13:
                reason = line[13:-1]
        else:
            match = _STATUS_LINE.fullmatch(line)
            if match is None:
                raise HttpParserError("Invalid response status" if line.startswith(b"HTTP/") else
                                      "Expected HTTP/, RTSP/ or ICE/")
            major, minor, code, reason = match.groups()
            self._major = int(major)
            self._minor = int(minor)
        self._check_version()
        self._status = int(code)
        if reason is not None and self._on_status is not None:
            self._on_status(reason)

    def _headers_done(self) -> bool:
        status = self._status
        upgrade = status == 101 and self._connection_upgrade()
        if self._on_headers_complete is not None:
            self._on_headers_complete()
        self._framing(upgrade or _no_body(status))
        if status == 101 and not upgrade:
            raise HttpParserError("Pause on CONNECT/Upgrade")
        return upgrade


def _field_error(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        return "Unexpected whitespace after header value"
    if not line.endswith(b"\r"):
        return "Missing expected CR after header value"
    name, colon, _ = line.partition(b":")
    if not colon or not re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
        return "Invalid header token"
    return "Invalid header value char"


def _no_body(status: int) -> bool:
    return 100 <= status < 200 or status == 204 or status == 304

