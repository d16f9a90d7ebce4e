"""
The samples a scrape asks for with C{name[]}, as prometheus_client's own
exporter reads it (C{/metrics?name[]=restygate_instances}): a check that
reads a few series of a gateway holding thousands of services should not
make every worker write, and the daemon merge, ~100,000 lines (about a
second of the daemon's time each at 5,000 services).
"""

from __future__ import annotations

from typing import Callable, FrozenSet, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlencode

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = ["Names", "TooManyNames", "asked", "as_query", "wanted", "registry_text", "MAX_NAMES"]

#: Admin callers are operators, but a URL may still name thousands (and the
#: daemon passes them on to every worker in its own URL).
MAX_NAMES = 256


class TooManyNames(ValueError):
    """
    A scrape named more than L{MAX_NAMES} samples: answered 400, not
    silently cut short.
    """

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} name[] arguments: at most {MAX_NAMES}")

Names = Optional[FrozenSet[str]]


def asked(args: Mapping[bytes, Sequence[bytes]]) -> Names:
    """
    The sample names a request's C{name[]} arguments ask for; L{None} for
    every sample (no C{name[]} at all).

    @raise TooManyNames: past L{MAX_NAMES}.
    """
    values = args.get(b"name[]")
    if not values:
        return None
    if len(values) > MAX_NAMES:
        raise TooManyNames(len(values))
    return frozenset(v.decode("utf-8", "replace") for v in values)


def as_query(names: Names) -> str:
    """
    The query string that asks a worker for the same samples.
    """
    return "" if names is None else "?" + urlencode([("name[]", n) for n in sorted(names)])


def wanted(names: Names) -> Callable[[str], bool]:
    """
    Whether a sample of this name is asked for.
    """
    if names is None:
        return lambda sample: True
    return names.__contains__


class _Only(Collector):
    """
    The samples of C{registry}'s collectors that C{names} asks for.  (The
    registry's own C{restricted_registry} leaves out every collector that
    does not describe itself, such as ours.)
    """

    def __init__(self, registry: CollectorRegistry, names: FrozenSet[str]) -> None:
        self._registry = registry
        self._names = names

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            samples = [s for s in metric.samples if s.name in self._names]
            if samples:
                kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                kept.samples = samples
                yield kept


def registry_text(registry: CollectorRegistry, names: Names) -> bytes:
    """
    C{registry}'s exposition, only the samples C{names} asks for when given.
    """
    if names is None:
        return generate_latest(registry)
    only = CollectorRegistry(auto_describe=False)
    only.register(_Only(registry, names))
    return generate_latest(only)
