"""
Twisted's stock reverse proxy in front of the benchmark backend: the baseline
for restygate's "at least 3x stock Twisted" target.

It serves /dc1/web/<path> from http://127.0.0.1:<backend-port>/<path> with
nothing but twisted.web.proxy.ReverseProxyResource and a stock Site, on the
default reactor.  That proxy buffers request bodies, and opens one upstream
connection per request (HTTP/1.0 with Connection: close): this is the cost a
plain Twisted deployment pays, which is the point of the comparison.  The Site
writes its combined-format access log to a file, as restygate and nginx log
every request too.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    parser.add_argument("--backend-port", type=int, required=True, help="backend port on 127.0.0.1")
    parser.add_argument("--access-log", required=True, help="access log file")
    args = parser.parse_args(argv)

    # Imported here so --help does not install a reactor.
    from twisted.internet import reactor as installed
    from twisted.web.proxy import ReverseProxyResource
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    reactor: Any = installed
    # Twisted's web resources are not annotated; neither is what we build here.
    root: Any = Resource()
    dc: Any = Resource()
    root.putChild(b"dc1", dc)
    # A child path "/x" of this resource becomes the upstream path "/x".
    dc.putChild(b"web", ReverseProxyResource("127.0.0.1", args.backend_port, b""))
    site: Any = Site(root, logPath=args.access_log)
    site.noisy = False
    reactor.listenTCP(args.port, site, interface="127.0.0.1")
    # A parent that started us in the background may have left SIGINT
    # ignored; let the reactor stop on it as on SIGTERM.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
