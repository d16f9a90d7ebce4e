"""
What Consul discovery shows operators (through L{restygate.ops.views}):
its watches, and its load on the agent against the caps.
"""

from __future__ import annotations

from typing import Collection, List, Mapping, Optional

from restygate.discovery.consul.feed import ChangeFeed
from restygate.discovery.consul.gate import ConsulGate
from restygate.discovery.consul.names import ConsulNames
from restygate.discovery.consul.outage import Outage
from restygate.discovery.consul.watch import Watcher
from restygate.ops.views import ConsulLoad, FeedState, Watched

__all__ = ["watched", "load"]


def watched(watchers: Collection[Watcher]) -> List[Watched]:
    """
    Each watch as operators see it, sorted by (dc, service).
    """
    found = []
    for watcher in sorted(watchers, key=lambda w: (w.dc, w.service)):
        snapshot = watcher.snapshot
        found.append(
            Watched(
                watcher.dc, watcher.service,
                instances=snapshot.instances if snapshot is not None else (),
                synced=snapshot is not None,
                index=watcher.index,
                last_success=watcher.last_success,
                last_error=watcher.last_error,
                errors=watcher.errors,
            )
        )
    return found


def load(
    gate: Optional[ConsulGate],
    watchers: Collection[Watcher],
    max_watched: int,
    evicted: int,
    names: Optional[ConsulNames],
    feeds: Mapping[str, ChangeFeed],
    last_contact: Mapping[str, float],
    outage: Outage,
) -> ConsulLoad:
    """
    The load of discovery on the agent, against its caps.
    """
    return ConsulLoad(
        connections=gate.in_flight if gate is not None else 0,
        max_connections=gate.limit if gate is not None else 0,
        peak_connections=gate.peak if gate is not None else 0,
        watches=len(watchers),
        max_watches=max_watched,
        dedicated=sum(1 for w in watchers if w.blocking),
        evicted=evicted,
        name_misses=names.misses if names is not None else 0,
        feeds=tuple(
            FeedState(dc, feed.lag(), last_contact.get(feed.dc, 0.0), feed.refetches)
            for dc, feed in sorted(feeds.items())
        ),
        failing=len(outage.failing),
    )
