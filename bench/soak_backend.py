"""
A tiny HTTP/1.1 keep-alive backend for bench/soak, one process per instance.

    python3 bench/soak_backend.py --port 18001 --name web-1

Answers every method on every path with 200, an C{X-Soak-Backend: <name>}
header and a one-line body that says who answered and what it received, so the soak client can check that a request
(and its body, after a retry replay) arrived intact:

    ok <name> <METHOD> <body length> <crc32 of the body, 8 hex digits>\\n

HEAD gets the same headers (Content-Length of that line) and no body.  A
query string with C{delay=<ms>} holds the answer that long: requests in
flight when bench/soak SIGKILLs the process are what exercise restygate's
retry of idempotent requests that failed before any response.

It needs nothing from restygate or tests/ and is killed and restarted on the
same port by bench/soak (Twisted listens with SO_REUSEADDR, so a restart is
not refused by the killed process's TIME_WAIT sockets).
"""

from __future__ import annotations

import argparse
import signal
import sys
import zlib
from typing import Any, List, Optional, cast
from urllib.parse import parse_qs, urlsplit

from twisted.internet.interfaces import IDelayedCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

# Longest accepted ?delay=, so that a typo cannot hold a soak connection for minutes.
MAX_DELAY_MS = 1000


class Answer(Resource):
    isLeaf = True

    def __init__(self, reactor: Any, name: str) -> None:
        super().__init__()
        self._reactor = reactor
        self._name = name.encode("ascii")

    def render(self, request: Request) -> Any:
        content = request.content
        body = content.read() if content is not None else b""
        line = b"ok %s %s %d %08x\n" % (self._name, request.method, len(body), zlib.crc32(body) & 0xFFFFFFFF)
        request.setHeader(b"Content-Type", b"text/plain")
        # Says who answered a HEAD too (which has no body to say it in).
        request.setHeader(b"X-Soak-Backend", self._name)
        delay_ms = _delay_ms(request.uri)
        if not delay_ms:
            # Returning bytes: twisted.web sets Content-Length and, for HEAD,
            # sends the headers only.
            return line
        request.setHeader(b"Content-Length", b"%d" % len(line))
        call: List[Optional[IDelayedCall]] = [None]

        def answer() -> None:
            call[0] = None
            if request.method != b"HEAD":
                request.write(line)
            request.finish()

        def gone(_: Any) -> None:
            # The client (restygate) went away first: do not write to a dead request.
            if call[0] is not None and call[0].active():
                call[0].cancel()

        call[0] = self._reactor.callLater(delay_ms / 1000.0, answer)
        request.notifyFinish().addErrback(gone)
        return NOT_DONE_YET


def _delay_ms(uri: bytes) -> int:
    query = parse_qs(urlsplit(uri.decode("latin-1")).query)
    try:
        return max(0, min(MAX_DELAY_MS, int(query.get("delay", ["0"])[0])))
    except ValueError:
        return 0


class QuietSite(Site):
    # An access-log line per request would cost the backend more CPU than
    # answering; the soak counts requests itself.
    noisy = False

    def log(self, request: Any) -> None:
        pass


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--name", required=True, help="put in every answer")
    args = parser.parse_args(argv)
    from twisted.internet import reactor as global_reactor

    reactor = cast(Any, global_reactor)
    site = QuietSite(Answer(reactor, args.name))
    try:
        reactor.listenTCP(args.port, site, interface=args.interface, backlog=128)
    except Exception as e:  # CannotListenError: one line, and the caller sees a non-zero exit
        print(f"soak_backend {args.name}: cannot listen: {e}", file=sys.stderr)
        return 1
    # Started from a script, SIGINT may be ignored; bench/soak stops us with
    # SIGTERM (or SIGKILL on purpose), which the reactor handles.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
