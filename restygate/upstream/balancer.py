"""
Picks the instance a request goes to, with the strategy its service's
policy names: L{IBalancer}, the interface of L{Balancer}, which lives with
the strategies in L{restygate.upstream.pickers} so that, compiled, the
engine calls it natively.

The balancer keeps its own small state keyed by (datacenter, service),
never inside a snapshot, so a new snapshot from Consul does not reset the
rotation; in-flight counts come from outlier tracking, which sees every
attempt start and end.
"""

from __future__ import annotations

from typing import Optional, Tuple

from zope.interface import Interface, classImplements

from restygate.discovery.model import Instance
from restygate.upstream.choice import Choice
from restygate.upstream.pickers import Balancer

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


# Declared here, not with @implementer: Balancer lives in the compiled
# pickers module (setup.py), where neither a class decorator nor a zope
# Interface may be.
classImplements(Balancer, IBalancer)
