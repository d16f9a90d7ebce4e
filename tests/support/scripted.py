"""
A health source whose answers each test gives by hand, standing in for the
Consul client under a L{Watcher} driven by a L{Clock}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from restygate.discovery.consul.client import HealthAnswer
from restygate.discovery.model import Instance


@dataclass
class Query:
    """
    One health query the watcher made, answered when the test says so.
    """

    dc: str
    service: str
    tags: Tuple[str, ...]
    index: int
    wait: float
    urgent: bool = False
    prompt: bool = False
    cancelled: bool = False
    deferred: Deferred[HealthAnswer] = field(init=False)

    def __post_init__(self) -> None:
        self.deferred = Deferred(self._cancel)

    def _cancel(self, deferred: Deferred[HealthAnswer]) -> None:
        self.cancelled = True

    def answer(self, index: int, *instances: Instance) -> None:
        self.deferred.callback(HealthAnswer(index, tuple(instances)))

    def fail(self, error: Exception) -> None:
        self.deferred.errback(Failure(error))


class ScriptedSource:
    """
    A L{restygate.discovery.consul.watch.HealthSource} that records each query and leaves
    it unanswered until the test answers it.
    """

    def __init__(self) -> None:
        self.queries: List[Query] = []

    def health_service(
        self, dc: str, service: str, tags: Sequence[str], index: int, wait: float, urgent: bool = False,
        prompt: bool = False,
    ) -> Deferred[HealthAnswer]:
        query = Query(dc, service, tuple(tags), index, wait, urgent, prompt)
        self.queries.append(query)
        return query.deferred

    def pending(self) -> List[Query]:
        return [q for q in self.queries if not q.deferred.called]

    @property
    def last(self) -> Query:
        return self.queries[-1]
