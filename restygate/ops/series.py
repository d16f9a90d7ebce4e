"""
The request series of each (dc, service), kept light: a gateway in front
of thousands of services holds one small object per service (plain counts
and bucket tallies) instead of a prometheus_client child per label set,
whose histograms cost a locked value object per bucket (about 10 KB a
service), and writes them as Prometheus text directly, without building a
sample object per line at each scrape.

The gateway's reactor thread is the only writer and the only reader, so
nothing here takes a lock.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Dict, Final, Iterable, List, Optional, Tuple

from prometheus_client.utils import floatToGoString

from restygate.ops.selection import Names, wanted
from restygate.proxy.observe import Completed

__all__ = ["RequestSeries", "ServiceSeries", "LATENCY_BUCKETS"]

# From a millisecond to the default upstream timeout (60 s).  A tuple of any
# length to the type checker: compiled (setup.py), a fixed-length one of
# floats is kept unboxed and boxed again into a new tuple for every bisect.
LATENCY_BUCKETS: Final[Tuple[float, ...]] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LE = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    text: str = floatToGoString(value)
    return text


class _Tally:
    """
    One histogram's observations: a count per bucket (not cumulative) and the sum.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value


class ServiceSeries:
    """
    The request series of one (dc, service).
    """

    __slots__ = ("dc", "service", "codes", "duration", "upstream", "retries", "errors")

    def __init__(self, dc: str, service: str) -> None:
        # The labels as text, escaped once.  Labels are written in name
        # order, as prometheus_client writes them (dc, [kind, le], service).
        self.dc = f'dc="{_escape(dc)}"'
        self.service = f'service="{_escape(service)}"'
        self.codes: Dict[str, int] = {}
        self.duration = _Tally()
        # Made on the first upstream answer: many requests never get one.
        self.upstream: Optional[_Tally] = None
        self.retries = 0
        self.errors: Optional[Dict[str, int]] = None

    def count(self, c: Completed, kind: Optional[str]) -> None:
        """
        Count C{c}, whose upstream error kind (if any) is C{kind}.
        """
        # Classes 1xx-5xx; an upstream's odd status (600, 99) is "other".
        code = _CLASSES.get(c.status // 100, "other")
        codes = self.codes
        codes[code] = codes.get(code, 0) + 1
        # _Tally.observe in line: every request has a duration.
        duration = self.duration
        duration.counts[bisect_left(LATENCY_BUCKETS, c.duration)] += 1
        duration.total += c.duration
        latency = c.upstream_latency
        if latency is not None:
            upstream = self.upstream
            if upstream is None:
                upstream = self.upstream = _Tally()
            upstream.counts[bisect_left(LATENCY_BUCKETS, latency)] += 1
            upstream.total += latency
        self.retries += c.retries
        if kind is not None:
            if self.errors is None:
                self.errors = {}
            self.errors[kind] = self.errors.get(kind, 0) + 1


_CLASSES: Final = {n: f"{n}xx" for n in range(1, 6)}
_EMPTY = _Tally()


class RequestSeries:
    """
    Every (dc, service)'s request series, and their Prometheus text.
    """

    def __init__(self) -> None:
        self.services: Dict[Tuple[str, str], ServiceSeries] = {}

    def exposition(self, extra: Iterable[ServiceSeries] = (), names: Names = None) -> List[str]:
        """
        The families as Prometheus text lines (without line ends), the
        series of C{extra} (the unroutable one) first; only the samples
        named in C{names}, when given.
        """
        every = [*extra, *self.services.values()]
        want = wanted(names)
        out: List[str] = []
        add = out.append
        if want("restygate_requests_total"):
            add("# HELP restygate_requests_total Requests answered, by status class.")
            add("# TYPE restygate_requests_total counter")
            for s in every:
                for code, n in s.codes.items():
                    add(f'restygate_requests_total{{code="{code}",{s.dc},{s.service}}} {_number(n)}')
        for name, text, pick in (
            ("restygate_request_duration_seconds", "Time from a request's arrival to its last response byte.",
             _duration),
            ("restygate_upstream_latency_seconds",
             "Time from sending a request upstream to the upstream's response headers.", _upstream),
        ):
            buckets, counts, sums = want(f"{name}_bucket"), want(f"{name}_count"), want(f"{name}_sum")
            if not (buckets or counts or sums):
                continue
            add(f"# HELP {name} {text}")
            add(f"# TYPE {name} histogram")
            for s in every:
                tally = pick(s)
                cumulative = 0
                for le, n in zip(_LE, tally.counts):
                    cumulative += n
                    if buckets:
                        add(f'{name}_bucket{{{s.dc},le="{le}",{s.service}}} {_number(cumulative)}')
                if counts:
                    add(f"{name}_count{{{s.dc},{s.service}}} {_number(cumulative)}")
                if sums:
                    add(f"{name}_sum{{{s.dc},{s.service}}} {_number(tally.total)}")
        if want("restygate_upstream_retries_total"):
            add("# HELP restygate_upstream_retries_total Retries on another instance.")
            add("# TYPE restygate_upstream_retries_total counter")
            for s in every:
                add(f"restygate_upstream_retries_total{{{s.dc},{s.service}}} {_number(s.retries)}")
        if want("restygate_upstream_errors_total"):
            add("# HELP restygate_upstream_errors_total Requests the gateway answered with an error of its own "
                "about the upstream side.")
            add("# TYPE restygate_upstream_errors_total counter")
            for s in every:
                for kind, n in (s.errors or {}).items():
                    add(f'restygate_upstream_errors_total{{{s.dc},kind="{_escape(kind)}",{s.service}}} {_number(n)}')
        return out


def _duration(s: ServiceSeries) -> _Tally:
    return s.duration


def _upstream(s: ServiceSeries) -> _Tally:
    return s.upstream or _EMPTY
