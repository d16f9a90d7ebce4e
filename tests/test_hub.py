"""
Tests for L{restygate.daemon.workers.hub}: the daemon's discovery, run
against the Consul test server over real sockets, sends each worker slot
only the snapshots it asked for, and a restarted worker those of its slot.
"""

from __future__ import annotations

import json
from typing import List

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from restygate.daemon.load import load
from restygate.daemon.workers.hub import make_hub
from restygate.testing.consul import ConsulServer
from tests.support.harness import eventually


class _Worker:
    """
    A worker slot as the hub sees it: the lines sent to it are kept.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.lines: List[str] = []

    def send(self, line: bytes) -> None:
        self.lines.append(line.decode("utf-8"))

    def snapshots(self) -> List[str]:
        """The services of the snapshots it was sent, pushed or answered."""
        found = []
        for line in self.lines:
            verb, _, rest = line.partition(" ")
            if verb == "snap":
                found.append(json.loads(rest)["service"])
            elif verb == "answer":
                body = json.loads(rest.partition(" ")[2])
                if "snapshot" in body:
                    found.append(body["snapshot"]["service"])
        return found


class SnapshotsAskedForTests(TestCase):
    async def test_each_worker_holds_what_it_asked_for(self) -> None:
        consul = ConsulServer(reactor, jitter=False)
        port = consul.listen(reactor)
        self.addCleanup(port.stopListening)
        self.addCleanup(consul.disconnect_all)
        for service in ("web", "api"):
            consul.register_service("dc1", "n1", "127.0.0.1", service, 8000, service_id=service)
        config = load({"consul": consul.address, "consul-wait": 30, "admin": "none"}, {})
        first, second = _Worker(0), _Worker(1)
        workers = [first, second]
        hub = make_hub(config, reactor, lambda: list(workers))
        hub.startService()
        self.addCleanup(hub.stopService)

        hub.from_worker(first, b"want 1 dc1 web")
        hub.from_worker(second, b"want 1 dc1 API")
        # A made-up name is answered and subscribes nobody to anything.
        hub.from_worker(second, b"want 2 dc1 ghost")
        def answers() -> List[List[str]]:
            return [[line for line in w.lines if line.startswith("answer ")] for w in workers]

        await eventually(lambda: [len(a) for a in answers()] == [1, 2])
        self.assertEqual((first.snapshots(), second.snapshots()), (["web"], ["api"]))
        self.assertEqual(sum("unknown_service" in a for a in answers()[1]), 1)

        # A change reaches only the worker that asked for that service.
        consul.register_service("dc1", "n2", "127.0.0.2", "web", 8000, service_id="web-2")
        await eventually(lambda: len(first.snapshots()) == 2)
        self.assertEqual((first.snapshots(), second.snapshots()), (["web", "web"], ["api"]))
        self.assertEqual(len(json.loads(first.lines[-1].partition(" ")[2])["instances"]), 2)

        # Slot 0's worker restarts: the new one gets its slot's view at once, nothing more.
        workers[0] = restarted = _Worker(0)
        hub.worker_up(restarted)
        self.assertEqual(restarted.snapshots(), ["web"])

    async def test_workers_report_how_often_they_served_a_pair(self) -> None:
        """
        A worker's C{used} report counts its requests on the daemon's watch,
        which the ranking of dedicated queries reads; a count past reason
        is capped.
        """
        consul = ConsulServer(reactor, jitter=False)
        port = consul.listen(reactor)
        self.addCleanup(port.stopListening)
        self.addCleanup(consul.disconnect_all)
        consul.register_service("dc1", "n1", "127.0.0.1", "web", 8000, service_id="web")
        config = load({"consul": consul.address, "consul-wait": 30, "admin": "none"}, {})
        worker = _Worker(0)
        hub = make_hub(config, reactor, lambda: [worker])
        hub.startService()
        self.addCleanup(hub.stopService)
        hub.from_worker(worker, b"want 1 dc1 web")
        await eventually(lambda: any(line.startswith("answer ") for line in worker.lines))
        watch = hub.discovery.watchers[("dc1", "web")]
        before = watch.hits
        hub.from_worker(worker, b"used dc1/web/7 dc1/WEB/5")
        self.assertEqual(watch.hits - before, 12)
        hub.from_worker(worker, b"used dc1/web/99999999999")
        self.assertEqual(watch.hits - before, 12 + 1_000_000)
