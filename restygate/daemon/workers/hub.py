"""
The daemon's side of the discovery channel (L{restygate.discovery.channel}):
with workers, the daemon runs Consul discovery once for the whole host and
hands every worker the snapshots it routes with, so Consul load, agent
connections and discovery memory do not grow with the worker count.

Each snapshot the daemon's discovery replaces goes to every worker that is
up, numbered (versioned) so a worker never takes an older one for a newer;
a worker that starts or restarts gets the whole current view at once.  A
worker's lookup for a pair it has no snapshot of comes here as C{want} and is
answered by the daemon's discovery, which starts the watch if Consul knows
the name; what workers served from their views comes back as C{used}, so
the daemon's watches are not stopped as idle.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple

from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from restygate.config import Config
from restygate.discovery.channel import encode_error, encode_snapshot
from restygate.discovery.consul.assemble import consul_discovery
from restygate.discovery.consul.client import ConsulClient
from restygate.discovery.consul.source import ConsulDiscovery
from restygate.discovery.model import Snapshot
from restygate.ops.consulmetrics import ConsulLoadCollector

__all__ = ["DiscoveryHub", "make_hub"]

log = Logger()


class Worker(Protocol):
    """
    What the hub needs of a worker process: a way to send it a line.
    """

    def send(self, line: bytes) -> None: ...


class DiscoveryHub(Service):
    """
    Runs C{discovery} (and closes C{client} when stopping) for C{workers()}.
    """

    def __init__(
        self, discovery: ConsulDiscovery, client: ConsulClient, workers: Callable[[], Iterable[Worker]]
    ) -> None:
        self.discovery = discovery
        self._client = client
        self._workers = workers
        self._version = 0
        self._view: Dict[Tuple[str, str], Tuple[int, Snapshot]] = {}
        discovery.listeners.append(self._changed)
        if discovery.names is not None:
            discovery.names.listed_listeners.append(self._listed)
        self._ready = False
        self.sent = 0

    def startService(self) -> None:
        super().startService()
        self.discovery.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        stopped = self.discovery.stopService()
        stopped.addCallback(lambda _: self._client.close())
        return stopped

    def reconfigure(self, config: Config) -> None:
        self.discovery.reconfigure(config)

    def collectors(self) -> List[Collector]:
        """
        The parent's series of this discovery (its load on Consul).
        """
        return [ConsulLoadCollector(self.discovery)]

    def _changed(self, dc: str, service: str, snapshot: Optional[Snapshot]) -> None:
        key = (dc.lower(), service.lower())
        if snapshot is None:
            self._view.pop(key, None)
            line = f"drop {json.dumps([dc, service])}\n".encode("utf-8")
        else:
            self._version += 1
            self._view[key] = (self._version, snapshot)
            line = f"snap {encode_snapshot(self._version, snapshot)}\n".encode("utf-8")
        for worker in self._workers():
            worker.send(line)
            self.sent += 1

    def _listed(self) -> None:
        # Consul answers: every worker's discovery is ready (its /readyz).
        if not self._ready:
            self._ready = True
            for worker in self._workers():
                worker.send(b"ready\n")

    def worker_up(self, worker: Worker) -> None:
        """
        A worker started: whether discovery is ready, and the whole current view, at once.
        """
        if self._ready:
            worker.send(b"ready\n")
        for version, snapshot in self._view.values():
            worker.send(f"snap {encode_snapshot(version, snapshot)}\n".encode("utf-8"))

    def from_worker(self, worker: Worker, line: bytes) -> None:
        """
        A C{want} or C{used} line from C{worker}.
        """
        fields = line.decode("utf-8", "replace").split()
        if fields[:1] == ["want"] and len(fields) == 4 and fields[1].isdigit():
            number, dc, service = fields[1:]
            answer = self.discovery.lookup(dc, service)
            answer.addCallbacks(
                self._found, self._failed, callbackArgs=(worker, number), errbackArgs=(worker, number)
            )
        elif fields[:1] == ["used"]:
            for name in fields[1:]:
                dc, _, service = name.partition("/")
                # Marks the watch as used (and keeps it among the most recent).
                self.discovery.lookup(dc, service).addErrback(lambda _: None)
        else:
            log.warn("unexpected line from a worker on the discovery channel: {line!r:.100}", line=line)

    def _found(self, snapshot: Snapshot, worker: Worker, number: str) -> None:
        held = self._view.get((snapshot.dc.lower(), snapshot.service.lower()))
        if held is not None and held[1] is snapshot:
            # Every worker has it already (a `snap` line, sent before this
            # answer on the same pipe): the version says which.
            worker.send(f'answer {number} {{"version":{held[0]}}}\n'.encode("utf-8"))
            return
        worker.send(f'answer {number} {{"snapshot":{encode_snapshot(0, snapshot)}}}\n'.encode("utf-8"))

    def _failed(self, failure: Failure, worker: Worker, number: str) -> Any:
        error = failure.value if failure.value is not None else Exception("discovery failed")
        worker.send(f"answer {number} {encode_error(error)}\n".encode("utf-8"))


def make_hub(config: Config, reactor: Any, workers: Callable[[], Iterable[Worker]]) -> DiscoveryHub:
    """
    Consul discovery for C{config}, run for C{workers()}.
    """
    discovery, client = consul_discovery(config, reactor)
    return DiscoveryHub(discovery, client, workers)
