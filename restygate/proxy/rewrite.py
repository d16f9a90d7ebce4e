"""
Response headers that name a place, rewritten to stay behind the gateway.

An instance answering C{/<dc>/<service>/x} thinks it is answering C{/x}:
its redirects (C{Location}, C{Content-Location}) and cookie paths name its
own paths, or its own address.  With C{rewrite-location} (on by default,
like nginx's C{proxy_redirect default}) a path C{/x} becomes
C{/<dc>/<service>/x} and an absolute URL at the instance's own address
becomes the gateway's URL (the client's C{Host}) under the same prefix;
anything else (another site, a relative reference) is left alone.  With
C{rewrite-cookie-path} a C{Set-Cookie}'s C{Path=/x} becomes
C{Path=/<dc>/<service>/x}.
"""

from __future__ import annotations

import re
from typing import Optional

from restygate.config import Config
from restygate.discovery.model import Instance
from restygate.proxy.routing import Route

__all__ = ["Rewriter", "rewriter_for"]

_PATH_ATTRIBUTE = re.compile(rb"(;\s*path\s*=\s*)(/[^;]*)", re.IGNORECASE)
_DEFAULT_PORTS = {b"http": 80, b"https": 443}


class Rewriter:
    """
    Rewrites one response's headers for one route and instance.

    @param base: the gateway's own C{scheme://host[:port]} as the client
        reached it, or L{None} when the client sent no C{Host}.
    """

    def __init__(self, prefix: bytes, instance: Instance, base: Optional[bytes],
                 location: bool, cookie_path: bool) -> None:
        self._prefix = prefix
        self._instance = instance
        self._base = base
        self.location = location
        self.cookie_path = cookie_path

    def __call__(self, name: bytes, value: bytes) -> bytes:
        """C{value} of the header C{name} (lowercase), rewritten if it names a place."""
        if name == b"set-cookie":
            return _PATH_ATTRIBUTE.sub(lambda m: m.group(1) + self._prefix + m.group(2), value) \
                if self.cookie_path else value
        if not self.location:
            return value
        if value.startswith(b"/") and not value.startswith(b"//"):
            return self._prefix + value
        scheme, sep, rest = value.partition(b"://")
        if not sep or scheme.lower() not in _DEFAULT_PORTS or self._base is None:
            return value
        netloc, slash, path = rest.partition(b"/")
        if not self._is_instance(netloc.lower(), scheme.lower()):
            return value
        return self._base + self._prefix + slash + path

    def _is_instance(self, netloc: bytes, scheme: bytes) -> bool:
        instance = self._instance
        host = instance.address.encode("ascii").lower()
        if ":" in instance.address:
            host = b"[" + host + b"]"
        if netloc == b"%s:%d" % (host, instance.port):
            return True
        return netloc == host and _DEFAULT_PORTS[scheme] == instance.port


def rewriter_for(config: Config, route: Optional[Route], instance: Optional[Instance],
                 secure: bool, host: Optional[bytes]) -> Optional[Rewriter]:
    """What rewrites a response from C{instance} for C{route}, if anything does."""
    if not (config.rewrite_location or config.rewrite_cookie_path) or instance is None or route is None:
        return None
    base = (b"https://" if secure else b"http://") + host if host else None
    return Rewriter(route.prefix.encode("ascii"), instance, base, config.rewrite_location, config.rewrite_cookie_path)
