"""
Several worker processes behind the same listeners (C{workers} > 1): one
gateway can use every core.

The parent binds every listener -- before twistd drops privileges, so port
80 works -- and never accepts on them.  Each worker process inherits the
sockets and runs a whole gateway of its own (L{restygate.daemon.workers.child}) but for
discovery, which runs once in the parent and sends every worker its snapshots
(L{DiscoveryHub}); the kernel spreads connections over the workers.

The parent supervises: a worker that dies is started again after a jittered
backoff (reset once it has stayed up a while), and so is one that leaves
the heartbeat the parent sends over a pipe unanswered for C{worker-timeout}
(its reactor is stuck), after the parent kills it.  SIGTERM lets every
worker drain and waits for it; SIGHUP reloads (the parent checks the new
configuration once, then each worker puts it in force); SIGUSR1 is passed on
for access-log reopening.  Worker log lines reach the daemon's log through
the parent, stamped with the worker's number.
"""

from __future__ import annotations

import os
import platform
import random
import signal
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import InvalidLogLevelError, Logger, LogLevel
from twisted.python.failure import Failure

from restygate._compat import write_to_child_now
from restygate.config import Config
from restygate.daemon.reload import Reloader
from restygate.front.listeners import Listener
from restygate.signals import SignalHook
from restygate.pacing import Backoff
from restygate.daemon.workers.admin import WorkerAdmin
from restygate.daemon.workers.hub import DiscoveryHub, make_hub

__all__ = ["WorkerPool", "WorkerProcess", "make_workers", "worker_environment", "STABLE_AFTER", "PYPY_GC"]

log = Logger()

# A worker that stayed up this long (seconds) was healthy: its next crash is
# restarted quickly again instead of after a grown backoff.
STABLE_AFTER = 30.0
# Seconds a worker gets beyond the drain timeout to exit before SIGKILL.
EXIT_GRACE = 5.0
# The most seconds between heartbeats; a short worker-timeout beats faster.
HEARTBEAT_INTERVAL = 5.0

# A worker's GC under PyPy, unless the operator set a variable (measured with
# bench/run --pypy, 2 workers): a 32 MB nursery, as PyPy's cache-sized one
# promotes every in-flight request and halves the throughput; a 64 MB floor
# for the first major collection, as PyPy's default of 8 nurseries let
# workers whose live heap is a few tens of MB grow to 430-475 MB; and 8 MB
# marking steps, as the default of 2 nurseries marks the live heap at once.
PYPY_GC = {"PYPY_GC_NURSERY": "32MB", "PYPY_GC_MIN": "64MB", "PYPY_GC_INCREMENT_STEP": "8MB"}

_CONTROL_FD = 3
_FIRST_LISTEN_FD = 4


def worker_environment(environ: Mapping[str, str], implementation: str) -> Dict[str, str]:
    """
    The environment a worker starts with: ours, plus L{PYPY_GC}'s settings
    of PyPy's GC when running on PyPy, each unless the operator set it.
    """
    env = dict(environ)
    if implementation == "PyPy":
        for name, value in PYPY_GC.items():
            env.setdefault(name, value)
    return env


