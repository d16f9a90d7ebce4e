"""
Upgrade through the gateway: a real C{websockets} client and server talking
through restygate's tunnel, each beside the reactor in a thread of its own
(the server on websockets' threaded API, the client on its asyncio API in
its own event loop: under PyPy 3.9 the threaded client's close, a
C{Thread.join} with a timeout, now and then raises "cannot release
un-acquired lock" from PyPy's threading module), the tunnel's idle timeout,
gauge and access-log line, and a refused Upgrade relayed as the plain answer
it is.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Tuple

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from tests.support.harness import GatewayRig, captured_log, eventually, raw_connect, reactor
from tests.support.wire import ScriptedUpstream


# An upper bound on each wait, not a speed: a loaded machine running the
# suite under PyPy (JIT still cold) took more than 5 s for the 256 KiB echo.
RECV_TIMEOUT = 30


def _echo(connection: ServerConnection) -> None:
    for message in connection:
        connection.send(message)


class WebSocketTests(TestCase):
    def websocket_server(self, rig: GatewayRig) -> None:
        server = serve(_echo, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(lambda: deferToThread(lambda: (server.shutdown(), thread.join(5))))
        port = server.socket.getsockname()[1]
        rig.consul.register_service("dc1", "node-ws", "127.0.0.1", "ws", port, service_address="127.0.0.1")

    async def test_echo_through_the_tunnel(self) -> None:
        rig = GatewayRig(self)
        self.websocket_server(rig)
        log = captured_log(self)
        engine = rig.gateway.engine
        big = os.urandom(256 * 1024)  # incompressible: permessage-deflate is on

        async def talk() -> Tuple[Any, Any, int]:
            async with connect(f"ws://127.0.0.1:{rig.port}/dc1/ws/chat", open_timeout=RECV_TIMEOUT) as ws:
                await ws.send("hello")
                first = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
                open_tunnels = engine.tunnels
                await ws.send(big)
                second = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
            return first, second, open_tunnels

        first, second, open_tunnels = await deferToThread(asyncio.run, talk())
        self.assertEqual((first, second, open_tunnels), ("hello", big, 1))
        await eventually(lambda: engine.tunnels == 0)
        [line] = [line for line in log if '"GET /dc1/ws/chat HTTP/1.1" 101 ' in line]
        # Bytes down (after the status) and, at the end, bytes up: each at least the big frame.
        fields = line.split()
        self.assertGreater(int(fields[fields.index("101") + 1]), len(big))
        self.assertGreater(int(fields[-1]), len(big))

    async def test_idle_tunnel_is_closed(self) -> None:
        rig = GatewayRig(self, tunnel_idle_timeout=0.2)
        self.websocket_server(rig)
        log = captured_log(self)

        async def idle() -> bool:
            url = f"ws://127.0.0.1:{rig.port}/dc1/ws/"
            async with connect(url, open_timeout=RECV_TIMEOUT, ping_interval=None) as ws:
                await ws.send("hi")
                await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
                try:
                    await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
                except ConnectionClosed:
                    return True
            return False

        self.assertTrue(await deferToThread(asyncio.run, idle()))
        await eventually(lambda: rig.gateway.engine.tunnels == 0)
        # Closed by the gateway's idle timeout, not by either end.
        self.assertTrue(any("idle for 0.2s; closed" in line for line in log), log)


class RefusedUpgradeTests(TestCase):
    async def test_non_101_answer_is_relayed(self) -> None:
        rig = GatewayRig(self)
        upstream = ScriptedUpstream(lambda h, b, n: b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
        port = upstream.listen(reactor)
        self.addCleanup(upstream.stop)
        rig.consul.register_service("dc1", "node-s", "127.0.0.1", "web", port, service_address="127.0.0.1")
        client = await raw_connect(rig.port)
        client.transport.write(
            b"GET /dc1/web/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        await client.closed
        self.assertTrue(client.received.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), client.received)
        self.assertTrue(client.received.endswith(b"\r\n\r\nnope"))
        [(head, _, _)] = upstream.requests
        self.assertIn(b"\r\nUpgrade: websocket", head)
        self.assertIn(b"\r\nConnection: upgrade", head)
