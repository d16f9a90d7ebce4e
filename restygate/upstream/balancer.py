"""
Picks the instance a request goes to, with the strategy its service's
policy names (L{restygate.upstream.pickers}).

The balancer keeps its own small state keyed by (datacenter, service),
never inside a snapshot, so a new snapshot from Consul does not reset the
rotation; in-flight counts come from outlier tracking, which sees every
attempt start and end.
"""

from __future__ import annotations

import random
from typing import Callable, Optional, Tuple

from zope.interface import Interface, implementer

from restygate.discovery.model import Instance
from restygate.upstream.choice import Choice
from restygate.upstream.pickers import PICKERS, PickState

__all__ = ["IBalancer", "Balancer"]


class IBalancer(Interface):
    """
    Chooses among a service's instances.
    """

    def pick(
        strategy: str,
        dc: str,
        service: str,
        choice: Choice,
        among: Tuple[Instance, ...],
        key: Optional[bytes] = None,
    ) -> Instance:
        """
        One of C{among} (a non-empty subset of C{choice}'s instances, or
        C{choice.instances} itself), chosen by the named strategy; C{key}
        is the request's hash key, for C{hash}.
        """


@implementer(IBalancer)
class Balancer:
    """
    Every strategy of L{PICKERS}, sharing one state.
    """

    def __init__(
        self, inflight: Callable[[str, str, Instance], int], rng: Optional[random.Random] = None
    ) -> None:
        self._state = PickState(inflight, rng)

    def pick(self, strategy: str, dc: str, service: str, choice: Choice, among: Tuple[Instance, ...],
             key: Optional[bytes] = None) -> Instance:
        return PICKERS[strategy](self._state, dc, service, choice, among, key)
