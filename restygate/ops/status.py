"""
What the admin side reads from a running gateway: the watched services and
their instances, as plain data for the status page (HTML or JSON), the
metrics collector and the readiness check.

Discovery's public interface (L{restygate.discovery.model.IDiscovery}) only looks
services up, and looking one up starts watching it; the admin side must only
observe.  So this module is the one place that knows the state each source
keeps (Consul's watchers, the static catalog's table) and reads it without
side effects.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.interfaces import IAddress, IListeningPort

from restygate import __version__
from restygate.discovery.catalog import StaticCatalog
from restygate.discovery.model import Instance
from restygate.upstream.outliers import Outliers
from restygate.discovery.consul.source import ConsulDiscovery

if TYPE_CHECKING:
    from restygate.daemon.assembly import Gateway
    from restygate.front.listeners import Listener

__all__ = [
    "Watched",
    "watched",
    "has_instances",
    "discovery_answered",
    "gateway_status",
    "render_html",
]


@dataclass(frozen=True)
class Watched:
    """
    One (dc, service) discovery knows about, as of now.

    @ivar instances: its usable instances, empty before the first answer.
    @ivar synced: there has been an answer (Consul) or it is in the catalog.
    @ivar index: Consul's index of the last answer; L{None} for the catalog.
    @ivar last_success: when Consul last answered, L{None} if never or for
        the catalog.
    @ivar errors: Consul queries failed in a row since the last answer.
    """

    dc: str
    service: str
    instances: Tuple[Instance, ...]
    synced: bool
    index: Optional[int] = None
    last_success: Optional[float] = None
    last_error: Optional[str] = None
    errors: int = 0


def watched(discovery: object) -> List[Watched]:
    """
    Every (dc, service) C{discovery} holds, sorted.
    """
    found: List[Watched] = []
    if isinstance(discovery, ConsulDiscovery):
        for (dc, service), watcher in discovery.watchers.items():
            snapshot = watcher.snapshot
            found.append(
                Watched(
                    dc, service,
                    instances=snapshot.instances if snapshot is not None else (),
                    synced=snapshot is not None,
                    index=watcher.index,
                    last_success=watcher.last_success,
                    last_error=watcher.last_error,
                    errors=watcher.errors,
                )
            )
    elif isinstance(discovery, StaticCatalog):
        for dc, services in discovery.catalog.items():
            for service, snapshot in services.items():
                found.append(Watched(dc, service, snapshot.instances, synced=True))
    found.sort(key=lambda w: (w.dc, w.service))
    return found


def has_instances(discovery: object, dc: str, service: str) -> bool:
    """
    Whether C{discovery} knows at least one instance of C{service} in C{dc}
    right now; the metrics' test for a (dc, service) worth its own series.
    """
    snapshot: Any = None
    if isinstance(discovery, ConsulDiscovery):
        watcher = discovery.watchers.get((dc, service))
        snapshot = watcher.snapshot if watcher is not None else None
    elif isinstance(discovery, StaticCatalog):
        snapshot = discovery.catalog.get(dc, {}).get(service)
    return snapshot is not None and bool(snapshot.instances)


def discovery_answered(discovery: object) -> bool:
    """
    Whether discovery has had a usable answer yet: some Consul watch
    succeeded, or the static catalog is loaded.
    """
    if isinstance(discovery, ConsulDiscovery):
        return any(w.last_success is not None for w in discovery.watchers.values())
    if isinstance(discovery, StaticCatalog):
        return bool(discovery.catalog)
    return False


def _address(address: IAddress) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return str(name if name is not None else address)


def _listener(role: str, listener: Listener) -> Dict[str, Any]:
    port: Optional[IListeningPort] = listener.port
    return {
        "role": role,
        "description": listener.description,
        "address": _address(port.getHost()) if port is not None else None,
    }


def _instance(w: Watched, instance: Instance, outliers: Outliers) -> Dict[str, Any]:
    state = outliers.state(w.dc, w.service, instance)
    return {
        "address": instance.address,
        "port": instance.port,
        "id": instance.id,
        "node": instance.node,
        "tags": list(instance.tags),
        "meta": dict(instance.meta),
        "ejected": outliers.is_ejected(w.dc, w.service, instance),
        # No state yet: the gateway has not sent it anything.
        "inflight": state.inflight if state is not None else 0,
    }


def gateway_status(gateway: Gateway, started: float, now: float) -> Dict[str, Any]:
    """
    The status document: JSON-ready, and what the HTML page shows.
    """
    resource = gateway.resource
    config = resource.config
    listeners = [_listener("public", listener) for listener in gateway.listeners]
    if gateway.admin_listener is not None:
        listeners.append(_listener("admin", gateway.admin_listener))
    # The Consul address only: the token stays out of everything shown.
    source = (
        {"kind": "catalog", "path": config.catalog}
        if config.catalog
        else {"kind": "consul", "address": config.consul.base_url}
    )
    services = [
        {
            "dc": w.dc,
            "service": w.service,
            "synced": w.synced,
            "last_sync_age_seconds": None if w.last_success is None else round(now - w.last_success, 3),
            "index": w.index,
            "errors": w.errors,
            "last_error": w.last_error,
            "instances": [_instance(w, i, resource.outliers) for i in w.instances],
        }
        for w in watched(resource.discovery)
    ]
    return {
        "version": __version__,
        "uptime_seconds": round(now - started, 3),
        "listeners": listeners,
        "discovery": source,
        "services": services,
    }


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _table(headings: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
    "th{background:#f0f0f0}h2{margin-top:1.5em}"
)


def render_html(status: Dict[str, Any]) -> str:
    """
    The status document as a self-contained page: no scripts, no external
    assets, every value escaped.
    """
    e = html.escape
    source = status["discovery"]
    where = source.get("address") or source.get("path")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>restygate status</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>restygate {e(status['version'])}</h1>",
        f"<p>Up for {e(_cell(status['uptime_seconds']))} s; discovery from {e(source['kind'])} "
        f"<code>{e(_cell(where))}</code>.</p>",
        "<h2>Listeners</h2>",
        _table(
            ["role", "description", "bound to"],
            [[l["role"], l["description"], l["address"]] for l in status["listeners"]],
        ),
        "<h2>Services</h2>",
    ]
    if not status["services"]:
        parts.append("<p>Nothing watched yet: services are watched from their first request.</p>")
    for s in status["services"]:
        parts.append(f"<h3>{e(s['dc'])} / {e(s['service'])}</h3>")
        parts.append(
            _table(
                ["synced", "last sync (s ago)", "index", "errors in a row", "last error"],
                [[s["synced"], s["last_sync_age_seconds"], s["index"], s["errors"], s["last_error"]]],
            )
        )
        parts.append(
            _table(
                ["address", "port", "id", "node", "tags", "meta", "ejected", "in flight"],
                [
                    [i["address"], i["port"], i["id"], i["node"], i["tags"], i["meta"], i["ejected"], i["inflight"]]
                    for i in s["instances"]
                ],
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts)
