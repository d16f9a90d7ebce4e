"""
Prometheus metrics for one gateway, in a registry of its own (several
gateways may share a process, as in tests).

A finished request costs one observer call that finds its (dc, service)'s
series (L{restygate.ops.series}: a small object per service, written as text
at scrape time), made once, and bumps them.  Everything that
describes state (instances, Consul watches, the pool, ejections) is read by
a collector at scrape time, so it costs nothing between scrapes.

Label values stay bounded by the real catalog: a (dc, service) gets series
of its own only once discovery has known an instance of it.  Requests for
anything else (unknown datacenters, malformed names, services with no
instances) are counted under C{dc=""} and C{service=""}, so a client probing
random names cannot grow the exposition.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime

from restygate.ops.consulmetrics import ConsulLoadCollector, WatchCollector
from restygate.ops.selection import Names, registry_text
from restygate.ops.series import RequestSeries, ServiceSeries
from restygate.ops.views import IConsulLoadView, Inspected
from restygate.proxy.observe import Completed

__all__ = ["Metrics", "error_kind"]

def error_kind(c: Completed) -> Optional[str]:
    """
    The C{kind} label of a request's upstream error: the failure's own, when
    the gateway answered with an error of its own about the upstream side;
    L{None} otherwise (success, the upstream's own answer, a client error).
    """
    if c.failure is None or c.error is None:
        return None
    return c.failure.kind


class Metrics:
    """
    The metrics of the gateway C{gateway} shows; L{observe} is its request
    observer.
    """

    def __init__(self, gateway: Inspected, clock: IReactorTime) -> None:
        self._gateway = gateway
        self.registry = CollectorRegistry()
        # The (dc, service) request series: light objects of our own, written
        # as text (restygate.ops.series), not prometheus_client children.
        self.requests = RequestSeries()
        self._unroutable = ServiceSeries("", "")
        labels = ("dc", "service")
        self.failovers = Counter(
            "restygate_failovers", "Requests served from another datacenter than the one asked for (failover).",
            (*labels, "to"), registry=self.registry,
        )
        self.registry.register(_StateCollector(gateway, self.requests.services))
        if IConsulLoadView.providedBy(gateway.discovery):
            self.registry.register(ConsulLoadCollector(IConsulLoadView(gateway.discovery)))
            self.registry.register(WatchCollector(gateway.discovery, clock))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe(self, c: Completed) -> None:
        # Once per request: the common case (a known series, no error) in
        # line, without the calls the general case makes.
        series = self.requests.services.get((c.dc, c.service))  # type: ignore[arg-type]
        if series is None:
            series = self._series_for(c.dc, c.service)
        series.count(c, None if c.error is None else error_kind(c))
        if c.failed_over and c.dc and c.service:
            # Both datacenters are Consul's (unknown ones get 404 before any
            # failover) and the service has instances: bounded labels.
            self.failovers.labels(c.failed_over.lower(), c.service, c.dc).inc()

    def _series_for(self, dc: Optional[str], service: Optional[str]) -> ServiceSeries:
        if dc is None or service is None:
            return self._unroutable
        key = (dc, service)
        named = self.requests.services
        series = named.get(key)
        if series is None:
            if not self._gateway.discovery.has_instances(dc, service):
                return self._unroutable
            series = named[key] = ServiceSeries(dc, service)
        return series

    def exposition(self, names: Names = None) -> bytes:
        """
        The Prometheus text format of everything as of now, or of the
        samples C{names} asks for.
        """
        lines = self.requests.exposition([self._unroutable], names)
        lines.append("")
        return "\n".join(lines).encode("utf-8") + registry_text(self.registry, names)


class _StateCollector(Collector):
    """
    Reads discovery, outlier and pool state when Prometheus scrapes.
    """

    def __init__(
        self, gateway: Inspected, named: Dict[Tuple[str, str], ServiceSeries]
    ) -> None:
        self._gateway = gateway
        self._named = named

    def collect(self) -> Iterable[Metric]:
        gateway = self._gateway
        outliers = gateway.outliers
        labels = ["dc", "service"]
        instances = GaugeMetricFamily(
            "restygate_instances",
            "Passing instances per service: in rotation (passing) or taken out by outlier detection (ejected).",
            labels=[*labels, "state"],
        )
        entries = gateway.discovery.watched()
        for w in entries:
            key = [w.dc, w.service]
            if w.instances or (w.dc, w.service) in self._named:
                ejected = sum(1 for i in w.instances if outliers.is_ejected(w.dc, w.service, i))
                instances.add_metric([*key, "passing"], len(w.instances) - ejected)
                instances.add_metric([*key, "ejected"], ejected)
        yield instances
        yield GaugeMetricFamily(
            "restygate_watches",
            "Services discovery holds (Consul watches or catalog entries), with series of their own or not.",
            value=len(entries),
        )
        yield CounterMetricFamily(
            "restygate_ejections", "Instances ejected by passive outlier detection.",
            value=outliers.ejections(),
        )
        yield GaugeMetricFamily(
            "restygate_pool_idle_connections",
            "Idle keep-alive connections to upstream instances, ready for reuse.",
            value=gateway.pool.idle_connections(),
        )
        yield GaugeMetricFamily(
            "restygate_tunnels", "Open Upgrade tunnels (WebSocket...).", value=gateway.tunnels(),
        )
