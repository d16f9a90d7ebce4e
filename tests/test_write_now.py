"""
L{restygate._compat.write_now}: a line to another restygate process goes
into the pipe at once, not when the reactor's turn ends; what the pipe
cannot take is queued, and nothing overtakes it.
"""

from __future__ import annotations

import os
from typing import List

from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.trial.unittest import TestCase

from restygate._compat import write_now
from tests.support.harness import eventually


class WriteNowTests(TestCase):
    def setUp(self) -> None:
        self.read_end, write_end = os.pipe()
        quiet_in, self.quiet_out = os.pipe()
        os.set_blocking(self.read_end, False)
        self.stdio = StandardIO(Protocol(), stdin=quiet_in, stdout=write_end, reactor=reactor)  # type: ignore[call-arg]
        self.addCleanup(os.close, self.read_end)
        self.addCleanup(os.close, self.quiet_out)
        self.addCleanup(self.stdio.loseConnection)

    def drain(self) -> bytes:
        chunks: List[bytes] = []
        while True:
            try:
                chunk = os.read(self.read_end, 1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    async def test_in_the_pipe_before_the_turn_ends(self) -> None:
        write_now(self.stdio, b"want 1 dc1 web\n")
        # No reactor turn has run since.
        self.assertEqual(self.drain(), b"want 1 dc1 web\n")

    async def test_what_the_pipe_cannot_take_waits_and_nothing_overtakes_it(self) -> None:
        big = b"x" * (4 << 20)
        write_now(self.stdio, big)
        write_now(self.stdio, b"then this\n")
        got = [self.drain()]
        self.assertLess(len(got[0]), len(big))

        def all_in() -> bool:
            got.append(self.drain())
            return sum(map(len, got)) == len(big) + len(b"then this\n")

        await eventually(all_in, timeout=10)
        self.assertEqual(b"".join(got), big + b"then this\n")
