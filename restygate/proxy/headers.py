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

from typing import Callable, Final, FrozenSet, List, Optional, Set, Tuple

__all__ = [
    "HOP_BY_HOP", "NOTED", "RESPONSE_NOTED", "HeaderList", "NotedAt", "forward_headers", "response_headers",
    "response_noted", "header", "headers_named", "noted_headers", "wants_upgrade",
]

HeaderList = List[Tuple[bytes, bytes]]

HOP_BY_HOP: Final[FrozenSet[bytes]] = frozenset(
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

# Set by the gateway from what it knows, never passed on from the client
# as they came (the forwarding chain is extended from trusted proxies).
_FORWARDING: Final[FrozenSet[bytes]] = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"})
_OURS: Final[FrozenSet[bytes]] = _FORWARDING | {b"x-real-ip", b"x-forwarded-host", b"x-forwarded-prefix", b"expect"}

# Built once: every request would otherwise union them again.  With a body
# the upstream connection redoes the framing, so Content-Length goes too.
_NOT_FORWARDED: Final = HOP_BY_HOP | _OURS
_NOT_FORWARDED_WITH_BODY: Final = _NOT_FORWARDED | {b"content-length"}

# The request header names the gateway acts on: framing, routing, the
# forwarding rules.  A front notes them (lowercased) as the head arrives,
# so the request path reads a short list -- usually just the Host --
# instead of lowering every name again at each step.
NOTED: Final[FrozenSet[bytes]] = _NOT_FORWARDED_WITH_BODY | {b"host"}


def header(headers: HeaderList, name: bytes) -> Optional[bytes]:
    """The first value of C{name} (lowercase), if any."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def headers_named(headers: HeaderList, name: bytes) -> List[bytes]:
    """Every value of C{name} (lowercase), in order."""
    return [value for key, value in headers if key.lower() == name]


def noted_headers(headers: HeaderList) -> HeaderList:
    """C{headers}' fields that L{NOTED} names, in order, with lowercase names."""
    lowered = [(key.lower(), value) for key, value in headers]
    return [pair for pair in lowered if pair[0] in NOTED]


def _tokens(value: bytes) -> Set[bytes]:
    return {t.strip().lower() for t in value.split(b",")}


def wants_upgrade(headers: HeaderList) -> Optional[bytes]:
    """The protocols a request asks to switch to, if it asks."""
    for key, value in headers:
        if key.lower() == b"connection" and b"upgrade" in _tokens(value):
            return header(headers, b"upgrade")
    return None


def forward_headers(
    headers: HeaderList,
    prefix: bytes,
    client_ip: bytes,
    secure: bool,
    has_body: bool,
    upgrade: Optional[bytes] = None,
    trusted: Optional[Callable[[bytes], bool]] = None,
    noted: Optional[HeaderList] = None,
) -> Tuple[HeaderList, bool]:
    """
    The headers the upstream gets: the client's, minus hop-by-hop ones (and
    the body framing, which the upstream connection redoes for a body), plus
    the C{X-Forwarded-*} set and C{Forwarded} (RFC 7239); and whether the
    client's C{Host} is among them.  C{noted} is L{noted_headers} of
    C{headers}, when the caller has it.

    From a client C{trusted} says is one of the operator's proxies, its
    C{X-Forwarded-For}, C{X-Forwarded-Proto} and C{Forwarded} are extended
    with this hop, and C{X-Real-IP} is the first address (from the right)
    that is not such a proxy; from anyone else they are replaced.
    """
    drop = _NOT_FORWARDED_WITH_BODY if has_body else _NOT_FORWARDED
    # Everything decided here is in the noted fields: the whole list is
    # only walked again when something in it is to go.
    if noted is None:
        noted = noted_headers(headers)
    named: Set[bytes] = set()
    dropping = False
    chain: List[bytes] = []
    protos: List[bytes] = []
    forwarded: List[bytes] = []
    host = None
    for lowered, value in noted:
        if lowered in drop:
            dropping = True
            if lowered == b"x-forwarded-for":
                chain.append(value)
            elif lowered == b"x-forwarded-proto":
                protos.append(value)
            elif lowered == b"forwarded":
                forwarded.append(value)
            elif lowered == b"connection":
                named |= _tokens(value)
        elif lowered == b"host" and host is None:
            host = value
    if dropping:
        gone = drop | named if named else drop
        out = [pair for pair in headers if pair[0].lower() not in gone]
    else:
        out = list(headers)
    proto = b"https" if secure else b"http"
    # RFC 7239: an IPv6 address is bracketed and the whole quoted.
    node = b'"[%s]"' % client_ip if b":" in client_ip else client_ip
    ours = b"".join((b"for=", node, b";proto=", proto) if host is None else
                    (b"for=", node, b";proto=", proto, b';host="', host, b'"'))
    real = client_ip
    if trusted is not None and trusted(client_ip):
        addresses = [a.strip() for value in chain for a in value.split(b",") if a.strip()]
        real = next((a for a in reversed(addresses) if not trusted(a)), addresses[0] if addresses else client_ip)
        chain.append(client_ip)
        protos.append(proto)
        forwarded.append(ours)
        client_ip, proto, ours = b", ".join(chain), b", ".join(protos), b", ".join(forwarded)
    out += ((b"X-Forwarded-For", client_ip), (b"X-Real-IP", real))
    if host is not None:
        out.append((b"X-Forwarded-Host", host))
    out.append((b"X-Forwarded-Proto", proto))
    if prefix:
        # A host route strips no prefix: the client's own is dropped, none added.
        out.append((b"X-Forwarded-Prefix", prefix))
    out.append((b"Forwarded", ours))
    if upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", upgrade))
    return out, host is not None and b"host" not in named


_PLACES: Final = frozenset({b"location", b"content-location", b"set-cookie"})

# The response header names the gateway acts on: the framing, hop-by-hop
# fields, places to rewrite.  An upstream connection notes where they are
# as the head arrives (L{response_noted}'s shape), for the same reason as
# L{NOTED}.
RESPONSE_NOTED: Final[FrozenSet[bytes]] = HOP_BY_HOP | _PLACES | {b"content-length"}

# (lowercase name, index in the header list) of each noted field.
NotedAt = List[Tuple[bytes, int]]


def response_noted(headers: HeaderList) -> NotedAt:
    """Where C{headers} hold a field L{RESPONSE_NOTED} names."""
    return [(lowered, at) for at, lowered in enumerate([name.lower() for name, _ in headers])
            if lowered in RESPONSE_NOTED]


def response_headers(
    headers: HeaderList, upgrade: bool = False, rewrite: Optional[Callable[[bytes, bytes], bytes]] = None,
    noted: Optional[NotedAt] = None,
) -> HeaderList:
    """
    An upstream response's end-to-end headers, repeats included; after a
    C{101}, its C{Upgrade} too.  C{rewrite(name, value)} is given each
    header that names a place (C{Location}, C{Content-Location},
    C{Set-Cookie}) to rewrite.  C{noted} is L{response_noted} of
    C{headers}, when the caller has it.
    """
    if noted is None:
        noted = response_noted(headers)
    named: Set[bytes] = set()
    gone: List[int] = []
    out = list(headers)
    for lowered, at in noted:
        if lowered in HOP_BY_HOP:
            gone.append(at)
            if lowered == b"connection":
                named |= _tokens(headers[at][1])
        elif rewrite is not None and lowered in _PLACES:
            name, value = headers[at]
            out[at] = (name, rewrite(lowered, value))
    named -= HOP_BY_HOP
    if named:
        # The fields Connection names beyond the fixed set may be any.
        gone = sorted({*gone, *(at for at, (name, _) in enumerate(headers) if name.lower() in named)})
    for at in reversed(gone):
        del out[at]
    if upgrade:
        protocols = header(headers, b"upgrade")
        out.append((b"Connection", b"upgrade"))
        if protocols is not None:
            out.append((b"Upgrade", protocols))
    return out
