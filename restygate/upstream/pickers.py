"""
The balancing strategies, each a small function chosen by name from
L{PICKERS} (the C{balancer} setting), in the manner of Fabio's pickers.

Every picker gets the full weighted L{Choice} of a service and C{among}, the
instances of it this attempt may use (not ejected, not tried yet: usually
all of them, and then the very same tuple, which keeps the common case
free of any filtering).  Each honours the instances' weights:

  - C{round-robin}: each instance in turn, weighted by an interleaved walk
    of the weights; equal weights give plain rotation.
  - C{random}: a weighted random instance.
  - C{least-request}: power of two choices: two weighted random instances,
    the one with fewer requests in flight for its weight wins (Envoy's
    weight / (active + 1)).
  - C{hash}: consistent hashing of a key taken from the request; an
    instance leaving moves only the keys it owned.  A request without the
    key is balanced round-robin.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, FrozenSet, Optional, Tuple

from restygate.discovery.model import Instance
from restygate.upstream.choice import Choice

__all__ = ["PICKERS", "PickState", "Picker", "Balancer"]


class PickState:
    """
    What pickers remember between requests, per (datacenter, service):
    the round-robin turn survives a new snapshot from Consul.

    @param inflight: requests in flight to an instance of (dc, service).
    """

    def __init__(
        self, inflight: Callable[[str, str, Instance], int], rng: Optional[random.Random] = None
    ) -> None:
        self.inflight = inflight
        self.random = (rng or random.Random()).random
        self.turns: Dict[Tuple[str, str], int] = {}


Picker = Callable[[PickState, str, str, Choice, Tuple[Instance, ...], Optional[bytes]], Instance]


def round_robin(
    state: PickState, dc: str, service: str, choice: Choice, among: Tuple[Instance, ...], key: Optional[bytes]
) -> Instance:
    pair = (dc, service)
    turn = state.turns.get(pair, 0)
    state.turns[pair] = (turn + 1) & 0x3FFFFFFF
    usable = choice.subset(among)
    if usable.uniform:
        return among[turn % len(among)]
    return among[usable.position(turn * usable.stride)]


def _weighted(state: PickState, usable: Choice) -> int:
    if usable.uniform:
        return int(state.random() * len(usable.instances))
    return usable.position(int(state.random() * usable.total))


def random_pick(
    state: PickState, dc: str, service: str, choice: Choice, among: Tuple[Instance, ...], key: Optional[bytes]
) -> Instance:
    return among[_weighted(state, choice.subset(among))]


def least_request(
    state: PickState, dc: str, service: str, choice: Choice, among: Tuple[Instance, ...], key: Optional[bytes]
) -> Instance:
    count = len(among)
    if count == 1:
        return among[0]
    usable = choice.subset(among)
    first = _weighted(state, usable)
    second = _weighted(state, usable)
    if second == first:
        second = (first + 1) % count
    a, b = among[first], among[second]
    # Compare weight / (in flight + 1) without dividing.
    load_a = (state.inflight(dc, service, a) + 1) * usable.weights[second]
    load_b = (state.inflight(dc, service, b) + 1) * usable.weights[first]
    return a if load_a <= load_b else b


def hashed(
    state: PickState, dc: str, service: str, choice: Choice, among: Tuple[Instance, ...], key: Optional[bytes]
) -> Instance:
    if key is None:
        return round_robin(state, dc, service, choice, among, key)
    # The ring of all the service's instances, skipping those not allowed:
    # a key whose instance is ejected goes to the next one on the ring and
    # comes back when it returns.
    allowed: Optional[FrozenSet[Instance]] = None if among is choice.instances else frozenset(among)
    return choice.on_ring(key, allowed)


PICKERS: Dict[str, Picker] = {
    "round-robin": round_robin,
    "least-request": least_request,
    "random": random_pick,
    "hash": hashed,
}


class Balancer:
    """
    Every strategy of L{PICKERS}, sharing one state
    (L{restygate.upstream.balancer.IBalancer}).
    """

    def __init__(
        self, inflight: Callable[[str, str, Instance], int], rng: Optional[random.Random] = None
    ) -> None:
        self._state = PickState(inflight, rng)

    def pick(self, strategy: str, dc: str, service: str, choice: Choice, among: Tuple[Instance, ...],
             key: Optional[bytes] = None) -> Instance:
        return PICKERS[strategy](self._state, dc, service, choice, among, key)
