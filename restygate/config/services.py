"""
Per-service settings: the C{[services.<name>]} tables of the config file
(any datacenter) and C{[services."<dc>/<name>"]} (one datacenter, winning
over the former), each setting some of the global keys for one service.

A table's key is read by the global key's own kind of value, so a value
means the same in a table as at the top of the file, and an error names the
table and the key (C{services.web: retries: expected a whole number...}).  Keys a
table leaves out fall back to the global value.  The result is plain data
(config field names and parsed values) that L{effective} lays over a whole
config, so the rest of the gateway reads one service's settings exactly as
it reads the global ones.

The key table (L{restygate.config.keys}) hands this module its own keys
when it parses, so the two need no import cycle.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Tuple, TypeVar

from restygate.config.model import ConfigError, ServiceTable
from restygate.config.values import Kind

__all__ = ["SERVICE_KEYS", "ServiceTable", "Overrides", "table", "effective", "table_name", "service_tags"]

# Table key -> the global key it overrides (the same name but for tags).
# Keys the global config does not have (yet) are not offered.
SERVICE_KEYS: Mapping[str, str] = {
    "tags": "tag",
    "balancer": "balancer",
    "hash-on": "hash-on",
    "retries": "retries",
    "upstream-timeout": "upstream-timeout",
    "connect-timeout": "connect-timeout",
    "failover": "failover",
    "failover-limit": "failover-limit",
    "include-warning": "include-warning",
    "rewrite-location": "rewrite-location",
    "max-body": "max-body",
    "panic-all-instances": "panic-all-instances",
}

# (config field, parsed value) pairs one table sets, in the table's order.
Overrides = Tuple[Tuple[str, Any], ...]

class _Key(Protocol):
    """What a table needs of a global key (L{restygate.config.keys.Key})."""

    @property
    def field(self) -> str: ...

    @property
    def kind(self) -> Kind: ...


Keys = Mapping[str, _Key]

# Consul's names, as the routing contract allows them.
_NAME = r"[A-Za-z0-9_.\-]{1,255}"
_TABLE = re.compile(rf"(?:{_NAME}/)?{_NAME}")

C = TypeVar("C")


def table_name(name: str) -> str:
    """
    How a table is written in the file, for error messages.
    """
    return f'services."{name}"' if "/" in name else f"services.{name}"


def _table(name: Any, settings: Any, keys: Keys) -> Overrides:
    where = table_name(str(name))
    if not isinstance(name, str) or not _TABLE.fullmatch(name) or ".." in name:
        raise ConfigError(f"{where}: a table is named <service> or \"<datacenter>/<service>\"")
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: expected a table of settings, got {settings!r}")
    overrides = []
    for name_in_table, raw in settings.items():
        global_key = SERVICE_KEYS.get(name_in_table)
        key = keys.get(global_key) if global_key is not None else None
        if key is None:
            raise ConfigError(f"{where}: unknown key {name_in_table!r}")
        # Named as the operator wrote it: table and key.
        label = f"{where}: {name_in_table}"
        key.kind.from_file(label, raw)
        overrides.append((key.field, key.kind.parse(label, raw)))
    return tuple(overrides)


def table(keys: Callable[[], Keys]) -> Kind:
    """
    The kind of the C{services} key: tables of some of C{keys()}' keys,
    each read by that key's own kind.
    """

    def parse(key: str, value: Any) -> ServiceTable:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected tables like [services.web] or [services.\"dc1/web\"]")
        known = keys()
        # Consul matches names case-insensitively, and so do the tables.
        return tuple(sorted((str(name).lower(), _table(name, settings, known)) for name, settings in value.items()))

    return Kind(parse, (dict,), "tables like [services.web]")


def _layers(table: Mapping[str, Overrides], dc: str, service: str) -> Tuple[Optional[Overrides], ...]:
    return table.get(service.lower()), table.get(f"{dc}/{service}".lower())


def effective(config: C, table: Mapping[str, Overrides], dc: str, service: str) -> C:
    """
    C{config} with the service's settings laid over it: the any-datacenter
    table's, then the datacenter's own.
    """
    merged: Dict[str, Any] = {}
    for layer in _layers(table, dc, service):
        merged.update(layer or ())
    return dataclasses.replace(config, **merged) if merged else config  # type: ignore[type-var]


def service_tags(tags: Tuple[str, ...], table: Mapping[str, Overrides], dc: str, service: str) -> Tuple[str, ...]:
    """
    The tags a service's instances must carry: its tables', else C{tags}.
    """
    for layer in reversed(_layers(table, dc, service)):
        for field, value in layer or ():
            if field == "tags":
                return tuple(value)
    return tags