class WorkerProcess(ProcessProtocol):
    """
    The parent's side of one worker process: its pipes, and what it said.

    @ivar pid: the process id while it runs.
    @ivar admin_port: the port of its admin site, once it is up.
    @ivar ended: fires when the process has exited.
    """

    def __init__(
        self,
        index: int,
        started: float,
        generation: int,
        on_up: Callable[[WorkerProcess], None],
        on_end: Callable[[WorkerProcess, Failure], None],
        on_line: Optional[Callable[[WorkerProcess, bytes], None]] = None,
    ) -> None:
        self.index = index
        self._on_line = on_line
        self.started = started
        # Which configuration the worker read at its start (see WorkerPool).
        self.generation = generation
        self._on_up = on_up
        self.pid: Optional[int] = None
        self.up = False
        self.admin_port: Optional[int] = None
        # When the oldest heartbeat still unanswered was sent.
        self.unanswered_since: Optional[float] = None
        self._stdin_open = True
        self.ended: Deferred[None] = Deferred()
        self._on_end = on_end
        self._pending: Dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._pending.pop(childFD, b"") + data).split(b"\n")
        if lines[-1]:
            self._pending[childFD] = lines[-1]
        for line in lines[:-1]:
            if childFD == _CONTROL_FD:
                self._control(line)
            else:
                self._relay(line, stderr=childFD == 2)

    def _control(self, line: bytes) -> None:
        fields = line.decode("ascii", "replace").split()
        if fields[:1] == ["up"] and len(fields) == 3:
            self.up = True
            self.admin_port = int(fields[2]) if fields[2].isdigit() else None
            self._on_up(self)
        elif fields == ["pong"]:
            self.unanswered_since = None
        elif self._on_line is not None:
            self._on_line(self, line)

    def send(self, line: bytes) -> None:
        """One line to the worker's standard input, while it is open."""
        if self._stdin_open and self.transport is not None:
            write_to_child_now(self.transport, 0, line)

    def heartbeat(self, now: float) -> None:
        """
        Ask the worker to answer; its reactor must turn to do so.
        """
        if self.unanswered_since is None:
            self.unanswered_since = now
        self.send(b"ping\n")

    def childConnectionLost(self, childFD: int) -> None:
        # Twisted forgets the pipe before the process has ended.
        if childFD == 0:
            self._stdin_open = False

    def _relay(self, line: bytes, stderr: bool) -> None:
        # The worker writes "[namespace#level] text"; keep its system and
        # level, add which worker it is, and let the daemon's log stamp the
        # time.  Anything else on stderr is an error (a crash before logging).
        text = line.decode("utf-8", "replace")
        system, level = "stderr", LogLevel.error
        if not stderr and text.startswith("[") and "] " in text:
            system, text = text[1:].split("] ", 1)
            try:
                level = LogLevel.levelWithName(system.rpartition("#")[2])
            except InvalidLogLevelError:
                level = LogLevel.info
        log.emit(level, "{text}", text=text, log_system=f"worker {self.index} {system}")

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in sorted(self._pending.items()):
            if fd != _CONTROL_FD:
                self._relay(rest, stderr=fd == 2)
        self._pending.clear()
        self.pid = None
        self.up = False
        self._on_end(self, reason)
        self.ended.callback(None)

    def signal(self, signum: int) -> None:
        if self.pid is None or self.transport is None:
            return
        try:
            self.transport.signalProcess(signum)
        except ProcessExitedAlready:
            pass


