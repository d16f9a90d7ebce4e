"""
The daemon's side of the discovery channel (L{restygate.discovery.channel}):
with workers, the daemon runs Consul discovery once for the whole host and
hands every worker the snapshots it routes with, so Consul load, agent
connections and discovery memory do not grow with the worker count.

A worker holds only the snapshots it asked for: its lookup for a pair it
has no snapshot of comes here as C{want} and is answered by the daemon's
discovery, which starts the watch if Consul knows the name; from then on
each snapshot of that pair the daemon's discovery replaces goes to that
worker, numbered (versioned) so a worker never takes an older one for a
newer.  What a worker slot asked for outlives its process: a worker that
restarts gets, at once, the current snapshots of every pair its slot had.
What workers served from their views comes back as C{used}, so the daemon's
watches are not stopped as idle; a pair no longer watched is dropped from
every worker that held it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Set, Tuple

from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from restygate.config import Config
from restygate.discovery.channel import encode_error, encode_snapshot
from restygate.discovery.consul.assemble import consul_discovery
from restygate.discovery.consul.client import ConsulClient
from restygate.discovery.consul.source import ConsulDiscovery
from restygate.discovery.model import Snapshot
from restygate.ops.consulmetrics import ConsulLoadCollector, WatchCollector

__all__ = ["DiscoveryHub", "make_hub"]

log = Logger()

_Key = Tuple[str, str]
# A worker's count of requests for one pair in one report, at most (the count
# only ranks watches; a bogus huge one must not pin a place for hours).
_MAX_HITS = 1_000_000


class Worker(Protocol):
    """
    What the hub needs of a worker process: its slot, and a way to send it a line.
    """

    @property
    def index(self) -> int: ...

    def send(self, line: bytes) -> None: ...


class DiscoveryHub(Service):
    """
    Runs C{discovery} (and closes C{client} when stopping) for C{workers()}.
    """

    def __init__(
        self, discovery: ConsulDiscovery, client: ConsulClient, workers: Callable[[], Iterable[Worker]],
        clock: IReactorTime,
    ) -> None:
        self.discovery = discovery
        self._client = client
        self._clock = clock
        self._workers = workers
        self._version = 0
        self._view: Dict[_Key, Tuple[int, Snapshot]] = {}
        # The pairs each worker slot asked for (want), by slot: a subset of
        # the view, so bounded by the pairs watched.
        self._wanted: Dict[int, Set[_Key]] = {}
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
        The parent's series of this discovery: its load on Consul and its
        watches (workers' views have none).
        """
        return [ConsulLoadCollector(self.discovery), WatchCollector(self.discovery, self._clock)]

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
            wanted = self._wanted.get(worker.index)
            if wanted is not None and key in wanted:
                worker.send(line)
                self.sent += 1
        if snapshot is None:
            for wanted in self._wanted.values():
                wanted.discard(key)

    def _listed(self) -> None:
        # Consul answers: every worker's discovery is ready (its /readyz).
        if not self._ready:
            self._ready = True
            for worker in self._workers():
                worker.send(b"ready\n")

    def worker_up(self, worker: Worker) -> None:
        """
        A worker started: whether discovery is ready, and the current
        snapshots of what its slot asked for, at once.
        """
        if self._ready:
            worker.send(b"ready\n")
        for key in sorted(self._wanted.get(worker.index, ())):
            held = self._view.get(key)
            if held is not None:
                worker.send(f"snap {encode_snapshot(*held)}\n".encode("utf-8"))

    def from_worker(self, worker: Worker, line: bytes) -> None:
        """
        A C{want} or C{used} line from C{worker}.
        """
        fields = line.decode("utf-8", "replace").split()
        if fields[:1] == ["want"] and len(fields) == 4 and fields[1].isdigit():
            number, dc, service = fields[1:]
            # The worker gets this pair's snapshots from now on (they are
            # sent it from the first one on), unless the lookup fails: only
            # names Consul knows stay, and a pair no longer watched leaves.
            key = (dc.lower(), service.lower())
            self._wanted.setdefault(worker.index, set()).add(key)
            answer = self.discovery.lookup(dc, service)
            answer.addCallbacks(
                self._found, self._failed, callbackArgs=(worker, number, self._version),
                errbackArgs=(worker, number, key),
            )
        elif fields[:1] == ["used"]:
            for name in fields[1:]:
                dc, _, rest = name.partition("/")
                service, _, count = rest.partition("/")
                hits = min(int(count), _MAX_HITS) if count.isdigit() else 1
                # Counts the requests and keeps the watch among the most
                # recent; one dropped meanwhile is started again.
                if not self.discovery.requested(dc, service, hits):
                    self.discovery.lookup(dc, service).addErrback(lambda _: None)
        else:
            log.warn("unexpected line from a worker on the discovery channel: {line!r:.100}", line=line)

    def _found(self, snapshot: Snapshot, worker: Worker, number: str, asked_at: int) -> None:
        key = (snapshot.dc.lower(), snapshot.service.lower())
        held = self._view.get(key)
        if held is not None and held[1] is snapshot and held[0] > asked_at:
            # Sent to this worker after it asked (a `snap` line, before this
            # answer on the same pipe): the version says which.
            worker.send(f'answer {number} {{"version":{held[0]}}}\n'.encode("utf-8"))
            return
        version = held[0] if held is not None and held[1] is snapshot else 0
        worker.send(f'answer {number} {{"snapshot":{encode_snapshot(version, snapshot)}}}\n'.encode("utf-8"))

    def _failed(self, failure: Failure, worker: Worker, number: str, key: _Key) -> Any:
        self._wanted.get(worker.index, set()).discard(key)
        error = failure.value if failure.value is not None else Exception("discovery failed")
        worker.send(f"answer {number} {encode_error(error)}\n".encode("utf-8"))


def make_hub(config: Config, reactor: Any, workers: Callable[[], Iterable[Worker]]) -> DiscoveryHub:
    """
    Consul discovery for C{config}, run for C{workers()}.
    """
    discovery, client = consul_discovery(config, reactor)
    return DiscoveryHub(discovery, client, workers, reactor)
