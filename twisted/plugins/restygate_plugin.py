"""
The C{twistd restygate} plugin.  Deliberately thin: it names the module that
holds the options and the service maker, which is imported only when the
plugin is used, so C{twistd --help} stays fast and cannot fail on it.
"""

from twisted.application.service import ServiceMaker

restygate = ServiceMaker(
    "restygate",
    "restygate.daemon.tap",
    "HTTP gateway routing /<datacenter>/<service>/<path> to Consul's passing instances",
    "restygate",
)
