"""
The pure-Python request parser (L{HttpRequestParser}, on
L{restygate.h1parse.MessageParser}) and the request line's grammar as llhttp
(strict) has it: the methods it knows, and which request targets it takes
(origin form, C{*}, absolute form with a letters-only scheme, and for
C{CONNECT} an authority followed by anything a path may hold).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Tuple

from httptools import HttpParserError

from restygate.h1parse import MessageParser

__all__ = ["HttpRequestParser", "METHODS", "request_line", "target_start", "target_error"]

# llhttp's HTTP methods (its RTSP-only ones and PRI, the HTTP/2 preface,
# are refused).
METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK "
    b"BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH "
    b"PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
_PREFIXES = frozenset(method[:n] for method in METHODS for n in range(1, len(method) + 1))
_LONGEST = max(len(method) for method in METHODS)

_SERVER = rb"[0-9A-Za-z\-_.!~*'()%;:&=+$,\[\]@]"
_REST = rb"(?:[/?][\x21-\x7e]*)?"
_ABSOLUTE = re.compile(rb"[A-Za-z]+://" + _SERVER + rb"*" + _REST)
_AUTHORITY = re.compile(_SERVER + rb"*" + _REST)
_TARGET_CHARS = re.compile(rb"[\x21-\x7e]*")
# A byte no request target holds: searching for one is what PyPy's regex
# engine does fastest (a fullmatch with groups costs four times as much).
NOT_TARGET = re.compile(rb"[^\x21-\x7e]")
_REQUEST_LINE = re.compile(rb"([A-Z][A-Z\-]*) +([\x21-\x7e]+) +HTTP/(\d)\.(\d)\r")
_REQUEST_LINE_09 = re.compile(rb"([A-Z][A-Z\-]*) +([\x21-\x7e]+)\r?")
_COMMON_VERSIONS = {b"HTTP/1.1\r": (1, 1), b"HTTP/1.0\r": (1, 0)}
# A request line with no target yet after this many bytes is refused.
_LONGEST_START = 256


def request_line(line: bytes) -> Tuple[bytes, bytes, int, int]:
    """
    The method, target and version of a request line (C{line} ends with its
    CR, or with nothing for llhttp's HTTP/0.9).

    @raise HttpParserError: llhttp would refuse it.
    """
    parts = line.split(b" ")
    version = _COMMON_VERSIONS.get(parts[-1]) if len(parts) == 3 else None
    if version is not None and parts[1] and NOT_TARGET.search(parts[1]) is None:
        method, target = parts[0], parts[1]
        major, minor = version
    else:
        match = _REQUEST_LINE.fullmatch(line)
        if match is not None:
            method, target = match.group(1), match.group(2)
            major, minor = int(match.group(3)), int(match.group(4))
        else:
            # A line without a version is HTTP/0.9 to llhttp (and 505 to the front).
            match = _REQUEST_LINE_09.fullmatch(line)
            if match is None:
                raise HttpParserError("Invalid request line")
            method, target = match.groups()
            major, minor = 0, 9
    if method not in METHODS:
        raise HttpParserError("Invalid method encountered")
    if target[0] != 47 or method == b"CONNECT":  # 47: "/", every origin-form target
        error = target_error(method, target)
        if error is not None:
            raise HttpParserError(error)
    return method, target, major, minor


def target_start(line: bytes) -> int:
    """
    Where the target begins in the start of a request line (no line end
    yet), or -1 while it has not begun.

    @raise HttpParserError: llhttp would have refused the line by now.
    """
    if not line:
        return -1
    error = partial_line_error(line)
    if error is not None:
        raise HttpParserError(error)
    space = line.find(b" ")
    start = len(line) - len(line[space:].lstrip(b" ")) if space > 0 else len(line)
    if start < len(line):
        return start
    if start > _LONGEST_START:
        raise HttpParserError("Invalid request line")
    return -1


def target_error(method: bytes, target: bytes) -> Optional[str]:
    """Why llhttp would refuse C{target} (made of bytes 0x21-0x7e), or None."""
    first = target[:1]
    if method == b"CONNECT":
        return None if _AUTHORITY.fullmatch(target) else "Unexpected char in url server"
    if first in (b"/", b"*"):
        return None
    if first.isalpha():
        if _ABSOLUTE.fullmatch(target) is None:
            return "Unexpected char in url schema"
        server = target.split(b"/", 3)[2].split(b"?", 1)[0]
        return "Double @ in url" if server.count(b"@") > 1 else None
    return "Unexpected start char in url"


def partial_line_error(line: bytes) -> Optional[str]:
    """
    Why the start of a request line (no line end yet) can already be
    refused, or None: what llhttp would have refused by now.
    """
    space = line.find(b" ")
    method = line if space < 0 else line[:space]
    if space < 0:
        if method in _PREFIXES:
            return None
        return "Expected space after method" if method[:_LONGEST] in METHODS else "Invalid method encountered"
    if method not in METHODS:
        return "Invalid method encountered"
    target = line[space:].lstrip(b" ").rstrip(b"\r")
    stop = target.find(b" ")
    if _TARGET_CHARS.fullmatch(target if stop < 0 else target[:stop]) is None:
        return "Invalid characters in url"
    return None


class HttpRequestParser(MessageParser):
    """
    Parses requests, one after another, as C{httptools.HttpRequestParser}.
    """

    def __init__(self, protocol: Any) -> None:
        super().__init__(protocol)
        self._on_url: Optional[Callable[[bytes], Any]] = getattr(protocol, "on_url", None)
        self._method = b""
        self._upgrade = False
        self._url_sent = 0
        self._target_at = -1
        self._target_done = False

    def get_method(self) -> bytes:
        return self._method

    def should_upgrade(self) -> bool:
        return self._upgrade

    def _partial(self, piece: bytes) -> None:
        super()._partial(piece)
        if not self._starting() or self._target_done:
            return
        # llhttp refuses a request line as soon as a byte cannot belong (a
        # TLS hello to a plain listener), and hands the target over as it
        # comes, so that its length is checked before the line ends.
        if self._target_at < 0:
            line = b"".join(self._pending).lstrip(b"\r")
            self._pending = [line]
            self._pending_size = len(line)
            start = target_start(line)
            if start < 0:
                return
            self._target_at = start
            rest = line[start:]
        else:
            rest = piece
        stop = rest.find(b" ")
        target = rest if stop < 0 else rest[:stop]
        self._target_done = stop >= 0
        if target.endswith(b"\r"):
            # The line's end may follow (HTTP/0.9): not the target's.
            target = target[:-1]
        if NOT_TARGET.search(target) is not None:
            raise HttpParserError("Invalid characters in url")
        if target and self._on_url is not None:
            self._url_sent += len(target)
            self._on_url(target)

    def _start_line(self, line: bytes) -> None:
        method, target, self._major, self._minor = request_line(line)
        self._check_version()
        self._method = method
        self._upgrade = False
        sent, self._url_sent = self._url_sent, 0
        self._target_at = -1
        self._target_done = False
        if self._on_url is not None and len(target) > sent:
            self._on_url(target[sent:] if sent else target)

    def _headers_done(self) -> bool:
        upgrade = self._method == b"CONNECT" or self._connection_upgrade()
        self._upgrade = upgrade
        if self._on_headers_complete is not None:
            self._on_headers_complete()
        self._framing(upgrade)
        return upgrade
