"""
The metrics of Consul discovery's load (L{IConsulLoadView}): connections to
the agent in use against C{consul-max-connections}, watches against
C{max-watched-services}, and per datacenter the change feed's lag and how
far behind the leader its answers are (C{X-Consul-LastContact}); and each
watch's index, age and errors.  With workers, these are the daemon's series
(it runs discovery once for the host); a worker's view has no watches.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime

from restygate.ops.views import IConsulLoadView, IDiscoveryView

__all__ = ["ConsulLoadCollector", "WatchCollector"]


class WatchCollector(Collector):
    """
    Every Consul watch's series, erring or without instances too: only names
    Consul knows are watched, and at most max-watched-services.
    """

    def __init__(self, view: IDiscoveryView, clock: IReactorTime) -> None:
        self._view = view
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        now = self._clock.seconds()
        labels = ["dc", "service"]
        index = GaugeMetricFamily("restygate_watch_index", "Consul index of a watch's last answer.", labels=labels)
        age = GaugeMetricFamily(
            "restygate_watch_last_success_age_seconds",
            "Seconds since Consul last answered a watch (+Inf before its first answer).",
            labels=labels,
        )
        errors = GaugeMetricFamily(
            "restygate_watch_errors", "Consul queries of a watch failed in a row.", labels=labels
        )
        for w in self._view.watched():
            if w.index is None:
                continue
            key = [w.dc, w.service]
            index.add_metric(key, w.index)
            # Never answered is as stale as can be: an alert on the age
            # fires instead of missing an absent series.
            age.add_metric(key, float("inf") if w.last_success is None else now - w.last_success)
            errors.add_metric(key, w.errors)
        yield from (index, age, errors)


class ConsulLoadCollector(Collector):
    """
    Reads the load when Prometheus scrapes.
    """

    def __init__(self, view: IConsulLoadView) -> None:
        self._view = view

    def collect(self) -> Iterable[Metric]:
        load = self._view.consul_load()
        gauges = [
            ("restygate_consul_connections", "Requests to the Consul agent in flight (each holds a connection).",
             load.connections),
            ("restygate_consul_max_connections", "consul-max-connections: the cap on connections to the agent.",
             load.max_connections),
            ("restygate_consul_peak_connections", "The most requests to the agent in flight at once so far.",
             load.peak_connections),
            ("restygate_consul_watches", "Watches Consul discovery holds (against restygate_watches_max).",
             load.watches),
            ("restygate_watches_max", "max-watched-services: past it the least recently used watch is dropped.",
             load.max_watches),
            ("restygate_watches_dedicated", "Watches holding a blocking query of their own (the others are fed).",
             load.dedicated),
            ("restygate_consul_failing_queries", "Consul queries failing now (an outage while above 0).",
             load.failing),
        ]
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=value)
        yield CounterMetricFamily(
            "restygate_watches_evicted", "Watches dropped past max-watched-services.", value=load.evicted
        )
        yield CounterMetricFamily(
            "restygate_discovery_name_misses",
            "Requests for a datacenter or service Consul does not know (answered 404, nothing watched).",
            value=load.name_misses,
        )
        lag = GaugeMetricFamily(
            "restygate_consul_feed_lag_seconds",
            "Change feed: from its last answer until the fetches it caused were answered, plus LastContact.",
            labels=["dc"],
        )
        contact = GaugeMetricFamily(
            "restygate_consul_last_contact_seconds",
            "X-Consul-LastContact of the feed's last answer: how far behind the leader a stale read was.",
            labels=["dc"],
        )
        refetches = CounterMetricFamily(
            "restygate_consul_feed_refetches", "One-off fetches of changed services the feed caused.", labels=["dc"]
        )
        for feed in load.feeds:
            lag.add_metric([feed.dc], feed.lag)
            contact.add_metric([feed.dc], feed.last_contact)
            refetches.add_metric([feed.dc], feed.refetches)
        yield from (lag, contact, refetches)
