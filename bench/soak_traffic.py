"""
The soak's client: N threads, each with one keep-alive HTTP/1.1 connection
to restygate (http.client), sending a mix of GET, HEAD, PUT and POST with
small bodies as fast as answers come back, and recording every outcome.

An answer counts as good only when it is a 200 from a soak backend that
received exactly what was sent: the backend echoes method, body length and
CRC-32, so a retry that replays a truncated or stale body is caught.  The
client never retries by itself: every failure restygate lets through is
counted.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time
import zlib
from typing import Dict, List, NamedTuple, Optional, Tuple

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT"})

# (method, weight): mostly GET, some idempotent HEAD/PUT, some POST.
MIX: Tuple[Tuple[str, int], ...] = (("GET", 70), ("HEAD", 10), ("PUT", 10), ("POST", 10))
MAX_BODY = 2048
# This share of requests asks the backend to hold its answer 1-50 ms, so that
# a SIGKILL finds requests in flight (the case restygate retries on another
# instance), not only idle pooled connections.
SLOW_SHARE = 0.2
SLOW_MS = (1, 50)
# Above restygate's default upstream-timeout (60 s): a hung upstream shows as
# restygate's own 504, not as a client timeout.
CLIENT_TIMEOUT = 70.0


class Record(NamedTuple):
    start: float  # seconds since the soak's origin
    latency: float  # seconds
    method: str
    outcome: str  # "ok", or the failure's cause
    backend: str  # X-Soak-Backend of the answer, "" when none
    rid: int  # the request's id, in its path: /dc1/web/soak/<rid>


class Worker(threading.Thread):
    def __init__(
        self, index: int, port: int, seed: int, origin: float, stop: threading.Event,
        ids: "itertools.count[int]", hard_deadline: float,
    ) -> None:
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self._port = port
        self._rng = random.Random(f"{seed}/client/{index}")
        self._origin = origin
        self._quit = stop
        self._ids = ids
        self._hard_deadline = hard_deadline
        self.records: List[Record] = []
        # Read by the main thread for progress lines; only this thread writes.
        self.failures = {True: 0, False: 0}
        self.connections = 0

    def run(self) -> None:
        methods = [m for m, _ in MIX]
        weights = [w for _, w in MIX]
        conn: Optional[http.client.HTTPConnection] = None
        while not self._quit.is_set() and time.monotonic() < self._hard_deadline:
            method = self._rng.choices(methods, weights)[0]
            rid = next(self._ids)
            path = f"/dc1/web/soak/{rid}"
            if self._rng.random() < SLOW_SHARE:
                path += f"?delay={self._rng.randint(*SLOW_MS)}"
            body = self._rng.randbytes(self._rng.randint(1, MAX_BODY)) if method in ("PUT", "POST") else None
            backend = ""
            start = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=CLIENT_TIMEOUT)
                    self.connections += 1
                conn.request(method, path, body=body, headers={"User-Agent": "restygate-soak"})
                response = conn.getresponse()
                data = response.read()
                backend = response.getheader("X-Soak-Backend") or ""
                outcome = _judge(method, body, response, data, backend)
                if response.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # any client-side error is an outcome to count, not a crash
                outcome = type(e).__name__
                if conn is not None:
                    conn.close()
                conn = None
            end = time.monotonic()
            if outcome != "ok":
                self.failures[method in IDEMPOTENT] += 1
            self.records.append(Record(start - self._origin, end - start, method, outcome, backend, rid))
        if conn is not None:
            conn.close()


def _judge(
    method: str, body: Optional[bytes], response: http.client.HTTPResponse, data: bytes, backend: str,
) -> str:
    if response.status != 200:
        if method == "HEAD":
            # No body, so no error message to tell causes apart by.
            return f"{response.status} (HEAD: no error body)"
        return f"{response.status} {_gateway_error(data)}".rstrip()
    if not backend:
        return "200 without X-Soak-Backend"
    sent = body or b""
    expected = b"ok %s %s %d %08x\n" % (
        backend.encode("latin-1"), method.encode("ascii"), len(sent), zlib.crc32(sent) & 0xFFFFFFFF,
    )
    if method == "HEAD":
        if data or response.getheader("Content-Length") != str(len(expected)):
            return "HEAD answer with a body or a wrong Content-Length"
        return "ok"
    if data != expected:
        return "200 with a wrong body (the backend got other bytes than were sent)"
    return "ok"


def _gateway_error(data: bytes) -> str:
    # restygate's own errors are JSON {"error": ...}; an upstream's are relayed as they are.
    try:
        value = json.loads(data)
    except ValueError:
        return ""
    return str(value.get("error", "")) if isinstance(value, dict) else ""


class Traffic:
    """
    The client threads, started together and stopped together.
    """

    def __init__(self, port: int, concurrency: int, seed: int, origin: float, hard_deadline: float) -> None:
        self._quit = threading.Event()
        ids = itertools.count(1)
        self.workers = [
            Worker(i, port, seed, origin, self._quit, ids, hard_deadline) for i in range(concurrency)
        ]

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def stop(self, timeout: float) -> List[str]:
        """
        Ask every thread to finish its current request and wait (bounded);
        the names of threads still busy after C{timeout} seconds.
        """
        self._quit.set()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        return [w.name for w in self.workers if w.is_alive()]

    def counts(self) -> Tuple[int, int, int]:
        """
        (requests, idempotent failures, non-idempotent failures) so far.
        """
        total = sum(len(w.records) for w in self.workers)
        return (
            total,
            sum(w.failures[True] for w in self.workers),
            sum(w.failures[False] for w in self.workers),
        )

    def records(self) -> List[Record]:
        merged = [r for w in self.workers for r in list(w.records)]
        merged.sort(key=lambda r: r.start)
        return merged

    def connections(self) -> int:
        return sum(w.connections for w in self.workers)


def percentile(sorted_values: List[float], fraction: float) -> float:
    """
    Nearest-rank percentile of an already sorted list (0.0 when empty).
    """
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-fraction * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def by_cause(records: List[Record]) -> Dict[Tuple[bool, str], int]:
    counts: Dict[Tuple[bool, str], int] = {}
    for r in records:
        if r.outcome != "ok":
            key = (r.method in IDEMPOTENT, r.outcome)
            counts[key] = counts.get(key, 0) + 1
    return counts
