"""One datacenter's catalog in the test server: nodes, services, checks and per-service indexes.

Queries render what Consul's endpoints answer; mutations return the lower-cased names of the services
whose health view changed, so the server can wake exactly the blocking queries that must wake.  The
read paths look instances and checks up by name (a `_Layout` rebuilt after a node, service or check is
added or removed, not after a status change) and reuse each check's rendering until the check or its
service is replaced, so a benchmark with thousands of services measures its client, not this server.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from .model import JSON, Check, ConsulError, Node, Registration, Service, new_coordinate

# changed at all (then no index is spent and nobody is woken).
Mutation = Callable[["Datacenter", int], Optional[Set[str]]]


class _Layout:
    """Where things are: each service name's instances, each instance's (and node's) checks, the check order."""

    def __init__(self, dc: "Datacenter") -> None:
        # Lower-cased name -> (node, service ID) in node, then ID order, as /v1/health/service lists them.
        self.by_name: Dict[str, List[Tuple[str, str]]] = {}
        for node_name in sorted(dc.services):
            services = dc.services[node_name]
            for service_id in sorted(services):
                self.by_name.setdefault(services[service_id].name.lower(), []).append((node_name, service_id))
        # (node, service ID or "" for the node's own) -> check IDs, in the node's registration order.
        self.check_ids: Dict[Tuple[str, str], List[str]] = {}
        for node_name, checks in dc.checks.items():
            for check in checks.values():
                self.check_ids.setdefault((node_name, check.service_id), []).append(check.check_id)
        # /v1/health/state's order: node by node, check ID by check ID.
        self.ordered: List[Tuple[str, str]] = [
            (node_name, check_id) for node_name in sorted(dc.checks) for check_id in sorted(dc.checks[node_name])
        ]


def node_meta_matches(node: Node, filters: Sequence[Tuple[str, str]]) -> bool:
    meta = node.meta or {}
    return all(key in meta and meta[key] == value for key, value in filters)


class Datacenter:
    """One datacenter's catalog: nodes, the services on them, their checks, and per-service indexes."""

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index
        # The index of the last change to the services themselves (not their checks): what
        # /v1/catalog/services reports and blocks on, as Consul's services table index does.
        self.catalog_index = index
        self.nodes: Dict[str, Node] = {}
        self.services: Dict[str, Dict[str, Service]] = {}  # node -> service ID -> service
        self.checks: Dict[str, Dict[str, Check]] = {}  # node -> check ID -> check
        # Lower-cased service name -> index of its last change. Kept after the last instance goes away so
        # the index never moves backwards for a watcher (Consul keeps an extinction index for the same reason).
        self.service_index: Dict[str, int] = {}
        # Its servers' WAN network coordinates (/v1/coordinate/datacenters), by server node name: a new
        # server's, as Consul's lib/coordinate starts one, until a test places it (set_coordinates).
        self.coordinates: Dict[str, Dict[str, JSON]] = {f"{name}-server": new_coordinate()}
        self._layout: Optional[_Layout] = None
        # (node, check ID) -> the check and service last rendered, and their rendering.
        self._rendered: Dict[Tuple[str, str], Tuple[Check, Optional[Service], JSON]] = {}

    def _where(self) -> _Layout:
        if self._layout is None:
            self._layout = _Layout(self)
        return self._layout

    def _moved(self) -> None:
        """A node, service or check was added or removed (or renamed): look things up afresh."""
        self._layout = None
        self._rendered.clear()

    def _render(self, node: str, check: Check, service: Optional[Service]) -> JSON:
        held = self._rendered.get((node, check.check_id))
        if held is not None and held[0] is check and held[1] is service:
            return held[2]
        rendered = check.to_json(service)
        self._rendered[(node, check.check_id)] = (check, service, rendered)
        return rendered

    # -- queries --------------------------------------------------------------------------------------

    def index_of_service(self, service: str) -> int:
        # A never-seen service reports the datacenter's latest index: never 0, so clients can block on it.
        return max(1, self.service_index.get(service.lower(), self.index))

    def names_on_node(self, node: str) -> Set[str]:
        return {s.name.lower() for s in self.services.get(node, {}).values()}

    def health(
        self,
        service: str,
        tags: Sequence[str],
        passing_only: bool,
        node_meta: Sequence[Tuple[str, str]],
    ) -> List[JSON]:
        # Consul matches service names and tags case-insensitively.
        wanted = service.lower()
        wanted_tags = [t.lower() for t in tags]
        entries: List[JSON] = []
        layout = self._where()
        for node_name, service_id in layout.by_name.get(wanted, ()):
            node = self.nodes[node_name]
            if not node_meta_matches(node, node_meta):
                continue
            instance = self.services[node_name][service_id]
            own_tags = {t.lower() for t in instance.tags}
            if any(t not in own_tags for t in wanted_tags):
                continue
            checks = self.checks.get(node_name, {})
            own_checks = [checks[c] for c in layout.check_ids.get((node_name, service_id), ())]
            node_checks = [checks[c] for c in layout.check_ids.get((node_name, ""), ())]
            # ?passing drops an instance when *any* check is not passing, node-level ones included.
            if passing_only and any(c.status != "passing" for c in own_checks + node_checks):
                continue
            entries.append(
                {
                    "Node": node.to_json(self.name),
                    "Service": instance.to_json(),
                    "Checks": [c.to_json(instance) for c in own_checks] + [c.to_json(None) for c in node_checks],
                }
            )
        return entries

    def warm(self) -> None:
        """Lay out and render every check now, as a loaded agent's state store has them ready."""
        self.checks_in_state("any", ())

    def checks_in_state(self, state: str, node_meta: Sequence[Tuple[str, str]]) -> List[JSON]:
        """``/v1/health/state/<state>``: every check (``any``) or those in ``state``, node by node."""
        found: List[JSON] = []
        for node_name, check_id in self._where().ordered:
            if node_meta and not node_meta_matches(self.nodes[node_name], node_meta):
                continue
            check = self.checks[node_name][check_id]
            if state == "any" or check.status == state:
                service = self.services.get(node_name, {}).get(check.service_id) if check.service_id else None
                found.append(self._render(node_name, check, service))
        return found

    def service_tags(self, node_meta: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
        union: Dict[str, Set[str]] = {}
        for node_name, services in self.services.items():
            if not node_meta_matches(self.nodes[node_name], node_meta):
                continue
            for instance in services.values():
                union.setdefault(instance.name, set()).update(instance.tags)
        return {name: sorted(union[name]) for name in sorted(union)}

    # -- mutations (called through ConsulServer._commit, which owns the raft index) --------------------

    def validate(self, registration: Registration) -> None:
        """Refuse a registration before anything changes, so a bad one is all-or-nothing."""
        node = registration.node.name
        known = set(self.services.get(node, {}))
        if registration.service is not None:
            known.add(registration.service.service_id)
        for check in registration.checks:
            if check.service_id and check.service_id not in known:
                raise ConsulError(500, f"Missing service registration: {check.service_id!r} on node {node!r}")

    def apply_registration(self, registration: Registration, index: int) -> Optional[Set[str]]:
        changed = False
        catalog = self.catalog_index
        touched: Set[str] = set()
        node_name = registration.node.name
        old_node = self.nodes.get(node_name)
        if old_node is None or not registration.skip_node_update:
            if registration.node != old_node:
                created = old_node.create_index if old_node is not None else index
                self.nodes[node_name] = replace(registration.node, create_index=created, modify_index=index)
                self.services.setdefault(node_name, {})
                self.checks.setdefault(node_name, {})
                changed = True
                catalog = index
                if old_node is None:
                    self._moved()
                # Node address or meta changes show up in every health entry of the node.
                touched |= self.names_on_node(node_name)
        services = self.services.setdefault(node_name, {})
        if registration.service is not None:
            new = registration.service
            old = services.get(new.service_id)
            if new != old:
                created = old.create_index if old is not None else index
                services[new.service_id] = replace(new, create_index=created, modify_index=index)
                changed = True
                if old is None or old.name != new.name:
                    self._moved()
                catalog = index
                touched.add(new.name.lower())
                if old is not None:
                    touched.add(old.name.lower())
        checks = self.checks.setdefault(node_name, {})
        for check in registration.checks:
            old_check = checks.get(check.check_id)
            if check == old_check:
                continue
            created = old_check.create_index if old_check is not None else index
            checks[check.check_id] = replace(check, create_index=created, modify_index=index)
            changed = True
            if old_check is None or old_check.service_id != check.service_id:
                self._moved()
            touched |= self._affected_by_check(check)
            if old_check is not None:
                touched |= self._affected_by_check(old_check)
        self.catalog_index = catalog
        return touched if changed else None

    def apply_deregistration(self, node: str, service_id: str, check_id: str, index: int) -> Optional[Set[str]]:
        if node not in self.nodes:
            # Consul answers `true` for a node it does not know: deregistration is idempotent.
            return None
        self._moved()
        if not service_id and not check_id:
            self.catalog_index = index
            touched = self.names_on_node(node)
            del self.nodes[node]
            self.services.pop(node, None)
            self.checks.pop(node, None)
            return touched
        changed = False
        touched = set()
        checks = self.checks.get(node, {})
        if service_id:
            gone = self.services.get(node, {}).pop(service_id, None)
            if gone is not None:
                changed = True
                self.catalog_index = index
                touched.add(gone.name.lower())
                for key in [k for k, c in checks.items() if c.service_id == service_id]:
                    del checks[key]
        if check_id:
            gone_check = checks.get(check_id)
            if gone_check is not None:
                touched |= self._affected_by_check(gone_check)
                del checks[check_id]
                changed = True
        return touched if changed else None

    def set_status(self, match: str, status: str, node: Optional[str], index: int) -> Optional[Set[str]]:
        touched: Set[str] = set()
        found = changed = False
        for node_name, checks in self.checks.items():
            if node is not None and node_name != node:
                continue
            for check_id, check in list(checks.items()):
                if check.check_id != match and check.service_id != match:
                    continue
                found = True
                if check.status == status:
                    continue
                checks[check_id] = replace(check, status=status, modify_index=index)
                changed = True
                touched |= self._affected_by_check(check)
        if not found:
            where = f" on node {node!r}" if node is not None else ""
            raise KeyError(f"no check or service {match!r}{where} in datacenter {self.name!r}")
        return touched if changed else None

    def lower_indexes(self, to: int) -> None:
        self.index = self.catalog_index = to
        self.service_index = {name: to for name in self.service_index}

        def clamp(entity: Any) -> Any:
            return replace(
                entity, create_index=min(entity.create_index, to), modify_index=min(entity.modify_index, to)
            )

        self.nodes = {k: clamp(v) for k, v in self.nodes.items()}
        self.services = {n: {k: clamp(v) for k, v in s.items()} for n, s in self.services.items()}
        self.checks = {n: {k: clamp(v) for k, v in c.items()} for n, c in self.checks.items()}

    def _affected_by_check(self, check: Check) -> Set[str]:
        if not check.service_id:
            # A node-level check (serfHealth) is part of every health entry on its node.
            return self.names_on_node(check.node)
        instance = self.services.get(check.node, {}).get(check.service_id)
        return {instance.name.lower()} if instance is not None else set()

