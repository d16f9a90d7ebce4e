"""
The engine: everything that decides where a request goes and what becomes
of it, whichever front received it.

A front hands it a L{Downstream} (the request and the means to answer it);
the engine runs one L{Exchange} for it: route, discovery, balancer and
outlier detection, attempts on instances with retries inside the retry
budget, and the relay of the answer.  The state those steps share (outliers,
the balancer, the routing policies, the retry budget) and the observers
(access log, metrics) told about every finished request are its base
class's, L{EngineParts}.
"""

from __future__ import annotations

from restygate.proxy.downstream import Downstream
from restygate.proxy.exchange import Exchange
from restygate.proxy.parts import EngineParts

__all__ = ["Engine"]


class Engine(EngineParts):
    """
    The gateway's data path behind its fronts.
    """

    def handle(self, request: Downstream) -> Exchange:
        """Serve one request."""
        exchange = Exchange(self, request)
        request.attach(exchange)
        exchange.run()
        return exchange
