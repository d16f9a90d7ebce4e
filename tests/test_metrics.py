"""
Tests for L{restygate.ops.metrics}: traffic through a real gateway, then its
admin listener's C{/metrics} scraped and parsed as Prometheus text.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.trial.unittest import SynchronousTestCase, TestCase

from restygate.ops.metrics import error_kind
from restygate.ops.selection import MAX_NAMES
from restygate.ops.series import RequestSeries, ServiceSeries
from restygate.proxy.failure import Failure
from restygate.proxy.observe import Completed
from tests.support.backends import closed_port
from tests.support.harness import GatewayRig, eventually, settle

ADMIN = "tcp:0:interface=127.0.0.1"


class Scrape:
    """
    One parsed exposition.
    """

    def __init__(self, text: str) -> None:
        self.samples: List[Sample] = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> Optional[float]:
        """
        The value of the sample C{name} with exactly these labels, if any.
        """
        for sample in self.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
        return None

    def series(self, name: str) -> Dict[Tuple[Tuple[str, str], ...], float]:
        return {tuple(sorted(s.labels.items())): s.value for s in self.samples if s.name == name}


async def scrape(rig: GatewayRig) -> Scrape:
    response, body = await rig.admin("/metrics")
    assert response.code == 200, (response.code, body)
    return Scrape(body.decode("utf-8"))


class RequestMetricsTests(TestCase):
    async def test_requests_by_class_and_unroutable(self) -> None:
        """
        Requests count by (dc, service, status class); requests for nothing
        discovery knows land under dc="" service="", and their names never
        appear as label values.
        """
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend())
        for path in ["/dc1/web/", "/dc1/web/a", "/dc1/web/b", "/dc1/web/status/500", "/dc1/web/status/503"]:
            await rig.get(path)
        for path, status in [("/dc1/ghost/x", 404), ("/nowhere/web/", 404), ("/dc1/w%20b/", 400)]:
            response, _ = await rig.get(path)
            self.assertEqual(response.code, status, path)
        metrics = await scrape(rig)
        self.assertEqual(
            metrics.series("restygate_requests_total"),
            {
                (("code", "2xx"), ("dc", "dc1"), ("service", "web")): 3.0,
                (("code", "5xx"), ("dc", "dc1"), ("service", "web")): 2.0,
                (("code", "4xx"), ("dc", ""), ("service", "")): 3.0,
            },
        )
        for sample in metrics.samples:
            self.assertNotIn("ghost", sample.labels.values(), sample)
            self.assertNotIn("nowhere", sample.labels.values(), sample)

    async def test_a_scrape_may_name_the_samples_it_wants(self) -> None:
        """
        C{name[]} restricts the exposition to samples of those names, as
        prometheus_client's own exporter does: one family of ours, one a
        collector writes, one histogram's counts only; the same values as
        in the whole exposition.
        """
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend())
        for path in ["/dc1/web/", "/dc1/web/a", "/dc1/web/status/500"]:
            await rig.get(path)
        whole = await scrape(rig)
        names = ["restygate_requests_total", "restygate_instances", "restygate_request_duration_seconds_count"]
        response, body = await rig.admin("/metrics?" + "&".join(f"name[]={n}" for n in names))
        self.assertEqual(response.code, 200)
        text = body.decode("utf-8")
        some = Scrape(text)
        self.assertEqual({s.name for s in some.samples}, set(names))
        for name in names:
            self.assertEqual(some.series(name), whole.series(name), name)
        self.assertEqual(some.value("restygate_request_duration_seconds_count", dc="dc1", service="web"), 3.0)
        families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        self.assertEqual(families, {"restygate_requests_total", "restygate_instances", "restygate_request_duration_seconds"})
        self.assertNotIn("_bucket", text)
        response, body = await rig.admin("/metrics?name[]=nothing_of_ours")
        self.assertEqual((response.code, Scrape(body.decode("utf-8")).samples), (200, []))

    async def test_too_many_names_is_a_400_not_a_cut(self) -> None:
        rig = GatewayRig(self, admin=ADMIN)
        asked = "&".join(f"name[]=n{k}" for k in range(MAX_NAMES))
        response, _ = await rig.admin("/metrics?" + asked)
        self.assertEqual(response.code, 200)
        response, body = await rig.admin("/metrics?" + asked + "&name[]=restygate_instances")
        self.assertEqual((response.code, body), (400, f"{MAX_NAMES + 1} name[] arguments: at most {MAX_NAMES}\n".encode()))

    async def test_histogram_counts_equal_requests(self) -> None:
        """
        Every request is one observation of its duration; every one that got
        upstream response headers is one of upstream latency.
        """
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend())
        for _ in range(4):
            await rig.get("/dc1/web/")
        await rig.get("/dc1/web/status/404")
        await rig.get("/dc1/nothing/")
        metrics = await scrape(rig)
        web = {"dc": "dc1", "service": "web"}
        self.assertEqual(metrics.value("restygate_request_duration_seconds_count", **web), 5.0)
        self.assertEqual(metrics.value("restygate_upstream_latency_seconds_count", **web), 5.0)
        self.assertEqual(
            metrics.value("restygate_request_duration_seconds_bucket", le="+Inf", **web), 5.0
        )
        unroutable = {"dc": "", "service": ""}
        self.assertEqual(metrics.value("restygate_request_duration_seconds_count", **unroutable), 1.0)
        self.assertEqual(metrics.value("restygate_upstream_latency_seconds_count", **unroutable), 0.0)
        total = metrics.value("restygate_request_duration_seconds_sum", **web)
        assert total is not None
        self.assertGreater(total, 0)

    async def test_upstream_errors_by_kind(self) -> None:
        """
        A gateway error about the upstream side counts under its kind.
        """
        rig = GatewayRig(self, admin=ADMIN, retries=0)
        rig.consul.register_service("dc1", "n1", "127.0.0.1", "web", closed_port())
        response, _ = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 502)
        metrics = await scrape(rig)
        self.assertEqual(
            metrics.series("restygate_upstream_errors_total"),
            {(("dc", "dc1"), ("kind", "connect"), ("service", "web")): 1.0},
        )

    async def test_retries_and_ejections(self) -> None:
        """
        Retries count per service; an instance that keeps refusing is
        ejected, which the ejection counter and the instances gauge show.
        """
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend("good"))
        rig.consul.register_service("dc1", "n-dead", "127.0.0.1", "web", closed_port(), service_id="web-dead")
        for _ in range(8):
            response, _ = await rig.get("/dc1/web/")
            self.assertEqual(response.code, 200)
        metrics = await scrape(rig)
        web = {"dc": "dc1", "service": "web"}
        retries = metrics.value("restygate_upstream_retries_total", **web)
        assert retries is not None
        self.assertGreaterEqual(retries, 3)
        self.assertEqual(metrics.value("restygate_ejections_total"), 1.0)
        self.assertEqual(metrics.value("restygate_instances", state="ejected", **web), 1.0)
        self.assertEqual(metrics.value("restygate_instances", state="passing", **web), 1.0)


class StateMetricsTests(TestCase):
    async def test_watch_gauges(self) -> None:
        """
        A watched service shows its instances, Consul index, sync age and
        error count.
        """
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend("a"))
        rig.register(rig.backend("b"))
        await rig.get("/dc1/web/")
        metrics = await scrape(rig)
        web = {"dc": "dc1", "service": "web"}
        self.assertEqual(metrics.value("restygate_instances", state="passing", **web), 2.0)
        self.assertEqual(metrics.value("restygate_instances", state="ejected", **web), 0.0)
        self.assertEqual(metrics.value("restygate_watch_index", **web), float(rig.consul.service_index("dc1", "web")))
        self.assertEqual(metrics.value("restygate_watch_errors", **web), 0.0)
        age = metrics.value("restygate_watch_last_success_age_seconds", **web)
        assert age is not None
        self.assertTrue(0 <= age < 5, age)
        self.assertEqual(metrics.value("restygate_watches"), 1.0)

    async def test_watch_errors_while_consul_fails(self) -> None:
        """
        While Consul errs, a known service's watch counts the failures.
        """
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend())
        await rig.get("/dc1/web/")
        rig.consul.fail()
        rig.consul.register_service("dc1", "n2", "127.0.0.1", "web", closed_port(), service_id="web-2")
        watcher = rig.watcher("dc1", "web")
        await eventually(lambda: watcher.errors > 0, timeout=10)
        metrics = await scrape(rig)
        errors = metrics.value("restygate_watch_errors", dc="dc1", service="web")
        assert errors is not None
        self.assertGreaterEqual(errors, 1)

    async def test_unknown_service_has_no_watch_series(self) -> None:
        """
        A service Consul does not know is not watched and gets no series.
        """
        rig = GatewayRig(self, admin=ADMIN)
        await rig.get("/dc1/ghost/")
        metrics = await scrape(rig)
        self.assertEqual(metrics.series("restygate_watch_index"), {})
        self.assertEqual(metrics.series("restygate_instances"), {})
        self.assertEqual(metrics.value("restygate_watches"), 0.0)

    async def test_pool_and_process(self) -> None:
        """
        Idle keep-alive connections to upstreams show, and so do the
        process collectors.
        """
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend())
        await rig.get("/dc1/web/")
        await settle()
        metrics = await scrape(rig)
        self.assertEqual(metrics.value("restygate_pool_idle_connections"), 1.0)
        self.assertIsNotNone(metrics.value("python_info", **_python_info(metrics)))
        self.assertIsNotNone(metrics.value("process_open_fds"))

    async def test_gateways_do_not_share_metrics(self) -> None:
        """
        Two gateways in one process count only their own requests.
        """
        one = GatewayRig(self, admin=ADMIN)
        two = GatewayRig(self, admin=ADMIN)
        one.register(one.backend())
        await one.get("/dc1/web/")
        first, second = await scrape(one), await scrape(two)
        self.assertEqual(first.value("restygate_requests_total", dc="dc1", service="web", code="2xx"), 1.0)
        self.assertEqual(second.series("restygate_requests_total"), {})


def _python_info(metrics: Scrape) -> Dict[str, str]:
    [sample] = [s for s in metrics.samples if s.name == "python_info"]
    return dict(sample.labels)


def _completed(status: int, error: Optional[str], failure: Optional[Failure], duration: float = 0.0) -> Completed:
    return Completed(
        started=0.0, duration=duration, client="127.0.0.1", method="GET", uri="/", proto="HTTP/1.1",
        host="", status=status, bytes_sent=0, dc="dc1", service="web", upstream="10.0.0.1:80",
        upstream_latency=None, retries=0, error=error, aborted=failure is Failure.CLIENT_GONE,
        failure=failure,
    )


class ErrorKindTests(SynchronousTestCase):
    def test_kinds(self) -> None:
        """
        The label is the failure's own kind, whatever message the answer
        carries, for the gateway's own answers about the upstream side;
        client errors, a client gone, a response cut after it began (the
        upstream's status stands) and successes are none.
        """
        cases = [
            (502, "upstream unreachable", Failure.CONNECT_REFUSED, "connect"),
            (502, "upstream unreachable", Failure.CONNECT_TIMEOUT, "connect"),
            (502, "upstream unreachable", Failure.TLS_FAILED, "tls"),
            (502, "upstream closed the connection before answering", Failure.RESET_BEFORE_RESPONSE, "reset"),
            (504, "upstream timed out", Failure.RESPONSE_TIMEOUT, "timeout"),
            (502, "upstream sent an invalid response", Failure.UPSTREAM_PROTOCOL, "protocol"),
            (503, "no passing instance", Failure.NO_INSTANCE, "no_instance"),
            (503, "service discovery unavailable", Failure.DISCOVERY_UNAVAILABLE, None),
            (400, "more than one Host header", Failure.CLIENT_PROTOCOL, None),
            (413, "request body too large", Failure.BODY_TOO_LARGE, None),
            (404, "unknown datacenter", Failure.UNKNOWN_DATACENTER, None),
            (200, None, Failure.UPSTREAM_CUT, None),
            (200, None, Failure.CLIENT_GONE, None),
            (500, None, None, None),
        ]
        for status, error, failure, kind in cases:
            self.assertEqual(error_kind(_completed(status, error, failure)), kind, (status, error, failure))


class ServiceSeriesTests(SynchronousTestCase):
    def test_text_reads_as_prometheus_histograms_and_counters(self) -> None:
        """
        The light per-service series write text Prometheus reads: a value
        on a bucket's bound counts in that bucket, buckets are cumulative,
        +Inf and _count are every observation, labels are escaped.
        """
        series = ServiceSeries("dc1", 'we"b')
        for status, duration in [(200, 0.001), (200, 0.0011), (503, 100.0)]:
            completed = _completed(status, None, None, duration)
            series.count(completed, "connect" if status == 503 else None)
        text = "\n".join(RequestSeries().exposition([series])) + "\n"
        scrape = Scrape(text)
        web = {"dc": "dc1", "service": 'we"b'}
        self.assertEqual(
            [scrape.value("restygate_request_duration_seconds_bucket", le=le, **web)
             for le in ("0.001", "0.0025", "60.0", "+Inf")],
            [1.0, 2.0, 2.0, 3.0],
        )
        self.assertEqual(scrape.value("restygate_request_duration_seconds_count", **web), 3.0)
        self.assertAlmostEqual(scrape.value("restygate_request_duration_seconds_sum", **web) or 0.0, 100.0021)
        self.assertEqual(scrape.value("restygate_requests_total", code="2xx", **web), 2.0)
        self.assertEqual(scrape.value("restygate_requests_total", code="5xx", **web), 1.0)
        self.assertEqual(scrape.value("restygate_upstream_errors_total", kind="connect", **web), 1.0)
        self.assertEqual(scrape.value("restygate_upstream_retries_total", **web), 0.0)
