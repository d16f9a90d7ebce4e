"""
Picks the instance a request goes to from a discovery snapshot.

Balancers keep their own small state keyed by (datacenter, service), never
inside the snapshot, so a new snapshot from Consul does not reset the
rotation.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from zope.interface import Interface, implementer

from restygate.discovery.model import Instance, Snapshot

__all__ = ["IBalancer", "RoundRobin"]


class IBalancer(Interface):
    """
    A strategy for choosing among a service's instances.
    """

    def pick(snapshot: Snapshot, among: Optional[Tuple[Instance, ...]] = None) -> Instance:
        """
        One instance of a non-empty snapshot, or of C{among} (a non-empty
        subset of it: the ones not ejected, not tried yet) when given.
        """


@implementer(IBalancer)
class RoundRobin:
    """
    Each (datacenter, service) in turn, over whatever its current snapshot
    holds.
    """

    def __init__(self) -> None:
        self._next: Dict[Tuple[str, str], int] = {}

    def pick(self, snapshot: Snapshot, among: Optional[Tuple[Instance, ...]] = None) -> Instance:
        key = (snapshot.dc, snapshot.service)
        turn = self._next.get(key, 0)
        self._next[key] = (turn + 1) & 0x3FFFFFFF
        instances = snapshot.instances if among is None else among
        return instances[turn % len(instances)]
