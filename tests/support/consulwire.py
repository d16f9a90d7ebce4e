"""
A test case base for the Consul test server's wire tests: a server on a
loopback port and a non-persistent client pool, both cleaned up.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from restygate.testing.consul import ConsulServer


class ConsulWireCase(unittest.TestCase):
    def make_server(self, **kwargs: Any) -> ConsulServer:
        server = ConsulServer(reactor, jitter=False, **kwargs)
        port = server.listen(reactor)
        self.addCleanup(port.stopListening)
        self.addCleanup(server.disconnect_all)
        return server

    def pool(self) -> HTTPConnectionPool:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return pool
