"""
The metrics of Consul discovery's load (L{IConsulLoadView}): connections to
the agent in use against C{consul-max-connections}, watches against
C{max-watched-services}, and per datacenter the change feed's lag and how
far behind the leader its answers are (C{X-Consul-LastContact}).
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from restygate.ops.views import IConsulLoadView

__all__ = ["ConsulLoadCollector"]


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
