"""
The weighted set of instances a balancer chooses from, built once per
discovery snapshot and shared by every request that snapshot serves.

Consul gives each instance a weight (C{Service.Weights.Passing}, or
C{Weights.Warning} for one whose checks warn); a L{Choice} turns the weights
into what the pickers need cheaply per request: cumulative weights to map a
number onto an instance by bisection, a stride that walks those numbers in an
interleaved order (so weights 1:3 give A B B B spread out, not in bursts),
and, on demand, a consistent-hash ring.  Everything is computed from the
instances alone, never from Python's per-process salted C{hash()}, so every
worker of a host, and every host, builds the same ring.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate
from math import gcd
from typing import Dict, FrozenSet, List, Optional, Tuple

from restygate.discovery.model import Instance

__all__ = ["Choice", "key_hash"]

# Ring points per unit of weight: enough that an instance's share of keys
# stays within a few percent of its weight's share...
POINTS_PER_WEIGHT = 1000
# ...up to a ring size that still builds in milliseconds (many instances
# each need fewer points for the same accuracy); weights scale down together.
MAX_POINTS = 16384


def key_hash(data: bytes) -> int:
    """
    A 64-bit hash that is the same in every process (unlike C{hash()}).
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _stride(total: int) -> int:
    """
    A step coprime with C{total} near its golden section: C{turn * step}
    modulo C{total} visits every position once per cycle, well interleaved.
    """
    step = max(1, int(total * 0.618))
    while gcd(step, total) != 1:
        step += 1
    return step


class Choice:
    """
    Instances with their weights (each at least 1).

    @ivar uniform: every weight is the same, so pickers may ignore them.
    """

    __slots__ = ("instances", "weights", "total", "uniform", "stride", "_cumulative", "_index",
                 "_ring", "_subset")

    def __init__(self, instances: Tuple[Instance, ...], weights: Tuple[int, ...]) -> None:
        assert instances and len(instances) == len(weights)
        self.instances = instances
        self.weights = weights
        self._cumulative: List[int] = list(accumulate(weights))
        self.total = self._cumulative[-1]
        self.uniform = min(weights) == max(weights)
        self.stride = _stride(self.total)
        self._index: Optional[Dict[Instance, int]] = None
        self._ring: Optional[Tuple[List[int], List[int]]] = None
        self._subset: Optional[Choice] = None

    def position(self, number: int) -> int:
        """
        The index of the instance whose share of the weight holds C{number}
        (taken modulo the total weight).
        """
        return bisect_right(self._cumulative, number % self.total)

    def subset(self, among: Tuple[Instance, ...]) -> Choice:
        """
        The choice over C{among}, some of these instances (those not
        ejected, not tried yet) with their weights; C{self} for all of them.
        The last one is kept: while an instance is ejected every request
        asks for the same subset.
        """
        if among is self.instances:
            return self
        last = self._subset
        if last is not None and last.instances == among:
            return last
        index = self._indexes()
        self._subset = last = Choice(among, tuple(self.weights[index[i]] for i in among))
        return last

    def _indexes(self) -> Dict[Instance, int]:
        if self._index is None:
            self._index = {instance: n for n, instance in enumerate(self.instances)}
        return self._index

    def on_ring(self, key: bytes, allowed: Optional[FrozenSet[Instance]] = None) -> Instance:
        """
        The instance owning C{key} on the consistent-hash ring: the first
        point at or after the key's hash, going round, that belongs to an
        instance in C{allowed} (any instance when not given).  Removing an
        instance only moves the keys its points owned.
        """
        hashes, owners = self._ring or self._build_ring()
        start = bisect_right(hashes, key_hash(key))
        count = len(hashes)
        for step in range(count):
            instance = self.instances[owners[(start + step) % count]]
            if allowed is None or instance in allowed:
                return instance
        raise ValueError("no allowed instance on the ring")

    def _build_ring(self) -> Tuple[List[int], List[int]]:
        scale = min(POINTS_PER_WEIGHT, max(1, MAX_POINTS // self.total))
        points: List[Tuple[int, int]] = []
        for n, (instance, weight) in enumerate(zip(self.instances, self.weights)):
            # The instance's identity, not its place in the list: another
            # instance joining or leaving must not move this one's points.
            # Consul's node and service ID name it uniquely in a datacenter.
            identity = f"{instance.node}/{instance.id}" if instance.id else instance.netloc
            name = f"{identity}#".encode("utf-8", "replace")
            points.extend((key_hash(name + b"%d" % replica), n) for replica in range(weight * scale))
        points.sort()
        self._ring = ring = ([h for h, _ in points], [n for _, n in points])
        return ring