class _Refuse(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class _Shared(Factory):
    protocol = _Refuse
    noisy = False

    def logPrefix(self) -> str:
        return "restygate (shared with the workers)"


class WorkerPool(MultiService):
    """
    The parent of C{config.workers} worker processes sharing the listeners.

    @ivar workers: the worker in each slot, or L{None} while it is being
        restarted.
    @ivar restarts: how many times each slot's worker was started again.
    @ivar log_fd: where the daemon's log goes (its stdout), for workers' access-log lines.
    """

    def __init__(self, config: Config, argv: Sequence[str], reactor: Any, load: Callable[[], Config]) -> None:
        super().__init__()
        self.config = config
        self.clock = reactor
        self.started = reactor.seconds()
        self._argv = list(argv)
        self._environ = worker_environment(os.environ, platform.python_implementation())
        self._reactor = reactor
        self.workers: List[Optional[WorkerProcess]] = [None] * config.workers
        self.restarts = [0] * config.workers
        rng = random.Random()
        self._backoff = [Backoff(0.5, 30.0, rng) for _ in range(config.workers)]
        self._restart: Dict[int, IDelayedCall] = {}
        # Counts reloads, so a worker can be told of one it missed.
        self.generation = 0
        # Never accepts: the parent stops reading the sockets once bound.
        self.listeners = [Listener(description, _Shared(), reactor) for description in config.listen]
        for listener in self.listeners:
            listener.setServiceParent(self)
        self._usr1 = SignalHook(signal.SIGUSR1, lambda: self.signal_all(signal.SIGUSR1), reactor)
        self._heartbeats = LoopingCall(self._heartbeat)
        self._heartbeats.clock = reactor
        self.reloader = Reloader(self, load, reactor)
        self.reloader.setServiceParent(self)
        self.admin_listener: Optional[Listener] = None
        self.hub: Optional[DiscoveryHub] = None
        self.log_fd: Optional[int] = None

    def reconfigure(self, config: Config) -> None:
        """
        The parent has validated C{config}: have every worker reload too.
        """
        self.config = config
        if self.hub is not None:
            self.hub.reconfigure(config)
        self.generation += 1
        self.signal_all(signal.SIGHUP)

    def signal_all(self, signum: int) -> None:
        """
        Pass C{signum} on to every worker that is up; one still starting
        has no handler for it yet (see L{_up}).
        """
        for worker in self.workers:
            if worker is not None and worker.up:
                worker.signal(signum)

    def _up(self, worker: WorkerProcess) -> None:
        if self.hub is not None:
            self.hub.worker_up(worker)
        # A worker that read the configuration before a reload it was not
        # told of reloads now.
        if worker.generation != self.generation:
            worker.generation = self.generation
            worker.signal(signal.SIGHUP)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for listener in self.listeners:
            listener.port.stopReading()  # type: ignore[union-attr]

    def startService(self) -> None:
        super().startService()
        self._usr1.install()
        self._heartbeats.start(min(HEARTBEAT_INTERVAL, self.config.worker_timeout / 3), now=False)
        log.info(
            "starting {n} workers; their admin side (/metrics, /status, /healthz, /readyz) is {admin}",
            n=len(self.workers), admin=self.config.admin or "off",
        )
        for index in range(len(self.workers)):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restart.pop(index, None)
        fds = [listener.port.fileno() for listener in self.listeners]  # type: ignore[union-attr]
        child_fds: Dict[int, Any] = {0: "w", 1: "r", 2: "r", _CONTROL_FD: "r"}
        for offset, fd in enumerate(fds):
            child_fds[_FIRST_LISTEN_FD + offset] = fd
        listen_fds, args_log = ",".join(str(_FIRST_LISTEN_FD + offset) for offset in range(len(fds))), []
        if self.log_fd is not None:  # the worker writes its access-log lines there itself
            child_fds[_FIRST_LISTEN_FD + len(fds)] = self.log_fd
            args_log = ["--log-fd", str(_FIRST_LISTEN_FD + len(fds))]
        args = [
            sys.executable, "-m", "restygate.daemon.workers.child", "--index", str(index), *args_log,
            "--control-fd", str(_CONTROL_FD), "--listen-fds", listen_fds, "--", *self._argv,
        ]
        worker = WorkerProcess(
            index, self._reactor.seconds(), self.generation, self._up, self._ended,
            self.hub.from_worker if self.hub is not None else None,
        )
        self.workers[index] = worker
        self._reactor.spawnProcess(worker, sys.executable, args, env=self._environ, childFDs=child_fds)
        log.info("worker {index} started, pid {pid}", index=index, pid=worker.pid)

    def _heartbeat(self) -> None:
        now = self._reactor.seconds()
        timeout = self.config.worker_timeout
        for worker in self.workers:
            if worker is None or not worker.up:
                continue
            since = worker.unanswered_since
            if since is not None and now - since >= timeout:
                log.error(
                    "worker {index} (pid {pid}) left the heartbeat unanswered for {timeout:g}s; killing it",
                    index=worker.index, pid=worker.pid, timeout=timeout,
                )
                # No longer up: no more heartbeats, signals or admin reads.
                worker.up = False
                worker.signal(signal.SIGKILL)
                continue
            worker.heartbeat(now)

    def _ended(self, worker: WorkerProcess, reason: Failure) -> None:
        index = worker.index
        if self.workers[index] is worker:
            self.workers[index] = None
        if not self.running:
            return
        if self._reactor.seconds() - worker.started >= STABLE_AFTER:
            self._backoff[index].reset()
        delay = self._backoff[index].next()
        self.restarts[index] += 1
        log.error(
            "worker {index} exited ({how}); starting it again in {delay:.1f}s",
            index=index, how=reason.getErrorMessage(), delay=delay,
        )
        self._restart[index] = self._reactor.callLater(delay, self._spawn, index)

    def stopService(self) -> Deferred[None]:
        # Marks us stopped first, so exits from here on are not restarted.
        self.running = False
        self._usr1.remove()
        if self._heartbeats.running:
            self._heartbeats.stop()
        for call in self._restart.values():
            call.cancel()
        self._restart.clear()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        live = [worker for worker in self.workers if worker is not None]
        if live:
            log.info("stopping {n} workers", n=len(live))
        for worker in live:
            worker.signal(signal.SIGTERM)
        for listener in self.listeners:  # ours close now too: new clients refused, not left queued
            await listener.stopService()
        exited = DeferredList([worker.ended for worker in live])
        deadline = self._reactor.callLater(
            self.config.drain_timeout + EXIT_GRACE, self._kill, live
        )
        await exited
        if deadline.active():
            deadline.cancel()
        await super().stopService()

    def _kill(self, workers: Sequence[WorkerProcess]) -> None:
        for worker in workers:
            if worker.pid is not None:
                log.error("worker {index} did not exit in time; killing it", index=worker.index)
                worker.signal(signal.SIGKILL)


def make_workers(
    config: Config, argv: Sequence[str], load: Callable[[], Config], reactor: Any = None
) -> WorkerPool:
    """The parent of a multi-worker gateway for C{config} (restygate options C{argv}), with its admin site."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    pool = WorkerPool(config, argv, reactor, load)
    if not config.catalog:
        # Consul is asked once for the host; the workers get the snapshots.
        pool.hub = make_hub(config, reactor, lambda: [w for w in pool.workers if w is not None and w.up])
        pool.hub.setServiceParent(pool)
    if config.admin:
        admin = WorkerAdmin(pool, reactor, pool.hub.collectors() if pool.hub is not None else [])
        pool.admin_listener = Listener(config.admin, admin.site, reactor)
        pool.admin_listener.setServiceParent(pool)
    return pool
