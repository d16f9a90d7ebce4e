"""
The soak's chaos: every few seconds (seeded RNG) one of

- kill: SIGKILL a backend process, start it again on the same port a few
  seconds later (Consul still says passing: only restygate's retries and
  passive ejection stand between the client and the dead instance);
- flip: set a backend's Consul check critical, passing again a few seconds
  later (discovery must take it out of rotation, and back);
- both: either kill a backend and then mark it critical, as Consul's own
  check would notice a while later (passing again after its restart), or
  kill one backend and flip another.

Never are all backends out at once ("out" = killed or critical), and no more
than C{max_killed} are killed at once (default 1: with 2 of 3 dead, the
retry budget of 20 % is outrun by design, see bench/soak --help).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from soak_procs import Children, say, wait_listening

# Seconds: between two chaos events; a killed backend stays down; a flipped
# check stays critical; a killed backend's check turns critical after the kill.
EVENT_GAP = (2.0, 6.0)
KILL_FOR = (2.0, 6.0)
CRITICAL_FOR = (3.0, 10.0)
NOTICED_AFTER = (0.5, 2.0)
# A restarted backend must listen within this long (Python + Twisted start-up).
RESTART_TIMEOUT = 15.0


class Backend:
    def __init__(self, index: int, port: int) -> None:
        self.name = f"web-{index}"
        self.port = port
        self.node = f"node-{self.name}"
        self.check_id = f"service:{self.name}"
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.killed = False
        self.critical = False
        # (start, end) of each time Consul said critical, soak-relative seconds.
        self.critical_spans: List[Tuple[float, Optional[float]]] = []

    def registration(self, status: str) -> Dict[str, Any]:
        """
        The C{PUT /v1/catalog/register} body for this instance and its check.
        """
        return {
            "Datacenter": "dc1",
            "Node": self.node,
            "Address": "127.0.0.1",
            "Service": {"ID": self.name, "Service": "web", "Address": "127.0.0.1", "Port": self.port},
            "Check": {
                "CheckID": self.check_id, "Name": f"{self.name} alive", "ServiceID": self.name,
                "Status": status,
            },
        }


class Chaos(threading.Thread):
    def __init__(
        self,
        rng: random.Random,
        backends: List[Backend],
        children: Children,
        start_backend: Callable[[Backend], bool],
        consul_port: int,
        origin: float,
        max_killed: int,
    ) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self._rng = rng
        self._backends = backends
        self._children = children
        self._start_backend = start_backend
        self._consul_port = consul_port
        self._origin = origin
        self._max_killed = max_killed
        self._quit = threading.Event()
        self._lock = threading.Lock()
        # (when, action, backend): restarts and check flips to come.
        self._pending: List[Tuple[float, str, Backend]] = []
        # (soak time, what happened) for the report and failure correlation.
        self.timeline: List[Tuple[float, str]] = []
        # (soak time, which backends are out right after that event)
        self.states: List[Tuple[float, str]] = []
        self.counts = {"kill": 0, "flip": 0, "kill+critical": 0, "kill+flip": 0, "skipped": 0}
        self.errors: List[str] = []

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        next_event = time.monotonic() + self._rng.uniform(*EVENT_GAP)
        while not self._quit.is_set():
            now = time.monotonic()
            with self._lock:
                self._run_due(now)
                if now >= next_event:
                    self._event()
                    next_event = now + self._rng.uniform(*EVENT_GAP)
            self._quit.wait(0.05)

    def finish(self, timeout: float) -> None:
        """
        Stop making events, then undo every pending one now: all backends
        running and passing again.
        """
        self._quit.set()
        self.join(timeout)
        with self._lock:
            # What is pending only ever undoes an event (or marks a killed
            # backend critical, moot now): undo them all directly instead.
            self._pending = []
            for backend in self._backends:
                if backend.killed:
                    self._do("restart", backend)
                if backend.critical:
                    self._do("passing", backend)

    # -- events ------------------------------------------------------------------------------------

    def _out(self) -> int:
        return sum(1 for b in self._backends if b.killed or b.critical)

    def _event(self) -> None:
        healthy = [b for b in self._backends if not b.killed and not b.critical]
        killed = sum(1 for b in self._backends if b.killed)
        room = len(self._backends) - 1 - self._out()  # how many more may go out
        possible = []
        if room >= 1 and healthy:
            possible.append(("flip", 4))
            if killed < self._max_killed:
                possible += [("kill", 4), ("kill+critical", 1)]
        if room >= 2 and len(healthy) >= 2 and killed < self._max_killed:
            possible.append(("kill+flip", 1))
        if not possible:
            self.counts["skipped"] += 1
            self._note("skip: already as many backends out as allowed")
            return
        kind = self._rng.choices([k for k, _ in possible], [w for _, w in possible])[0]
        self.counts[kind] += 1
        now = time.monotonic()
        first = self._rng.choice(healthy)
        if kind == "flip":
            critical_for = self._rng.uniform(*CRITICAL_FOR)
            self._do("critical", first, f"for {critical_for:.1f}s")
            self._pending.append((now + critical_for, "passing", first))
            return
        down_for = self._rng.uniform(*KILL_FOR)
        self._do("kill", first, f"for {down_for:.1f}s")
        self._pending.append((now + down_for, "restart", first))
        if kind == "kill+critical":
            noticed = self._rng.uniform(*NOTICED_AFTER)
            self._pending.append((now + min(noticed, down_for - 0.1), "critical", first))
            self._pending.append((now + down_for + self._rng.uniform(*NOTICED_AFTER), "passing", first))
        elif kind == "kill+flip":
            second = self._rng.choice([b for b in healthy if b is not first])
            critical_for = self._rng.uniform(*CRITICAL_FOR)
            self._do("critical", second, f"for {critical_for:.1f}s")
            self._pending.append((now + critical_for, "passing", second))

    def _run_due(self, now: float) -> None:
        due = [p for p in self._pending if p[0] <= now]
        if not due:
            return
        self._pending = [p for p in self._pending if p[0] > now]
        for _, action, backend in sorted(due, key=lambda p: p[0]):
            self._do(action, backend)

    def _do(self, action: str, backend: Backend, detail: str = "") -> None:
        if action == "kill":
            proc = backend.proc
            backend.killed = True
            if proc is not None and proc.poll() is None:
                pid = proc.pid
                proc.kill()  # SIGKILL, by PID
                proc.wait(5)
                self._note(f"SIGKILL {backend.name} (pid {pid}) {detail}".rstrip())
            else:
                self._note(f"{backend.name} was not running at kill time")
        elif action == "restart":
            if self._start_backend(backend):
                backend.killed = False
                new_pid = backend.proc.pid if backend.proc is not None else "?"
                self._note(f"restarted {backend.name} on :{backend.port} (pid {new_pid})")
            else:
                self._error(f"{backend.name} did not come back on :{backend.port}")
        elif action == "critical":
            # The span starts once Consul has it (restygate cannot know earlier).
            if self._set_check(backend, action):
                backend.critical = True
                backend.critical_spans.append((self._now(), None))
                self._note(f"Consul: {backend.name} critical {detail}".rstrip())
        elif action == "passing":
            # The span ends before the write: Consul wakes restygate's
            # blocking query before this thread sees its answer, so restygate
            # may route to the instance a few ms before the PUT returns here.
            span = backend.critical_spans[-1] if backend.critical_spans else None
            if span is not None and span[1] is None:
                backend.critical_spans[-1] = (span[0], self._now())
            if self._set_check(backend, action):
                backend.critical = False
                self._note(f"Consul: {backend.name} passing {detail}".rstrip())
            elif span is not None and span[1] is None:
                backend.critical_spans[-1] = span

    def _set_check(self, backend: Backend, status: str) -> bool:
        body = json.dumps(backend.registration(status)).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self._consul_port, timeout=5)
        try:
            conn.request("PUT", "/v1/catalog/register", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                self._error(f"Consul refused {status} for {backend.name}: {response.status} {answer[:200]!r}")
                return False
            return True
        except OSError as e:
            self._error(f"Consul unreachable flipping {backend.name} {status}: {e}")
            return False
        finally:
            conn.close()

    def _now(self) -> float:
        return time.monotonic() - self._origin

    def out_state(self) -> str:
        out = [
            f"{b.name} " + "+".join(w for w, on in (("killed", b.killed), ("critical", b.critical)) if on)
            for b in self._backends
            if b.killed or b.critical
        ]
        return ", ".join(out) or "none"

    def _note(self, what: str) -> None:
        t = self._now()
        self.timeline.append((t, what))
        self.states.append((t, self.out_state()))
        say(f"[{t:6.1f}s] chaos: {what}")

    def _error(self, what: str) -> None:
        self.errors.append(what)
        self._note(f"ERROR {what}")


def backend_argv(python: str, backend: Backend) -> List[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    return [python, os.path.join(here, "soak_backend.py"), "--port", str(backend.port), "--name", backend.name]


def start_backend(
    children: Children, python: str, backend: Backend, log_dir: str,
) -> bool:
    """
    Start C{backend}'s process on its port and wait until it listens; a few
    tries, in case the port is briefly unavailable after a kill.
    """
    deadline = time.monotonic() + RESTART_TIMEOUT
    while time.monotonic() < deadline:
        proc = children.spawn(
            backend.name, backend_argv(python, backend), os.path.join(log_dir, f"{backend.name}.log"), log_dir,
        )
        backend.proc = proc
        if wait_listening(backend.port, proc, max(0.5, deadline - time.monotonic())):
            return True
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        time.sleep(0.2)
    return False
