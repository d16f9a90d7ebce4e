"""
The routing contract: which request targets the gateway serves and how they
map to a datacenter, a service and the path sent upstream.

C{/<dc>/<service>} and C{/<dc>/<service>/<rest>} go to C{/<rest>} (C{/} when
empty) on an instance of C{<service>} in C{<dc>}; the query string travels
byte for byte.  A C{Host} matching a C{host-route} template
(C{{service}.{dc}.gw.example.com}) names the service and datacenter itself,
and the whole target goes upstream, nothing stripped.  Names are checked against Consul's allowed characters before
they go anywhere near a Consul URL, and on the raw, still percent-encoded
path, so an encoded C{/}, C{?} or NUL can never smuggle itself into a name.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, Final, List, Optional, Pattern, Tuple

__all__ = ["Route", "RouteError", "parse_target", "host_matches", "route_request", "host_route"]

# Consul's service and datacenter names: letters, digits, '-', '_', '.'.
_NAME: Final = re.compile(rb"[A-Za-z0-9_.\-]{1,255}")

# host[:port]: a registered name, an IPv4 address or a bracketed IPv6 one,
# and nothing else (no userinfo, path, spaces or controls).
_HOST: Final = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=%-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")


class RouteError(Exception):
    """
    The request target cannot be routed; carries the HTTP status to answer.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Route:
    """
    Where a request goes: the datacenter, the service, and the request
    target (path and query, exactly as the client sent them) for the upstream.
    """

    # A plain class, not a named tuple: one is made per request, and
    # compiled (setup.py) it is a native one, made and read without Python
    # code (a named tuple's constructor is Python) or lookups by name.
    __slots__ = ("dc", "service", "target", "stripped")

    def __init__(self, dc: str, service: str, target: bytes, stripped: Optional[str] = None) -> None:
        self.dc = dc
        self.service = service
        self.target = target
        # The prefix the client's path had (X-Forwarded-Prefix): "" for a host
        # route, which strips none; None for this route's own /<dc>/<service>.
        self.stripped = stripped

    def _fields(self) -> Tuple[str, str, bytes, Optional[str]]:
        return self.dc, self.service, self.target, self.stripped

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Route) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "Route(dc={!r}, service={!r}, target={!r}, stripped={!r})".format(*self._fields())

    def __str__(self) -> str:
        # How log lines name it: "dc1/web".
        return f"{self.dc}/{self.service}"

    @property
    def prefix(self) -> str:
        return f"/{self.dc}/{self.service}" if self.stripped is None else self.stripped


# Names already checked, as every request names its datacenter and service
# again; bounded, since clients choose what they name.
_CHECKED: Final[Dict[bytes, str]] = {}
_CHECKED_KEPT: Final = 1024


def _name(kind: str, raw: bytes) -> str:
    name = _CHECKED.get(raw)
    if name is not None:
        return name
    if not _NAME.fullmatch(raw) or b".." in raw:
        raise RouteError(
            400,
            f"invalid {kind} name: use letters, digits, '-', '_' and '.' only",
        )
    if len(_CHECKED) >= _CHECKED_KEPT:
        _CHECKED.clear()
    name = _CHECKED[raw] = raw.decode("ascii")
    return name


def parse_target(uri: bytes) -> Route:
    """
    Split an origin-form request target into a L{Route}.

    @raise RouteError: 400 for a target that is not origin-form or has bad
        names, 404 when it does not name both a datacenter and a service.
    """
    path, question, query = uri.partition(b"?")
    if not path.startswith(b"/"):
        raise RouteError(400, "request target must be a path (origin-form)")
    parts = path.split(b"/", 3)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        raise RouteError(404, "no route: expected /<datacenter>/<service>/<path>")
    # Names seen before are looked up here, without a call each.
    dc = _CHECKED.get(parts[1]) or _name("datacenter", parts[1])
    service = _CHECKED.get(parts[2]) or _name("service", parts[2])
    rest = b"/" + parts[3] if len(parts) == 4 else b"/"
    return Route(dc, service, rest + question + query)


def split_host(host: bytes) -> bytes:
    """
    The host part of a Host header, lowercased, without port or final dot.
    """
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    return host.rsplit(b":", 1)[0].rstrip(b".")


def host_matches(host: bytes, names: Tuple[str, ...]) -> bool:
    """
    Whether a Host header names one of the configured server names; a name
    C{*.example.com} matches any host below C{example.com} but not itself.
    """
    wanted = split_host(host).decode("ascii", "replace")
    for name in names:
        if name.startswith("*."):
            if wanted.endswith(name[1:]) and len(wanted) > len(name) - 1:
                return True
        elif wanted == name:
            return True
    return False


@lru_cache(maxsize=64)
def _template(template: str) -> Pattern[str]:
    # Each placeholder is one whole DNS label (validated with the config).
    literal = [re.escape(part) for part in re.split(r"\{(?:service|dc)\}", template)]
    names = re.findall(r"\{(service|dc)\}", template)
    pattern = literal[0] + "".join(f"(?P<{name}>[a-z0-9_-]{{1,63}}){rest}" for name, rest in zip(names, literal[1:]))
    return re.compile(pattern)


def host_route(host: bytes, templates: Tuple[str, ...]) -> Optional[Tuple[str, str]]:
    """
    The (datacenter, service) the first matching C{host-route} template
    reads from a C{Host} header (port ignored), or L{None}.
    """
    wanted = split_host(host).decode("ascii", "replace")
    for template in templates:
        match = _template(template).fullmatch(wanted)
        if match is not None:
            return match.group("dc"), match.group("service")
    return None


def route_request(
    target: bytes, hosts: List[bytes], server_names: Tuple[str, ...], host_routes: Tuple[str, ...] = ()
) -> Route:
    """
    Where a request goes, given its target and its C{Host} values; checks
    the C{Host} first (RFC 9112: one, and a valid one, or 400), then the
    host routes (the whole target goes to the service the host names), then
    the configured server names (404), then the target (L{parse_target}).
    """
    if len(hosts) > 1:
        raise RouteError(400, "more than one Host header")
    if hosts and _HOST.fullmatch(hosts[0]) is None:
        raise RouteError(400, "invalid Host header")
    named = host_route(hosts[0], host_routes) if host_routes and hosts else None
    if named is not None:
        if not target.startswith(b"/"):
            raise RouteError(400, "request target must be a path (origin-form)")
        dc, service = named
        return Route(_name("datacenter", dc.encode()), _name("service", service.encode()), target, "")
    if server_names and not host_matches(hosts[0] if hosts else b"", server_names):
        raise RouteError(404, "unknown server name")
    return parse_target(target)
