"""
One worker process of a multi-worker gateway (L{restygate.daemon.workers.pool}), started
by the parent as C{python -m restygate.daemon.workers.child}; never by hand.

It builds its configuration from the same command line, environment and
config file as the parent, and runs a whole gateway of its own (pool,
watchers, access log) on the listening sockets it inherited.  It talks to
the parent over pipes: its log lines go out on standard output for the
parent to put in the daemon's log (wherever twistd sends it: a file, the
journal), its admin address goes out on the control pipe, and the end of
standard input -- the parent gone, even killed -- makes it stop.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
from typing import Any, List, Mapping, Optional, Sequence

from twisted.internet import tcp
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, SSL4ServerEndpoint, serverFromString
from twisted.internet.fdesc import setNonBlocking
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogEvent,
    PredicateResult,
    eventAsText,
    globalLogBeginner,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from restygate._compat import adopt_listening_socket, install as install_lean_reactor, server_tls_context, write_now
from restygate.config import Config
from restygate.daemon.assembly import make_gateway
from restygate.daemon.gcpolicy import CollectionPolicy
from restygate.daemon.load import load
from restygate.daemon.tap import Options
from restygate.daemon.workers.pool import EXIT_GRACE
from restygate.discovery.remote import RemoteDiscovery
from restygate.ops.admin import ADMIN_LOG_PREFIX

__all__ = ["main", "as_worker", "WORKER_ADMIN"]

log = Logger(namespace="restygate.daemon.workers.child")

# A worker's own admin site, which the parent's admin side reads: loopback,
# on a port the kernel picks.
WORKER_ADMIN = "tcp:0:interface=127.0.0.1"


def as_worker(config: Config) -> Config:
    """
    The configuration a worker runs: the parent's, as one worker, with the
    admin side on a private port when the parent has one.
    """
    return dataclasses.replace(config, workers=1, admin=WORKER_ADMIN if config.admin else None)


@implementer(IStreamServerEndpoint)
class _AdoptedTLS:
    """
    An inherited socket speaking TLS as the C{ssl:} description it was bound
    for says: the certificate and options come from parsing that description
    again, which binds nothing.
    """

    def __init__(self, adopted: IStreamServerEndpoint, tls: SSL4ServerEndpoint) -> None:
        self._adopted = adopted
        self._context = server_tls_context(tls)

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._adopted.listen(TLSMemoryBIOFactory(self._context, False, protocolFactory))


class _OneAcceptPerTurn(tcp.Port):
    """
    A TCP port that accepts one connection per reactor turn.

    Every worker waits on the same socket and all wake for a new
    connection; Twisted's port would accept up to a hundred at once, so
    the first worker awake takes a whole burst (wrk's 50 connections, a
    reconnecting client pool) and the others idle.  One at a time, a busy
    worker leaves the next connection to a less busy one.
    """

    def doRead(self) -> None:
        self.numberAccepts = 1
        # All workers wake for a connection and only one gets it; the
        # others' accept() must fail at once, never wait.  The socket's
        # O_NONBLOCK lives in the description every process shares, and a
        # worker was once seen blocked in accept() with it cleared: assert
        # it before each accept (one fcntl per new connection).
        self.socket.setblocking(False)
        super().doRead()


@implementer(IStreamServerEndpoint)
class _SharedTCPSocket:
    """
    The inherited listening TCP socket C{fd}, shared with the other workers.
    """

    def __init__(self, reactor: Any, fd: int, family: socket.AddressFamily) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        # What reactor.adoptStreamPort does, with our port class; it dups
        # the descriptor, so ours is closed after.
        try:
            setNonBlocking(self._fd)
            port = adopt_listening_socket(_OneAcceptPerTurn, self._reactor, self._fd, self._family, protocolFactory)
            port.startListening()
            os.close(self._fd)
        except BaseException:
            return fail()
        return succeed(port)


def adopted_endpoint(reactor: Any, description: str, fd: int) -> IStreamServerEndpoint:
    """
    The endpoint listening on the inherited socket C{fd}, bound by the
    parent for C{description}.
    """
    probe = socket.socket(fileno=fd)
    family = probe.family
    probe.detach()
    endpoint: IStreamServerEndpoint
    if family in (socket.AF_INET, socket.AF_INET6):
        endpoint = _SharedTCPSocket(reactor, fd, family)
    else:
        endpoint = AdoptedStreamServerEndpoint(reactor, fd, family)
    described = serverFromString(reactor, description)
    if isinstance(described, SSL4ServerEndpoint):
        return _AdoptedTLS(endpoint, described)
    return endpoint


class _Control(Protocol):
    """
    The pipes to the parent: standard input, where its heartbeats come and
    then its end, and the control pipe, where the worker says it is up and
    answers each heartbeat.
    """

    def __init__(self, stop: Any, discovery: Optional[RemoteDiscovery]) -> None:
        self._stop = stop
        self._discovery = discovery
        self._partial = b""

    def dataReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line == b"ping":
                self.transport.write(b"pong\n")  # type: ignore[union-attr]
            elif self._discovery is not None:
                self._discovery.received(line)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._stop("the parent process is gone")


def _exit_now(index: int) -> None:
    log.error("worker {index} did not stop within the drain timeout; exiting now", index=index)
    os._exit(1)


def _observer() -> ILogObserver:
    # No timestamp: the parent stamps each line as it logs it.
    text = FileLogObserver(sys.stdout, lambda event: eventAsText(event, includeTimestamp=False) + "\n")
    return FilteringLogObserver(text, [_not_private_admin])


_PRIVATE_ADMIN_STARTS = f"{ADMIN_LOG_PREFIX} starting on "


@provider(ILogFilterPredicate)
def _not_private_admin(event: LogEvent) -> PredicateResult:
    # A worker's admin site is private: the parent reads it on the port the
    # worker reports on the control pipe.  Its port's "starting on <random
    # port>" line (Twisted logs it whatever the factory's noisy says) would
    # read as a second admin side next to the parent's.
    private = str(event.get("log_text", "")).startswith(_PRIVATE_ADMIN_STARTS)
    result: PredicateResult = PredicateResult.no if private else PredicateResult.maybe
    return result


def main(argv: Optional[Sequence[str]] = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(prog="python -m restygate.daemon.workers.child", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--index", type=int, required=True, help="this worker's number, from 0")
    parser.add_argument("--control-fd", type=int, required=True, help="pipe to tell the parent we are up")
    parser.add_argument("--listen-fds", required=True, help="inherited listening sockets, one per listener, comma-separated")
    parser.add_argument("--log-fd", type=int, help="where the daemon's log goes, for access-log lines")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="-- and the restygate options")
    args = parser.parse_args(argv)
    # Until the gateway handles them, these would end the process (their
    # default action); the parent resends a reload the worker missed.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    options_argv: List[str] = list(args.options)
    if options_argv[:1] == ["--"]:
        options_argv = options_argv[1:]

    # A worker is all data path: the reactor that skips the per-read log
    # context (restygate._compat.lean_reactor), unless one is in already.
    if "twisted.internet.reactor" not in sys.modules:
        install_lean_reactor()
    from twisted.internet import reactor as installed

    reactor: Any = installed
    globalLogBeginner.beginLoggingTo([_observer()], redirectStandardIO=False)

    options = Options()
    options.parseOptions(options_argv)
    assert options.config is not None
    config = as_worker(options.config)
    fds = [int(fd) for fd in args.listen_fds.split(",")]
    if len(fds) != len(config.listen):
        raise SystemExit(f"restygate worker: {len(fds)} sockets for {len(config.listen)} listeners")
    # From Consul, discovery runs in the parent; this worker routes with its snapshots.
    remote = (
        None if config.catalog
        else RemoteDiscovery(lambda line: write_now(control, line), reactor, config.discovery_timeout)
    )
    gateway = make_gateway(
        config,
        reactor,
        load=lambda: as_worker(load(options, environ)),
        endpoints=[adopted_endpoint(reactor, d, fd) for d, fd in zip(config.listen, fds)],
        discovery=remote,
    )
    CollectionPolicy(reactor).setServiceParent(gateway)
    if args.log_fd is not None:
        # Straight to the daemon's log, a line per write, not through the daemon.
        gateway.access_log.write_to(args.log_fd, f"worker {args.index} access")

    stopping: List[str] = []

    def stop(why: str) -> None:
        if stopping:
            return
        stopping.append(why)
        log.info("worker {index} stopping: {why}", index=args.index, why=why)
        # Whatever holds the stop up, a worker must not outlive its drain:
        # an orphan would keep serving on the old configuration, unseen.
        reactor.callLater(config.drain_timeout + EXIT_GRACE, _exit_now, args.index)
        reactor.stop()

    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(stop, signal.Signals(signum).name)

    # Our own handlers, not the reactor's: a terminal's Ctrl-C reaches the
    # whole process group, and the parent's SIGTERM may follow; one stop.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Typed from the Windows StandardIO, which has no stdin/stdout arguments.
    control = StandardIO(_Control(stop, remote), stdin=0, stdout=args.control_fd, reactor=reactor)  # type: ignore[call-arg]

    def started() -> None:
        gateway.startService()
        admin = gateway.admin_listener
        port = admin.port.getHost().port if admin is not None and admin.port is not None else "-"  # type: ignore[attr-defined]
        control.write(f"up {os.getpid()} {port}\n".encode("ascii"))

    gateway.privilegedStartService()
    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
