"""
Builds Consul discovery for a L{Config}: one L{ConsulGate} (the connection
budget and the background rate), the client that goes through it, the one
L{Outage} account, the names Consul knows and the change feeds, wired into
a L{ConsulDiscovery}.  The daemon's assembly calls it once per host.
"""

from __future__ import annotations

import random
from typing import Any, Callable, List, Tuple

from restygate.config import Config
from restygate.discovery.consul.client import ConsulClient
from restygate.discovery.consul.feed import ChangeFeed
from restygate.discovery.consul.gate import ConsulGate
from restygate.discovery.consul.names import ConsulNames
from restygate.discovery.consul.outage import Outage
from restygate.discovery.consul.source import ConsulDiscovery
from restygate.discovery.consul.watch import Watcher

__all__ = ["consul_discovery", "dedicated_budget"]


def dedicated_budget(max_connections: int) -> int:
    """
    Watches that may hold a blocking query of their own: a quarter of the
    connections (16 of 64).  The rest stays free for the feeds (the names
    and the change feed of each datacenter asked for), first fetches, one-off
    re-fetches and the datacenter list, so those never queue behind
    connections held for minutes; and an idle gateway re-asks Consul about
    once per held query per consul-wait (16 + 2 per datacenter).
    """
    return max_connections // 4


def eager_names_budget(max_connections: int) -> int:
    """
    Datacenters whose service names are followed from the start, not from
    their first request: an eighth of the connections (8 of 64), each held
    by one blocking query whether or not the datacenter is ever asked for.
    """
    return max_connections // 8


def consul_discovery(config: Config, reactor: Any) -> Tuple[ConsulDiscovery, ConsulClient]:
    """
    Discovery from the Consul agent of C{config}, and its client (to close
    when the gateway stops, and whose C{ping} tells readiness).
    """
    gate = ConsulGate(reactor, config.consul_max_connections, float(config.consul_max_rps))
    client = ConsulClient(
        reactor, config.consul, config.consul_token, ca=config.consul_ca,
        gate=gate, consistency=config.consul_consistency,
    )
    outage = Outage(reactor)
    rng = random.Random()
    names = ConsulNames(client, reactor, outage, wait=config.consul_wait, rng=rng,
                        eager=eager_names_budget(config.consul_max_connections))

    def feed(dc: str, watches: Callable[[], List[Watcher]]) -> ChangeFeed:
        return ChangeFeed(dc, client, reactor, outage, rng, config.consul_wait, watches, names, gate)

    discovery = ConsulDiscovery(
        client,
        reactor,
        tags=config.tags,
        wait=config.consul_wait,
        discovery_timeout=config.discovery_timeout,
        idle_timeout=config.watch_idle_timeout,
        max_stale=config.max_stale,
        datacenter_grace=config.datacenter_grace,
        names=names,
        feed=feed,
        dedicated=dedicated_budget(config.consul_max_connections),
        max_watched=config.max_watched_services,
        outage=outage,
        rng=rng,
        gate=gate,
        last_contact=client.last_contact,
        table=dict(config.services),
    )
    return discovery, client
