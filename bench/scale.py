#!/usr/bin/env python3
"""
bench/scale.py: discovery at scale (issue 10's table).  Not a test: it
measures and prints, it asserts nothing.

    flock /tmp/bench.lock python3 bench/scale.py            # 5 dc x 1,000 services x 3, idle 300 s, flips 60 s
    python3 bench/scale.py --dcs 2 --services 100 --idle 10 --flip-seconds 10 --outage 5 --junk 500   # quick

It starts, on free 127.0.0.1 ports, each in a session of its own and
stopped by PID: three backends (bench/soak_backend.py), the Consul test
server (`python -m restygate.testing.consul`) enforcing
`limits.http_max_conns_per_client = 200` with every (dc, service) registered
(3 instances each, one per node, each with a passing check), and restygate
with `--workers 2` against it.  Then, in order:

 A. every (dc, service) requested once (50 client connections): share answered
    200, first-request p50/p99, the most connections restygate held to the
    agent (its own gauge, and the test server's count);
 B. idle for --idle seconds: Consul requests per minute, RSS of the daemon
    and of each worker;
 C. --flip-rate health flips/s over random instances for --flip-seconds
    (re-registering the check, as an agent does), while a probe makes every
    instance of one service critical once a second and times how long until
    a request through restygate gets 503 (and 200 once they pass again);
    Consul requests/s meanwhile (the flips themselves not counted);
 E. --junk requests for made-up services and --junk / 10 for made-up
    datacenters mixed with real traffic, 2 s after the flips: new watches and
    series, the Consul queries naming a made-up service or datacenter
    (counted by URL, so other queries meanwhile are told apart), datacenter
    listings (refreshed on a miss, at most once per 5 s); real traffic's p99
    before and during;
 D. the Consul test server killed for --outage seconds and started again
    (fresh state, so its index is reset; every service's third instance
    gone meanwhile): requests through restygate that failed meanwhile, peak
    Consul queries/s after it is back, and from the moment it listens again
    (its own start is reported apart): seconds until every pair the workers
    hold routes with Consul's new view (two instances, from each worker's
    restygate_instances), seconds until restygate reports no failing query,
    and a sweep of every route after.

Each phase also reports the machine's CPU seconds meanwhile (busy, idle,
and stolen by the hypervisor, from /proc/stat). Results go to stdout and
bench/results/scale-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak_procs import ROOT, Children, ensure_installed, free_ports, proc_memory, say, wait_listening  # noqa: E402

Pair = Tuple[str, str]
_local = threading.local()


def get(port: int, path: str, fresh: bool = False, timeout: float = 10.0) -> Tuple[int, bytes]:
    """One GET on 127.0.0.1:port, on this thread's keep-alive connection unless C{fresh}."""
    key = f"c{port}"
    conn = None if fresh else getattr(_local, key, None)
    for attempt in (0, 1):
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if fresh:
                conn.close()
            else:
                setattr(_local, key, conn)
            return response.status, body
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = None
            if fresh or attempt:
                return 0, b""
    return 0, b""


