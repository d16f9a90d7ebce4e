"""
Where a request is served: its own datacenter when that has a usable
instance, otherwise -- when its service's policy says C{failover} -- the
first datacenter in failover order that has one.

The order is the policy's list (C{failover = ["dc2", "dc3"]}) or, for
C{failover = "nearest"}, the datacenters by network distance from the one
asked for (Consul's coordinates, L{restygate.discovery.consul.coordinates}),
at most C{failover-limit} of them.  "Usable" means an instance the policy
lets the request use (passing, warning ones with C{include-warning}, panic
mode's) that is not ejected.  Failover is off by default: clients often
pick a datacenter because their data lives there.  A datacenter Consul does
not know, or where the service is unknown or discovery is down, is passed
over; the request's own datacenter's errors stand as they are.
"""

from __future__ import annotations

from typing import List, Optional, Union

from twisted.internet.defer import Deferred

from restygate.discovery.model import DiscoveryError, NoUsableInstance, Snapshot
from restygate.proxy.parts import EngineParts, Nearest
from restygate.proxy.policy import Policy
from restygate.proxy.routing import Route
from restygate.upstream.choice import Choice

__all__ = ["Found", "Nearest", "find", "find_now"]


class Found:
    """
    Where the request goes: its route (the datacenter that serves, the
    prefix it was asked under), that service's policy there, what discovery
    knows of it, and the weighted instances to pick from.
    """

    # A plain class, not a named tuple or a frozen dataclass: one is made per
    # request, and compiled (setup.py) it is a native one, made and read
    # without Python code (a named tuple's constructor is Python) or lookups
    # by name; a frozen dataclass sets each field through object.__setattr__.
    __slots__ = ("route", "policy", "snapshot", "choice")

    def __init__(self, route: Route, policy: Policy, snapshot: Snapshot, choice: Choice) -> None:
        self.route = route
        self.policy = policy
        self.snapshot = snapshot
        self.choice = choice


def _usable(parts: EngineParts, snapshot: Snapshot, choice: Optional[Choice]) -> bool:
    return choice is not None and not parts.outliers.all_ejected(snapshot.dc, snapshot.service, choice.instances)


def _here(parts: EngineParts, route: Route, policy: Policy, snapshot: Snapshot) -> Optional[Found]:
    choice = parts.policies.choice(policy, snapshot)
    # _usable's test, without its call: this runs for every request.
    if choice is None or parts.outliers.all_ejected(snapshot.dc, snapshot.service, choice.instances):
        return None
    return Found(route, policy, snapshot, choice)


def find_now(parts: EngineParts, route: Route, policy: Policy) -> Optional[Found]:
    """
    Where C{route} is served, when that is known without waiting: its own
    datacenter's snapshot is held and has an instance to use.  The usual
    case, on every request, so it costs no L{Deferred}; L{None} sends the
    request the long way (L{find}), which waits, fails over or says why not.
    """
    snapshot = parts.discovery.current(route.dc, route.service)
    return None if snapshot is None else _here(parts, route, policy, snapshot)


def find(parts: EngineParts, route: Route, policy: Policy) -> Deferred[Found]:
    """
    Where C{route} is served under C{policy}.

    @raise NoUsableInstance: nowhere (after failover, when it is on).
    @raise DiscoveryError: the datacenter asked for is unknown, or its
        service, or discovery is down for it (no failover then).
    """
    looked_up: Deferred[Snapshot] = parts.discovery.lookup(route.dc, route.service)
    return looked_up.addCallback(_here_or_elsewhere, parts, route, policy)


def _here_or_elsewhere(
    snapshot: Snapshot, parts: EngineParts, route: Route, policy: Policy
) -> Union[Found, Deferred[Found]]:
    # A snapshot with an instance to use costs no coroutine.
    return _here(parts, route, policy, snapshot) or Deferred.fromCoroutine(_elsewhere(parts, route, policy))


async def _elsewhere(parts: EngineParts, route: Route, policy: Policy) -> Found:
    for dc in await _order(parts, route.dc, policy):
        try:
            other: Snapshot = await parts.discovery.lookup(dc, route.service)
        except DiscoveryError:
            continue
        there = parts.policies.policy(other.dc, route.service)
        choice = parts.policies.choice(there, other)
        if _usable(parts, other, choice):
            assert choice is not None
            # Served from there, under the prefix it was asked by.
            return Found(Route(other.dc, route.service, route.target, route.prefix), there, other, choice)
    raise NoUsableInstance(f"no usable instance of {route.service} in {route.dc} or its failover datacenters")


async def _order(parts: EngineParts, dc: str, policy: Policy) -> List[str]:
    failover = policy.config.failover
    if not failover:
        return []
    if failover == "nearest":
        # The static catalog has no coordinates: nothing is near (documented;
        # not logged, or every such request would log a line).
        if parts.nearest is None:
            return []
        order: List[str] = await parts.nearest(dc)
    else:
        order = list(failover)
    limit = policy.config.failover_limit
    order = [other for other in order if other.lower() != dc.lower()]
    return order[:limit] if limit is not None else order
