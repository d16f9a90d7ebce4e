"""
The C{twistd restygate} plugin.  Deliberately thin: it names the module that
holds the options and the service maker, which is imported only when the
plugin is used, so C{twistd --help} stays fast and cannot fail on it.

It also names restygate's reactor, C{twistd --reactor=restygate}: Twisted's
epoll reactor without the log context around each read
(L{restygate._compat.lean_reactor}), which the gateway installs itself
when twistd was not told of another one.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

restygate = ServiceMaker(
    "restygate",
    "restygate.daemon.tap",
    "HTTP gateway routing /<datacenter>/<service>/<path> to Consul's passing instances",
    "restygate",
)

restygate_reactor = Reactor(
    "restygate",
    "restygate._compat",
    "epoll(4) reactor dispatching plain reads without the per-event log context (restygate's data path)",
)