def put(port: int, path: str, body: Any) -> int:
    conn = getattr(_local, f"p{port}", None) or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("PUT", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        setattr(_local, f"p{port}", conn)
        return response.status
    except (OSError, http.client.HTTPException):
        conn.close()
        setattr(_local, f"p{port}", None)
        return 0


def machine_times() -> Dict[str, float]:
    """
    The whole machine's CPU seconds so far: busy (user, nice, system, irq,
    softirq), idle, and stolen by the hypervisor (/proc/stat).
    """
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (sum(fields[:3]) + fields[5] + fields[6]) / tick, "idle": (fields[3] + fields[4]) / tick,
            "steal": fields[7] / tick}


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Rig:
    def __init__(self, args: argparse.Namespace, base: str) -> None:
        self.args = args
        self.base = base
        self.children = Children()
        self.backends = free_ports(3)
        self.consul_port, self.port, self.admin = free_ports(3)
        self.dcs = [f"dc{d + 1}" for d in range(args.dcs)]
        self.services = [f"svc-{s:04d}" for s in range(args.services)]
        self.pairs: List[Pair] = [(dc, s) for dc in self.dcs for s in self.services]
        self.register = os.path.join(base, "register.json")
        self.daemon: Any = None
        self.consul: Any = None

    def registration(self, dc: str, service: str, k: int, status: str = "passing") -> Dict[str, Any]:
        sid = f"{service}-{k}"
        return {
            "Datacenter": dc, "Node": f"node-{k}", "Address": "127.0.0.1",
            "Service": {"ID": sid, "Service": service, "Port": self.backends[k]},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
                       {"CheckID": f"service:{sid}", "ServiceID": sid, "Status": status}],
        }

    def check(self, dc: str, service: str, k: int, status: str) -> Dict[str, Any]:
        sid = f"{service}-{k}"
        return {"Datacenter": dc, "Node": f"node-{k}", "SkipNodeUpdate": True,
                "Check": {"CheckID": f"service:{sid}", "ServiceID": sid, "Status": status}}

    def start(self, twistd: str) -> None:
        for k, port in enumerate(self.backends):
            proc = self.children.spawn(f"backend {k}", [sys.executable, os.path.join(ROOT, "bench", "soak_backend.py"),
                                                        "--port", str(port), "--name", f"b{k}"],
                                       os.path.join(self.base, f"backend{k}.log"), self.base)
            wait_listening(port, proc, 30)
        with open(self.register, "w") as f:
            json.dump([self.registration(dc, s, k) for dc, s in self.pairs for k in range(3)], f)
        self.start_consul()
        self.daemon = self.children.spawn(
            # Its log on its stdout, as the systemd unit and the Docker image run it.
            "restygate", [twistd, "-n", "--pidfile=", "--logfile=-",
                          "restygate", "--consul", f"127.0.0.1:{self.consul_port}",
                          "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                          "--admin", f"tcp:{self.admin}:interface=127.0.0.1", "--workers", "2"],
            os.path.join(self.base, "restygate.log"), self.base)
        if not wait_listening(self.port, self.daemon, 60) or not wait_listening(self.admin, self.daemon, 60):
            raise SystemExit("restygate did not start; see " + self.base)
        deadline = time.monotonic() + 60
        while not get(self.admin, "/healthz", fresh=True)[1].startswith(b"ok (2/2"):
            if time.monotonic() > deadline:
                raise SystemExit("restygate's workers did not come up")
            time.sleep(0.1)

    def start_consul(self) -> None:
        self.consul = self.children.spawn(
            "consul", [sys.executable, "-m", "restygate.testing.consul", "--port", str(self.consul_port),
                       "--register", self.register, "--http-max-conns-per-client", "200"],
            os.path.join(self.base, "consul.log"), self.base)
        if not wait_listening(self.consul_port, self.consul, 120):
            raise SystemExit("the Consul test server did not start")

    def stats(self) -> Dict[str, Any]:
        status, body = get(self.consul_port, "/_test/stats", fresh=True)
        return json.loads(body) if status == 200 else {}

    def metric(self, name: str) -> Optional[float]:
        _, body = get(self.admin, f"/metrics?name[]={name}", fresh=True, timeout=60.0)
        match = re.search(rb"^" + re.escape(name.encode()) + rb" ([0-9.e+\-]+|NaN)$", body, re.M)
        return float(match.group(1)) if match else None

    def series(self) -> Optional[Set[Tuple[bytes, bytes]]]:
        """The (dc, service) label pairs /metrics has series for; None when it did not answer."""
        status, body = get(self.admin, "/metrics", fresh=True, timeout=60.0)
        return set(re.findall(rb'dc="([^"]*)",service="([^"]*)"', body)) if status == 200 else None

    def held_instances(self) -> Dict[Pair, int]:
        """
        Every (dc, service) some worker's view holds, with the most instances
        any worker routes it to (passing and ejected, from restygate_instances:
        the light scrape an operator's check would make, not the workers'
        whole /status).
        """
        status, body = get(self.admin, "/metrics?name[]=restygate_instances", fresh=True, timeout=30.0)
        if status != 200:
            return {}
        each: Dict[Tuple[str, str, str], float] = {}
        for dc, service, worker, value in re.findall(
                rb'^restygate_instances\{dc="([^"]*)",service="([^"]*)",state="[a-z]+",worker="(\d+)"\} (\S+)$',
                body, re.M):
            key = (dc.decode(), service.decode(), worker.decode())
            each[key] = each.get(key, 0.0) + float(value)
        held: Dict[Pair, int] = {}
        for (dc, service, _), count in each.items():
            held[(dc, service)] = max(held.get((dc, service), 0), int(count))
        return held

    def worker_pids(self) -> List[int]:
        _, body = get(self.admin, "/status?format=json", fresh=True)
        return [w["pid"] for w in json.loads(body)["workers"] if w["pid"]]


def consul_total(stats: Dict[str, Any], prefix: str = "GET ") -> int:
    return sum(v for k, v in stats.get("requests", {}).items() if k.startswith(prefix))


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> Tuple[int, bool]:
    """One GET on a kept-alive connection: its status, and whether the server closes after it."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii"))
    lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (line.partition(b":") for line in lines[1:] if line)}
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if not size:
                break
    return status, headers.get(b"connection") == b"close"


async def _run(port: int, paths: Sequence[str], connections: int) -> List[Tuple[str, int, float]]:
    results: List[Tuple[str, int, float]] = [("", 0, 0.0)] * len(paths)
    todo = list(enumerate(paths))
    todo.reverse()

    async def client() -> None:
        conn: Optional[Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = None
        while todo:
            index, path = todo.pop()
            start = time.monotonic()
            status, close = 0, True
            for _ in (0, 1):
                try:
                    if conn is None:
                        conn = await asyncio.open_connection("127.0.0.1", port)
                    status, close = await asyncio.wait_for(_exchange(*conn, path), 10.0)
                    break
                except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        asyncio.TimeoutError, ValueError, IndexError):
                    if conn is not None:
                        conn[1].close()
                    conn = None
            if close and conn is not None:
                conn[1].close()
                conn = None
            results[index] = (path, status, time.monotonic() - start)
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return results


def run_requests(rig: Rig, paths: Sequence[str], connections: int) -> List[Tuple[str, int, float]]:
    """
    GET each path (in that order's results) over C{connections} kept-alive
    connections from one asyncio loop: 50 Python threads with http.client
    cost the two cores this bench shares with restygate 1.4-1.7 s of CPU in
    phase A, and their wait for the GIL counted in every latency.
    """
    return asyncio.run(_run(rig.port, paths, connections))


def phase_a(rig: Rig, out: Dict[str, Any]) -> None:
    paths = [f"/{dc}/{s}/" for dc, s in rig.pairs]
    random.shuffle(paths)
    start = time.monotonic()
    results = run_requests(rig, paths, 50)
    latencies = [r[2] * 1000 for r in results]
    ok = sum(1 for r in results if r[1] == 200)
    stats = rig.stats()
    out["A"] = {
        "pairs": len(paths), "answered_200": ok, "share_200": ok / len(paths),
        "first_request_ms_p50": round(pct(latencies, 0.5), 1), "first_request_ms_p99": round(pct(latencies, 0.99), 1),
        "seconds": round(time.monotonic() - start, 1),
        "restygate_peak_agent_connections": rig.metric("restygate_consul_peak_connections"),
        "test_server_peak_connections_all_clients": stats.get("peak_connections"),
        "refused_429": stats.get("refused_connections"),
    }
    say(f"A: {out['A']}")


def phase_b(rig: Rig, out: Dict[str, Any]) -> None:
    before = consul_total(rig.stats())
    time.sleep(rig.args.idle)
    after = consul_total(rig.stats())
    pids = rig.worker_pids()
    out["B"] = {
        "idle_seconds": rig.args.idle,
        "consul_requests_per_minute": round((after - before) * 60 / rig.args.idle, 1),
        "daemon_rss_mb": round((proc_memory(rig.daemon.pid)[0] or 0) / 1024, 1),
        "worker_rss_mb": [round((proc_memory(pid)[0] or 0) / 1024, 1) for pid in pids],
    }
    say(f"B: {out['B']}")


def wait_status(rig: Rig, path: str, want: int, limit: float) -> Optional[float]:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if get(rig.port, path, fresh=True)[0] == want:
            return time.monotonic() - start
        time.sleep(0.002)
    return None


def phase_c(rig: Rig, out: Dict[str, Any]) -> None:
    args = rig.args
    stop = threading.Event()
    probes: Set[Pair] = set()
    flips = [0]

    def flipper() -> None:
        critical: List[Tuple[float, str, str, int]] = []
        period = 1.0 / args.flip_rate
        next_at = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if critical and now - critical[0][0] > 1.0:
                _, dc, s, k = critical.pop(0)
                put(rig.consul_port, "/v1/catalog/register", rig.check(dc, s, k, "passing"))
            else:
                dc, s = random.choice(rig.pairs)
                if (dc, s) in probes:
                    continue
                k = random.randrange(3)
                put(rig.consul_port, "/v1/catalog/register", rig.check(dc, s, k, "critical"))
                critical.append((now, dc, s, k))
            flips[0] += 1
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
        for _, dc, s, k in critical:
            put(rig.consul_port, "/v1/catalog/register", rig.check(dc, s, k, "passing"))

    before = rig.stats()
    thread = threading.Thread(target=flipper, daemon=True)
    start = time.monotonic()
    thread.start()
    down: List[float] = []
    up: List[float] = []
    while time.monotonic() - start < args.flip_seconds:
        dc, s = random.choice(rig.pairs)
        probes.add((dc, s))
        tick = time.monotonic()
        for k in range(3):
            put(rig.consul_port, "/v1/catalog/register", rig.check(dc, s, k, "critical"))
        took = wait_status(rig, f"/{dc}/{s}/", 503, 5.0)
        down.append(took * 1000 if took is not None else float("inf"))
        for k in range(3):
            put(rig.consul_port, "/v1/catalog/register", rig.check(dc, s, k, "passing"))
        took = wait_status(rig, f"/{dc}/{s}/", 200, 5.0)
        up.append(took * 1000 if took is not None else float("inf"))
        probes.discard((dc, s))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    stop.set()
    thread.join()
    seconds = time.monotonic() - start
    after = rig.stats()
    both = down + up
    out["C"] = {
        "seconds": round(seconds, 1), "flips": flips[0], "flips_per_second": round(flips[0] / seconds, 1),
        "probes": len(down), "reflected_ms_p50": round(pct(both, 0.5), 1), "reflected_ms_p99": round(pct(both, 0.99), 1),
        "to_503_ms_p50": round(pct(down, 0.5), 1), "to_200_ms_p50": round(pct(up, 0.5), 1),
        "consul_reads_per_second": round((consul_total(after) - consul_total(before)) / seconds, 1),
    }
    say(f"C: {out['C']}")


def phase_e(rig: Rig, out: Dict[str, Any]) -> None:
    args = rig.args
    real = [f"/{dc}/{s}/" for dc, s in random.choices(rig.pairs, k=2000)]
    base = [r[2] * 1000 for r in run_requests(rig, real, 20)]
    # Let the flip phase's last fetches finish, so what follows is this phase's own.
    time.sleep(2.0)
    watches = rig.metric("restygate_consul_watches")
    series = rig.series()
    # Reading the merged /metrics keeps the daemon busy a while (every worker's series): let it end.
    time.sleep(2.0)
    before = rig.stats()
    junk_services = [f"x{random.getrandbits(40):x}" for _ in range(args.junk)]
    junk = [f"/{random.choice(rig.dcs)}/{name}/" for name in junk_services]
    junk += [f"/dc-x{random.getrandbits(40):x}/{random.choice(rig.services)}/" for _ in range(args.junk // 10)]
    mixed = [(p, True) for p in real] + [(p, False) for p in junk]
    random.shuffle(mixed)
    start = time.monotonic()
    results = run_requests(rig, [p for p, _ in mixed], 20)
    seconds = time.monotonic() - start
    real_ms = [r[2] * 1000 for r, (_, is_real) in zip(results, mixed) if is_real]
    after = rig.stats()

    def delta(match: Any) -> int:
        return sum(v - before["requests"].get(k, 0) for k, v in after["requests"].items() if match(k))

    made_up = {f"GET /v1/health/service/{name}" for name in junk_services}
    statuses: Dict[int, int] = {}
    for r, (_, is_real) in zip(results, mixed):
        if not is_real:
            statuses[r[1]] = statuses.get(r[1], 0) + 1
    out["E"] = {
        "junk_requests": len(junk), "junk_statuses": statuses, "seconds": round(seconds, 1),
    }
    watches_after, series_after = rig.metric("restygate_consul_watches"), rig.series()
    # None: /metrics did not answer (then nothing is claimed).
    out["E"].update({
        "new_watches": None if watches is None or watches_after is None else watches_after - watches,
        "new_series_names": None if series is None or series_after is None else len(series_after - series),
    })
    out["E"].update({
        # Counted by URL: queries naming a made-up service, or a made-up datacenter (?dc=).
        "consul_queries_for_made_up_services": delta(lambda k: k in made_up),
        "consul_queries_for_made_up_datacenters": after.get("unknown_datacenter_requests", 0)
        - before.get("unknown_datacenter_requests", 0),
        # The datacenter list is refreshed on a miss at most once per 5 s (and every 60 s anyway).
        "consul_datacenter_listings_meanwhile": delta(lambda k: k == "GET /v1/catalog/datacenters"),
        "datacenter_listings_allowed": 1 + int(seconds // 5) + int(seconds // 60),
        # Everything else restygate asked meanwhile (real traffic's watches: wait expiries, first fetches).
        "other_consul_health_queries_meanwhile": delta(lambda k: "/v1/health/" in k and k not in made_up),
        "real_p99_ms_before": round(pct(base, 0.99), 1), "real_p99_ms_during": round(pct(real_ms, 0.99), 1),
    })
    say(f"E: {out['E']}")


def phase_d(rig: Rig, out: Dict[str, Any]) -> None:
    args = rig.args
    stop = threading.Event()
    failed: List[str] = []
    served = [0]

    def prober() -> None:
        while not stop.is_set():
            dc, s = random.choice(rig.pairs)
            status, _ = get(rig.port, f"/{dc}/{s}/", fresh=True)
            served[0] += 1
            if status != 200:
                failed.append(f"{dc}/{s}:{status}")
            time.sleep(0.01)

    thread = threading.Thread(target=prober, daemon=True)
    thread.start()
    rig.consul.send_signal(signal.SIGKILL)
    rig.consul.wait()
    # Consul comes back without every service's third instance (deregistered
    # meanwhile): routing with Consul's view again is then visible, in each
    # worker's view, as two instances for every pair it holds.
    with open(rig.register, "w") as f:
        json.dump([rig.registration(dc, s, k) for dc, s in rig.pairs for k in range(2)], f)
    time.sleep(args.outage)
    spawned = time.monotonic()
    rig.start_consul()
    # Consul is back when it answers: the test server's own start (loading
    # 10,000 registrations) is not restygate's to count.
    back = time.monotonic()
    rates: List[float] = []
    recovered: Optional[float] = None
    synced: Optional[float] = None
    held: Dict[Pair, int] = {}
    last, last_t = consul_total(rig.stats()), time.monotonic()
    while time.monotonic() - back < 30 and (recovered is None or synced is None or time.monotonic() - back < 20):
        time.sleep(0.5)
        now_total, now = consul_total(rig.stats()), time.monotonic()
        rates.append((now_total - last) / (now - last_t))
        last, last_t = now_total, now
        if synced is None:
            held = rig.held_instances()
            if held and all(n == 2 for n in held.values()):
                synced = time.monotonic() - back
        if recovered is None and rig.metric("restygate_consul_failing_queries") == 0:
            recovered = time.monotonic() - back
    stop.set()
    thread.join()
    results = run_requests(rig, [f"/{dc}/{s}/" for dc, s in rig.pairs], 50)
    out["D"] = {
        "outage_seconds": args.outage, "consul_start_seconds": round(back - spawned, 1),
        "probe_requests": served[0], "probe_failures": len(failed),
        "peak_consul_queries_per_second_after": round(max(rates), 1),
        "seconds_until_every_held_pair_has_consuls_view": None if synced is None else round(synced, 1),
        "pairs_held_by_workers": len(held),
        "pairs_still_old_at_the_end": sum(1 for n in held.values() if n != 2),
        "seconds_until_no_failing_query": None if recovered is None else round(recovered, 1),
        "routes_200_after": sum(1 for r in results if r[1] == 200), "routes": len(results),
    }
    say(f"D: {out['D']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dcs", type=int, default=5)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=300.0)
    parser.add_argument("--flip-rate", type=float, default=50.0)
    parser.add_argument("--flip-seconds", type=float, default=60.0)
    parser.add_argument("--outage", type=float, default=20.0)
    parser.add_argument("--junk", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    twistd = ensure_installed()
    base = tempfile.mkdtemp(prefix="restygate-scale-")
    rig = Rig(args, base)
    out: Dict[str, Any] = {"args": vars(args), "python": sys.version.split()[0]}
    try:
        rig.start(twistd)
        say(f"scale: {len(rig.pairs)} (dc, service) pairs registered, restygate up; logs in {base}")
        for phase in (phase_a, phase_b, phase_c, phase_e, phase_d):
            before = machine_times()
            phase(rig, out)
            after = machine_times()
            # This VM's hypervisor takes CPU from it at times (steal): a
            # phase's latencies mean little without how much it took.
            spent = {k: round(after[k] - before[k], 1) for k in after}
            out[phase.__name__[-1].upper()]["machine_cpu_s"] = spent
            say(f"{phase.__name__[-1].upper()}: machine CPU seconds {spent}")
    finally:
        for note in rig.children.stop_all(10.0):
            say(note)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(ROOT, "bench", "results", f"scale-{stamp}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    say(f"scale: results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
