"""
A scripted upstream for wire-level tests: it reads each request's head (and
a C{Content-Length} body) off the socket and answers with exactly the bytes
a test gives, so a test can make an instance say what no HTTP library would
(1xx answers, trailers, headers named in C{Connection}, stray bytes while
idle, a 101...).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

# (head of the request, its body, its connection's number) -> bytes to send.
Answer = Callable[[bytes, bytes, int], bytes]


class ScriptedUpstream:
    """
    Listens on 127.0.0.1 and answers every request with C{answer(...)}.

    @ivar requests: (head, body, connection number) of each request, in order.
    @ivar connections: connections accepted so far.
    """

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: List[Tuple[bytes, bytes, int]] = []
        self.connections = 0
        self.open: List[Protocol] = []
        self.port: Optional[IListeningPort] = None

    def listen(self, reactor: Any) -> int:
        factory = Factory.forProtocol(lambda: _Scripted(self))
        factory.noisy = False
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        assert self.port is not None
        port: int = self.port.getHost().port
        return port

    async def stop(self) -> None:
        for protocol in list(self.open):
            transport: Any = protocol.transport
            transport.abortConnection()
        if self.port is not None:
            await self.port.stopListening()


class _Scripted(Protocol):
    def __init__(self, server: ScriptedUpstream) -> None:
        self._server = server
        self._buffer = b""
        self.number = 0

    def connectionMade(self) -> None:
        self._server.connections += 1
        self.number = self._server.connections
        self._server.open.append(self)

    def connectionLost(self, reason: Any = None) -> None:
        self._server.open.remove(self)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, _, rest = self._buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            body, self._buffer = rest[:length], rest[length:]
            self._server.requests.append((head, body, self.number))
            reply = self._server.answer(head, body, self.number)
            transport: Any = self.transport
            if reply.endswith(b"<close>"):
                transport.write(reply[: -len(b"<close>")])
                transport.loseConnection()
                return
            transport.write(reply)
