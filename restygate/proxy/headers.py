"""
The forwarding rules for header fields, both ways.

Headers travel as lists of C{(name, value)} pairs exactly as they came off
the wire: names keep their case, repeats and order are kept.  Hop-by-hop
fields (the fixed set, and every name the sender's C{Connection} lists) are
dropped both ways; the C{X-Forwarded-*} set is the gateway's to write.  An
C{Upgrade} the client asks for is the one hop-by-hop field passed on, with
the C{Connection: upgrade} that makes it mean something.
"""

from __future__ import annotations

from typing import FrozenSet, List, Optional, Set, Tuple

__all__ = [
    "HOP_BY_HOP", "HeaderList", "forward_headers", "response_headers", "header", "headers_named",
    "wants_upgrade",
]

HeaderList = List[Tuple[bytes, bytes]]

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
# the upstream connection redoes the framing, so Content-Length goes too.
_NOT_FORWARDED = HOP_BY_HOP | _OURS | {b"x-forwarded-for"}
_NOT_FORWARDED_WITH_BODY = _NOT_FORWARDED | {b"content-length"}

def header(headers: HeaderList, name: bytes) -> Optional[bytes]:
    """The first value of C{name} (lowercase), if any."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def headers_named(headers: HeaderList, name: bytes) -> List[bytes]:
    """Every value of C{name} (lowercase), in order."""
    return [value for key, value in headers if key.lower() == name]


def _connection_tokens(headers: HeaderList) -> FrozenSet[bytes]:
    tokens: Set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def wants_upgrade(headers: HeaderList) -> Optional[bytes]:
    """The protocols a request asks to switch to, if it asks."""
    if b"upgrade" not in _connection_tokens(headers):
        return None
    return header(headers, b"upgrade")


def forward_headers(
    headers: HeaderList,
    prefix: bytes,
    client_ip: bytes,
    secure: bool,
    has_body: bool,
    upgrade: Optional[bytes] = None,
) -> HeaderList:
    """
    The headers the upstream gets: the client's, minus hop-by-hop ones (and
    the body framing, which the upstream connection redoes for a body), plus
    the C{X-Forwarded-*} set.
    """
    drop = _NOT_FORWARDED_WITH_BODY if has_body else _NOT_FORWARDED
    named = _connection_tokens(headers)
    if named:
        drop = drop | named
    out: HeaderList = []
    earlier: List[bytes] = []
    host = None
    for pair in headers:
        lowered = pair[0].lower()
        if lowered == b"x-forwarded-for":
            earlier.append(pair[1])
        elif lowered == b"host" and host is None:
            host = pair[1]
        if lowered not in drop:
            out.append(pair)
    out.append((b"X-Forwarded-For", b", ".join([*earlier, client_ip]) if earlier else client_ip))
    out.append((b"X-Real-IP", client_ip))
    if host is not None:
        out.append((b"X-Forwarded-Host", host))
    out.append((b"X-Forwarded-Proto", b"https" if secure else b"http"))
    if prefix:
        # A host route strips no prefix: the client's own is dropped, none added.
        out.append((b"X-Forwarded-Prefix", prefix))
    if upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", upgrade))
    return out


def response_headers(headers: HeaderList, upgrade: bool = False) -> HeaderList:
    """
    An upstream response's end-to-end headers, repeats included; after a
    C{101}, its C{Upgrade} too.
    """
    named = _connection_tokens(headers)
    drop = HOP_BY_HOP | named if named else HOP_BY_HOP
    out = [pair for pair in headers if pair[0].lower() not in drop]
    if upgrade:
        value = header(headers, b"upgrade")
        out.append((b"Connection", b"upgrade"))
        if value is not None:
            out.append((b"Upgrade", value))
    return out
