"""
The access log: one event per request, through twisted.logger, so it goes
where the daemon's log goes (stdout under C{twistd -n}, journald under
systemd).
"""

from __future__ import annotations

from twisted.logger import Logger

from restygate.observe import Completed

__all__ = ["log_access"]

access = Logger(namespace="restygate.access")


def log_access(c: Completed) -> None:
    access.info(
        '{client} "{method} {uri} {proto}" {status} {size} {duration_ms:.1f}ms '
        "upstream={upstream} dc={dc} service={service} retries={retries}",
        client=c.client,
        method=c.method,
        uri=c.uri,
        proto=c.proto,
        status=c.status,
        size=c.bytes_sent,
        duration_ms=c.duration * 1000,
        upstream=c.upstream or "-",
        dc=c.dc or "-",
        service=c.service or "-",
        retries=c.retries,
    )
