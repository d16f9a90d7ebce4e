"""
The static catalog: discovery from a TOML file instead of Consul.

It is the embedded default for running with no Consul at all (the quick
start, demos, tests of a deployment) and a fallback for fixed fleets.  The
format: top-level tables are datacenters; each key inside is a service whose
value is an array of instances::

    [dc1]
    web = [
      { address = "127.0.0.1", port = 8000, tags = ["primary"], weight = 3 },
      { address = "::1", port = 8001, meta = { version = "2" } },
    ]

The file is re-read when it changes; a broken edit is logged and the last
good catalog keeps serving.  Instances missing a configured tag (global, or
their service's own C{tags}) are left out, as Consul would leave them out.
C{weight} is Consul's C{Weights.Passing} (default 1).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from restygate.config import Config, ConfigError
from restygate.config.services import Overrides, service_tags
from restygate.discovery.model import IDiscovery, Instance, Snapshot, UnknownDatacenter
from restygate.ops.views import IDiscoveryView, Watched

__all__ = ["StaticCatalog", "load_catalog"]

log = Logger()

Catalog = Dict[str, Dict[str, Snapshot]]


def _instance(where: str, raw: Any) -> Instance:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: an instance must be a table like {{ address = ..., port = ... }}")
    unknown = sorted(set(raw) - {"address", "port", "tags", "meta", "id", "weight"})
    if unknown:
        raise ConfigError(f"{where}: unknown instance key {unknown[0]!r}")
    address, port = raw.get("address"), raw.get("port")
    if not isinstance(address, str) or not address.strip("[]"):
        raise ConfigError(f"{where}: 'address' must be a non-empty string")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{where}: 'port' must be a number from 1 to 65535")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ConfigError(f"{where}: 'tags' must be a list of strings")
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: 'meta' must be a table")
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise ConfigError(f"{where}: 'weight' must be a whole number of at least 1")
    return Instance(
        address=address.strip("[]"),
        port=port,
        tags=tuple(tags),
        meta=tuple(sorted((str(k), str(v)) for k, v in meta.items())),
        id=str(raw.get("id", "")),
        weight=weight,
    )


def load_catalog(
    path: str, tags: Tuple[str, ...] = (), table: Mapping[str, Overrides] = {}
) -> Catalog:
    """
    Read and validate a catalog file into snapshots, keeping the instances
    that carry C{tags}, or a service's own tags from C{table}.

    @raise ConfigError: the file is missing or malformed; the message says where.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"catalog: cannot read {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"catalog: {path}: invalid TOML: {e}") from None
    catalog: Catalog = {}
    for dc, services in data.items():
        if not isinstance(services, dict):
            raise ConfigError(f"catalog: {path}: [{dc}] must be a table of services")
        catalog[dc] = {}
        for name, raw_instances in services.items():
            where = f"catalog: {path}: {dc}.{name}"
            if not isinstance(raw_instances, list):
                raise ConfigError(f"{where}: must be an array of instances")
            instances = [_instance(f"{where}[{i}]", raw) for i, raw in enumerate(raw_instances)]
            required = service_tags(tags, table, dc, name)
            wanted = tuple(i for i in instances if all(t in i.tags for t in required))
            catalog[dc][name] = Snapshot(dc, name, wanted)
    return catalog


@implementer(IDiscovery, IDiscoveryView)
class StaticCatalog(Service):
    """
    L{IDiscovery} over a catalog file, re-read when it changes.
    """

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        tags: Tuple[str, ...] = (),
        interval: float = 1.0,
        table: Mapping[str, Overrides] = {},
    ) -> None:
        self._path = path
        self._tags = tags
        self._table = table
        self._interval = interval
        self._catalog: Catalog = {}
        self._stamp: Optional[Tuple[int, int]] = None
        self._checker = LoopingCall(self._check_safely)
        self._checker.clock = clock

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def startService(self) -> None:
        super().startService()
        self.reload()
        self._checker.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._checker.running:
            self._checker.stop()
        return succeed(None)

    def current(self, dc: str, service: str) -> Optional[Snapshot]:
        services = self._catalog.get(dc)
        return services.get(service) if services is not None else None

    def lookup(self, dc: str, service: str) -> Deferred[Snapshot]:
        services = self._catalog.get(dc)
        if services is None:
            return fail(UnknownDatacenter(dc))
        snapshot = services.get(service)
        if snapshot is None:
            return succeed(Snapshot(dc, service, ()))
        return succeed(snapshot)

    def watched(self) -> List[Watched]:
        return sorted(
            (
                Watched(dc, service, snapshot.instances, synced=True)
                for dc, services in self._catalog.items()
                for service, snapshot in services.items()
            ),
            key=lambda w: (w.dc, w.service),
        )

    def has_instances(self, dc: str, service: str) -> bool:
        snapshot = self._catalog.get(dc, {}).get(service)
        return snapshot is not None and bool(snapshot.instances)

    def answered(self) -> bool:
        return bool(self._catalog)

    def _stat(self) -> Optional[Tuple[int, int]]:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reconfigure(self, config: Config) -> None:
        """
        Filter by C{config}'s tags (global and per service) from now on.
        """
        table = dict(config.services)
        if (config.tags, table) != (self._tags, self._table):
            self._tags, self._table = config.tags, table
            self.reload()

    def reload(self) -> None:
        """
        Re-read the file; on error keep serving the previous catalog.
        """
        self._stamp = self._stat()
        try:
            catalog = load_catalog(self._path, self._tags, self._table)
        except ConfigError as e:
            log.error("keeping the previous catalog: {error}", error=str(e))
            return
        self._catalog = catalog
        log.info(
            "catalog {path}: {services} service(s) in {dcs} datacenter(s)",
            path=self._path, dcs=len(catalog), services=sum(len(s) for s in catalog.values()),
        )

    def _check_safely(self) -> None:
        try:
            if self._stat() != self._stamp:
                self.reload()
        except Exception:
            log.failure("checking the catalog file failed")
