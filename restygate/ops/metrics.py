"""
Prometheus metrics for one gateway, in a registry of its own (several
gateways may share a process, as in tests).

A finished request costs one observer call that finds its (dc, service)'s
label children, created once and cached, and bumps them.  Everything that
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
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime

from restygate.ops.consulmetrics import ConsulLoadCollector
from restygate.ops.views import IConsulLoadView, Inspected
from restygate.proxy.observe import Completed

__all__ = ["Metrics", "error_kind"]

# From a millisecond to the default upstream timeout (60 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

def error_kind(c: Completed) -> Optional[str]:
    """
    The C{kind} label of a request's upstream error: the failure's own, when
    the gateway answered with an error of its own about the upstream side;
    L{None} otherwise (success, the upstream's own answer, a client error).
    """
    if c.failure is None or c.error is None:
        return None
    return c.failure.kind


class _Series:
    """
    The label children of one (dc, service), made once.
    """

    def __init__(self, metrics: Metrics, dc: str, service: str) -> None:
        self._metrics = metrics
        self._labels = (dc, service)
        self._codes: Dict[int, Counter] = {}
        self._errors: Dict[str, Counter] = {}
        self.duration = metrics.request_duration.labels(dc, service)
        self.upstream_latency = metrics.upstream_latency.labels(dc, service)
        self.retries = metrics.retries.labels(dc, service)

    def count(self, c: Completed) -> None:
        status_class = c.status // 100
        requests = self._codes.get(status_class)
        if requests is None:
            # Classes 1xx-5xx; an upstream's odd status (600, 99) is "other".
            code = f"{status_class}xx" if 1 <= status_class <= 5 else "other"
            requests = self._codes[status_class] = self._metrics.requests.labels(*self._labels, code)
        requests.inc()
        self.duration.observe(c.duration)
        if c.upstream_latency is not None:
            self.upstream_latency.observe(c.upstream_latency)
        if c.retries:
            self.retries.inc(c.retries)
        kind = error_kind(c)
        if kind is not None:
            errors = self._errors.get(kind)
            if errors is None:
                errors = self._errors[kind] = self._metrics.upstream_errors.labels(*self._labels, kind)
            errors.inc()


class Metrics:
    """
    The metrics of the gateway C{gateway} shows; L{observe} is its request
    observer.
    """

    def __init__(self, gateway: Inspected, clock: IReactorTime) -> None:
        self._gateway = gateway
        self.registry = CollectorRegistry()
        labels = ("dc", "service")
        self.requests = Counter(
            "restygate_requests", "Requests answered, by status class.",
            (*labels, "code"), registry=self.registry,
        )
        self.request_duration = Histogram(
            "restygate_request_duration_seconds",
            "Time from a request's arrival to its last response byte.",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "restygate_upstream_latency_seconds",
            "Time from sending a request upstream to the upstream's response headers.",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.retries = Counter(
            "restygate_upstream_retries", "Retries on another instance.",
            labels, registry=self.registry,
        )
        self.upstream_errors = Counter(
            "restygate_upstream_errors",
            "Requests the gateway answered with an error of its own about the upstream side.",
            (*labels, "kind"), registry=self.registry,
        )
        self.failovers = Counter(
            "restygate_failovers", "Requests served from another datacenter than the one asked for (failover).",
            (*labels, "to"), registry=self.registry,
        )
        self._series: Dict[Tuple[str, str], _Series] = {}
        self._unroutable = _Series(self, "", "")
        self.registry.register(_StateCollector(gateway, clock, self._series))
        if IConsulLoadView.providedBy(gateway.discovery):
            self.registry.register(ConsulLoadCollector(IConsulLoadView(gateway.discovery)))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe(self, c: Completed) -> None:
        self._series_for(c.dc, c.service).count(c)
        if c.failed_over and c.dc and c.service:
            # Both datacenters are Consul's (unknown ones get 404 before any
            # failover) and the service has instances: bounded labels.
            self.failovers.labels(c.failed_over.lower(), c.service, c.dc).inc()

    def _series_for(self, dc: Optional[str], service: Optional[str]) -> _Series:
        if dc is None or service is None:
            return self._unroutable
        key = (dc, service)
        series = self._series.get(key)
        if series is None:
            if not self._gateway.discovery.has_instances(dc, service):
                return self._unroutable
            series = self._series[key] = _Series(self, dc, service)
        return series

    def exposition(self) -> bytes:
        """
        The Prometheus text format of everything, as of now.
        """
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """
    Reads discovery, outlier and pool state when Prometheus scrapes.
    """

    def __init__(
        self, gateway: Inspected, clock: IReactorTime, named: Dict[Tuple[str, str], _Series]
    ) -> None:
        self._gateway = gateway
        self._clock = clock
        self._named = named

    def collect(self) -> Iterable[Metric]:
        gateway = self._gateway
        outliers = gateway.outliers
        now = self._clock.seconds()
        labels = ["dc", "service"]
        instances = GaugeMetricFamily(
            "restygate_instances",
            "Passing instances per service: in rotation (passing) or taken out by outlier detection (ejected).",
            labels=[*labels, "state"],
        )
        index = GaugeMetricFamily("restygate_watch_index", "Consul index of a watch's last answer.", labels=labels)
        age = GaugeMetricFamily(
            "restygate_watch_last_success_age_seconds",
            "Seconds since Consul last answered a watch (+Inf before its first answer).",
            labels=labels,
        )
        errors = GaugeMetricFamily(
            "restygate_watch_errors", "Consul queries of a watch failed in a row.", labels=labels
        )
        entries = gateway.discovery.watched()
        for w in entries:
            key = [w.dc, w.service]
            if w.instances or (w.dc, w.service) in self._named:
                ejected = sum(1 for i in w.instances if outliers.is_ejected(w.dc, w.service, i))
                instances.add_metric([*key, "passing"], len(w.instances) - ejected)
                instances.add_metric([*key, "ejected"], ejected)
            # Every Consul watch, erring or without instances too: only names
            # Consul knows are watched, and at most max-watched-services.
            if w.index is not None:
                index.add_metric(key, w.index)
                # Never answered is as stale as can be: an alert on the age
                # fires instead of missing an absent series.
                age.add_metric(key, float("inf") if w.last_success is None else now - w.last_success)
                errors.add_metric(key, w.errors)
        yield from (instances, index, age, errors)
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
