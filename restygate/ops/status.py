"""
The status document of a running gateway: its listeners, where discovery
comes from, and the watched services with their instances, as plain data for
the status page (HTML or JSON).  Everything comes from the views in
L{restygate.ops.views}.
"""

from __future__ import annotations

import html
from typing import Any, Dict, Optional, Sequence

from twisted.internet.interfaces import IAddress, IListeningPort

from restygate import __version__
from restygate.discovery.model import Instance
from restygate.ops.views import IListenerView, IOutlierView, Inspected, Watched

__all__ = ["gateway_status", "render_html"]


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
        "ejected": outliers.is_ejected(w.dc, w.service, instance),
        "inflight": outliers.inflight(w.dc, w.service, instance),
    }


def gateway_status(gateway: Inspected, started: float, now: float) -> Dict[str, Any]:
    """
    The status document: JSON-ready, and what the HTML page shows.
    """
    config = gateway.config()
    listeners = [_listener(role, listener) for role, listener in gateway.listeners()]
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
            "instances": [_instance(w, i, gateway.outliers) for i in w.instances],
        }
        for w in gateway.discovery.watched()
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
