"""
The HTML status pages, from the status documents (the same data the JSON
answers carry): a gateway's (L{gateway_page}) and the parent's page over its
workers (L{workers_page}).  Built with L{twisted.web.template}, which escapes
every value and closes every element; a page is self-contained: no scripts,
no external assets, only an inline style.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

from twisted.python.failure import Failure
from twisted.web.template import Tag, flatten, tags

__all__ = ["gateway_page", "workers_page"]

_STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
    "th{background:#f0f0f0}h2{margin-top:1.5em}"
)


def _cell(value: Any) -> Union[str, Tag]:
    if isinstance(value, Tag):
        return value
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _table(headings: Sequence[str], rows: Sequence[Sequence[Any]]) -> Tag:
    return tags.table(
        tags.thead(tags.tr([tags.th(heading) for heading in headings])),
        tags.tbody([tags.tr([tags.td(_cell(value)) for value in row]) for row in rows]),
    )


def _render(version: str, *content: Any) -> bytes:
    page = tags.html(lang="en")(
        tags.head(tags.meta(charset="utf-8"), tags.title("restygate status"), tags.style(_STYLE)),
        tags.body(tags.h1(f"restygate {version}"), *content),
    )
    out: List[bytes] = [b"<!DOCTYPE html>\n"]
    failed: List[Failure] = []
    # Nothing in a page waits on a Deferred, so this completes at once.
    flatten(None, page, out.append).addErrback(failed.append)
    if failed:
        failed[0].raiseException()
    return b"".join(out) + b"\n"


def _policies(policies: Dict[str, Dict[str, Any]]) -> Tag:
    """
    Routing policies, a row each; the columns are the settings' names.
    """
    first = next(iter(policies.values()), {})
    return _table(["", *first], [[name, *policy.values()] for name, policy in policies.items()])


def gateway_page(status: Dict[str, Any]) -> bytes:
    """
    A gateway's status document (L{restygate.ops.status.gateway_status}) as
    a page: its listeners, and each watched service with its instances.
    """
    source = status["discovery"]
    where = source.get("address") or source.get("path")
    content: List[Any] = [
        tags.p(
            f"Up for {_cell(status['uptime_seconds'])} s; discovery from {source['kind']} ",
            tags.code(_cell(where)), ".",
        ),
        *_consul_load(source.get("load")),
        tags.h2("Listeners"),
        _table(
            ["role", "description", "bound to"],
            [[l["role"], l["description"], l["address"]] for l in status["listeners"]],
        ),
        tags.h2("Routing policies"),
        _policies(status["policies"]),
        tags.h2("Services"),
    ]
    if not status["services"]:
        content.append(tags.p("Nothing watched yet: services are watched from their first request."))
    for s in status["services"]:
        content += [
            tags.h3(f"{s['dc']} / {s['service']}"),
            _table(
                ["synced", "last sync (s ago)", "index", "errors in a row", "last error"],
                [[s["synced"], s["last_sync_age_seconds"], s["index"], s["errors"], s["last_error"]]],
            ),
            _policies({"policy": s["policy"]} if s["policy"] else {}),
            _table(
                ["address", "port", "id", "node", "tags", "meta", "weight", "ejected", "in flight"],
                [
                    [i["address"], i["port"], i["id"], i["node"], i["tags"], i["meta"], i["weight"], i["ejected"],
                     i["inflight"]]
                    for i in s["instances"]
                ],
            ),
        ]
    return _render(status["version"], *content)


def _consul_load(load: Optional[Dict[str, Any]]) -> List[Any]:
    if load is None:
        return []
    return [
        tags.p(
            f"Consul connections in use {load['connections']} of {load['max_connections']} "
            f"(peak {load['peak_connections']}); watches {load['watches']} of {load['max_watches']} "
            f"({load['dedicated']} with a blocking query of their own, {load['evicted']} dropped); "
            f"{load['name_misses']} requests for names Consul does not know; {load['failing']} queries failing."
        ),
        _table(
            ["change feed of", "lag (s)", "last contact (s)", "re-fetches"],
            [[f["dc"], f["lag_seconds"], f["last_contact_seconds"], f["refetches"]] for f in load["feeds"]],
        ),
    ]


def workers_page(status: Dict[str, Any]) -> bytes:
    """
    The parent's status document over its workers as a page: a row per
    worker, linking the page of each one that is up.
    """
    rows = []
    for w in status["workers"]:
        name = f"worker {w['index']}"
        rows.append([
            tags.a(name, href=f"?worker={w['index']}") if w["up"] else name,
            w["pid"],
            "up" if w["up"] else "down",
            None if w["uptime_seconds"] is None else f"{w['uptime_seconds']:.0f} s",
            w["restarts"],
        ])
    return _render(
        status["version"],
        tags.p(
            f"{len(status['workers'])} worker processes; up {status['uptime_seconds']:.0f} s. "
            "Each worker's page shows its instances, watches and pool."
        ),
        _table(["worker", "pid", "state", "uptime", "restarts"], rows),
    )
