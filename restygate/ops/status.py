"""
The status document of a running gateway: its listeners, where discovery
comes from, and the watched services with their instances, as plain data:
the JSON status answer, and what L{restygate.ops.pages} makes the HTML page
of.  Everything comes from the views in L{restygate.ops.views}.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.internet.interfaces import IAddress, IListeningPort

from restygate import __version__
from restygate.compiled import data_path
from restygate.discovery.model import Instance
from restygate.ops.views import IConsulLoadView, IListenerView, IOutlierView, Inspected, Watched

__all__ = ["gateway_status"]


def _address(address: IAddress) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return str(name if name is not None else address)


def _listener(role: str, listener: IListenerView) -> Dict[str, Any]:
    port: Optional[IListeningPort] = listener.listening()
    return {
        "role": role,
        "description": listener.description,
        "address": _address(port.getHost()) if port is not None else None,
    }


def _instance(w: Watched, instance: Instance, outliers: IOutlierView) -> Dict[str, Any]:
    return {
        "address": instance.address,
        "port": instance.port,
        "id": instance.id,
        "node": instance.node,
        "tags": list(instance.tags),
        "meta": dict(instance.meta),
        "weight": instance.weight,
        "ejected": outliers.is_ejected(w.dc, w.service, instance),
        "inflight": outliers.inflight(w.dc, w.service, instance),
    }


def gateway_status(gateway: Inspected, started: float, now: float) -> Dict[str, Any]:
    """
    The status document: JSON-ready, and what the HTML page shows.
    """
    config = gateway.config()
    listeners = [_listener(role, listener) for role, listener in gateway.listeners()]
    routing = gateway.routing
    # The Consul address only: the token stays out of everything shown.
    source: Dict[str, Any] = (
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
            "instances": [_instance(w, i, gateway.outliers) for i in w.instances],
            "policy": routing.described(w.dc, w.service) if routing is not None else None,
        }
        for w in gateway.discovery.watched()
    ]
    if IConsulLoadView.providedBy(gateway.discovery):
        load = IConsulLoadView(gateway.discovery).consul_load()
        source["load"] = {
            "connections": load.connections,
            "max_connections": load.max_connections,
            "peak_connections": load.peak_connections,
            "watches": load.watches,
            "max_watches": load.max_watches,
            "dedicated": load.dedicated,
            "evicted": load.evicted,
            "name_misses": load.name_misses,
            "failing": load.failing,
            "feeds": [
                {"dc": f.dc, "lag_seconds": round(f.lag, 3), "last_contact_seconds": f.last_contact,
                 "refetches": f.refetches}
                for f in load.feeds
            ],
        }
    return {
        "version": __version__,
        "data_path": data_path(),
        "uptime_seconds": round(now - started, 3),
        "listeners": listeners,
        "discovery": source,
        "services": services,
        # The global policy ("*") and each [services...] table's effective one.
        "policies": routing.tables() if routing is not None else {},
    }
