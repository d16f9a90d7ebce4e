"""
restygate's benchmark: restygate, nginx and Twisted's stock reverse proxy in
front of the same nginx backend, measured with wrk, plus discovery
convergence and the load restygate puts on Consul.  bench/run is the entry
point (it installs nginx, wrk and the project first); bench/README.md says
what is measured and how to read it.

Everything listens on 127.0.0.1 only, every process started here is stopped
by its PID (and its own process group) when the run ends, however it ends,
and every load loop is bounded in count or time.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

TARGETS = ("restygate", "nginx", "stock")
WATCHED_SERVICES = 100
CONVERGENCE_FLIPS = 20
# restygate's watcher allows 3 immediate re-queries and then 2 per second
# (restygate.discovery.consul.watch.TokenBucket).  Flipping slower than that measures how
# fast a change propagates, not the rate limit.
FLIP_SPACING = 1.0
CONSUL_WAIT = 60.0  # restygate's --consul-wait default, which the run keeps
PROFILE_RATE = 100  # py-spy samples per second: each pauses restygate briefly
# PyPy's JIT compiles a hot path only after it ran many times: under PyPy,
# restygate and the stock proxy first get this long a small c50 run, and a
# longer warm-up per case, so the measured rounds time compiled code.  Each
# restygate worker warms its own JIT on its share of the connections: 30 s
# leaves the first measured round no slower than the last (10 s did not).
JIT_WARMUP = 30.0
# What restygate.daemon.workers.pool gives each worker under PyPy (PYPY_GC),
# each unless set in the environment.
STOCK_PYPY_GC = {"PYPY_GC_NURSERY": "32MB", "PYPY_GC_MIN": "64MB", "PYPY_GC_INCREMENT_STEP": "8MB"}
# Where bench/run --pypy makes the PyPy virtualenv.
PYPY_VENV = ROOT / ".bench-pypy"
# The cases run again against restygate with its default access log
# (access-log = "-": the lines on its stdout, a file here, as a service
# manager would take them), in alternation with the file case.
DEFAULT_LOG_CASES = ("small c50", "10k c50")
# A run during which other processes used more than this share of a core is
# flagged in the report as disturbed.
NOISY_OTHERS = 0.1


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    connections: int
    script: Optional[str] = None


CASES = (
    Case("small c50", "/small", 50),
    Case("small c200", "/small", 200),
    Case("10k c50", "/10k", 50),
    Case("10k c200", "/10k", 200),
    Case("post64k c50", "/post", 50, "post.lua"),
)


class BenchError(Exception):
    """The run cannot go on; the message says why."""


def _terminate(signum: int, frame: Any) -> None:
    # Turn SIGTERM/SIGHUP into an exception so the finally blocks stop
    # everything this run started.
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------
# Processes, by PID.


class Processes:
    """
    The servers this run started.  Each runs in a session of its own, so a
    Ctrl-C at the terminal reaches only this script, which then stops them
    in reverse order: SIGTERM to the PID, SIGKILL if it does not go in time,
    then SIGKILL to any process left in the session it leads (nginx workers
    whose master died, say), each by its PID.
    """

    def __init__(self) -> None:
        self.started: List[Tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], log: Path, cwd: Optional[Path] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=str(cwd) if cwd else None, start_new_session=True, env=env,
            )
        self.started.append((name, proc))
        return proc

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started.pop()[1])

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pid in session_members(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def session_members(sid: int) -> List[int]:
    """The processes in session C{sid} (one this run created with setsid)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                # Fields 5 and 6 of stat: process group, session.
                if int(_stat_fields(int(entry))[3]) == sid:
                    members.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return members


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{log.stem} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s:\n{tail(log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------
# /proc accounting.


def _stat_fields(pid: int) -> List[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    return text[text.rindex(")") + 2:].split()


def descendants(pid: int) -> List[int]:
    """C{pid} and every process below it (nginx's workers, say)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def tree_cpu(pids: Sequence[int]) -> Tuple[float, float]:
    """User and system CPU seconds used so far by these processes (and their reaped children)."""
    user = system = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        # utime, stime, cutime, cstime are stat fields 14-17.
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def machine_cpu() -> Tuple[float, float]:
    """
    CPU seconds the whole machine spent in processes (user, nice, system),
    and stolen by the hypervisor, so far.
    """
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, steal = fields[0], fields[1], fields[2], fields[7]
    return (user + nice + system) / CLOCK_TICKS, steal / CLOCK_TICKS


def memory_kib(pid: int) -> Dict[str, int]:
    out: Dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


# ---------------------------------------------------------------------------
# wrk.

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION = re.compile(r"([\d.]+)(us|ms|s|m|h)$")


def _ms(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> Dict[str, Any]:
    """The numbers in wrk's --latency report."""
    result: Dict[str, Any] = {"non_2xx": 0, "socket_errors": {}}
    for line in output.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] in ("50%", "75%", "90%", "99%") and len(words) == 2:
            result[f"p{words[0][:-1]}_ms"] = _ms(words[1])
        elif words[0] == "Requests/sec:":
            result["rps"] = float(words[1])
        elif len(words) > 3 and words[1] == "requests" and words[2] == "in":
            result["requests"] = int(words[0])
            result["seconds"] = _ms(words[3].rstrip(",")) / 1e3
        elif line.strip().startswith("Socket errors:"):
            for part in line.split(":", 1)[1].split(","):
                kind, count = part.split()
                result["socket_errors"][kind] = int(count)
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            result["non_2xx"] = int(words[-1])
    for key in ("rps", "requests", "p50_ms", "p99_ms"):
        if key not in result:
            raise BenchError(f"wrk's report has no {key}:\n{output}")
    return result


class Monitored:
    """The processes whose CPU a wrk run is charged with, by role."""

    def __init__(self) -> None:
        self.roots: Dict[str, int] = {}

    def snapshot(self) -> Dict[str, Tuple[float, float]]:
        return {role: tree_cpu(descendants(pid)) for role, pid in self.roots.items()}


def run_wrk(
    url: str, connections: int, seconds: float, script: Optional[str], monitored: Monitored,
    during: Optional[Callable[[int], None]] = None,
) -> Dict[str, Any]:
    """
    One wrk run, with the CPU each monitored process tree and wrk itself used
    during it.  C{during(wrk_pid)} runs while wrk runs (a profiler, say).
    """
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if script:
        argv += ["-s", str(BENCH / script)]
    argv.append(url)
    before = monitored.snapshot()
    machine_before = machine_cpu()
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            if during is not None:
                during(proc.pid)
            # wait4 gives wrk's own CPU use as it is reaped.  wrk stops itself
            # after -d; the margin covers its connection set-up and report.
            deadline = time.monotonic() + seconds + 30
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    raise BenchError(f"wrk did not finish: {' '.join(argv)}")
                time.sleep(0.02)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
        elapsed = time.monotonic() - started
        machine_after = machine_cpu()
        after = monitored.snapshot()
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {' '.join(argv)}\n{text}")
    result = parse_wrk(text)
    cpu = {
        role: round(sum(after[role]) - sum(before[role]), 3) for role in monitored.roots
    }
    cpu["wrk"] = round(usage.ru_utime + usage.ru_stime, 3)
    # Whatever else ran on the machine meanwhile (another session's test
    # suite, say) competed for the same two cores: shown so a noisy run can
    # be told from a slow one.
    ours = sum(cpu.values())
    cpu["others"] = round(max(0.0, machine_after[0] - machine_before[0] - ours), 3)
    cpu["steal"] = round(machine_after[1] - machine_before[1], 3)
    result["cpu_s"] = cpu
    result["wall_s"] = round(elapsed, 3)
    return result


# ---------------------------------------------------------------------------
# Small HTTP helpers (http.client, one connection each).


def http_request(port: int, method: str, path: str, body: Optional[bytes] = None, timeout: float = 10.0) -> Tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def consul_counts(consul_port: int) -> Dict[str, int]:
    status, body = http_request(consul_port, "GET", "/_test/stats")
    if status != 200:
        raise BenchError(f"Consul test server /_test/stats answered {status}")
    counts: Dict[str, int] = json.loads(body)["requests"]
    return counts


def registration(service: str, port: int, status: str = "passing", copy: int = 1) -> Dict[str, Any]:
    # Copies after the first are more instances of the service on the same
    # backend, each on a node of its own, for the balancer to choose among.
    sid = service if copy == 1 else f"{service}-{copy}"
    return {
        "Datacenter": "dc1",
        "Node": "bench-node" if copy == 1 else f"bench-node-{copy}",
        "Address": HOST,
        "Service": {"ID": sid, "Service": service, "Port": port},
        "Checks": [
            {"CheckID": f"service:{sid}", "Name": f"{service} check", "Status": status, "ServiceID": sid}
        ],
    }


# ---------------------------------------------------------------------------
# The environment.


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def environment() -> Dict[str, Any]:
    import twisted

    import restygate

    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "restygate"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    ).stdout.decode().strip()
    return {
        "cpu_model": cpu_model,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "twisted": twisted.__version__,
        "restygate": restygate.__version__,
        "restygate_imported_from": str(Path(restygate.__file__).parent),
        "restygate_commit": commit + (" (restygate/ modified)" if dirty else ""),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------
# The run.


def render_template(name: str, out: Path, values: Dict[str, Any]) -> None:
    text = (BENCH / "nginx" / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    if "@" in re.sub(r"#.*", "", text):
        raise BenchError(f"{name}: a placeholder was left unfilled")
    out.write_text(text)


def restygate_options(twistd_path: str) -> str:
    """C{twistd restygate --help}: which options this restygate has."""
    done = subprocess.run(
        [twistd_path, "restygate", "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/", timeout=60,
    )
    if done.returncode != 0:
        raise BenchError(f"twistd restygate --help failed:\n{done.stdout.decode(errors='replace')[-2000:]}")
    return done.stdout.decode(errors="replace")


def twistd() -> str:
    found = shutil.which("twistd")
    if found is None:
        raise BenchError("twistd is not on PATH: install the project (bench/run does)")
    return found


def twistd_beside(python: Optional[str]) -> str:
    """
    The twistd restygate is started with: with C{--python PATH}, the one
    installed beside PATH (a virtualenv's bin/), else the one on PATH.
    """
    if python is None:
        return twistd()
    found = os.path.join(os.path.dirname(python), "twistd")
    if not os.access(found, os.X_OK):
        raise BenchError(f"no twistd beside {python}: install Twisted and the project into that environment "
                         "(bench/run --pypy does, for .bench-pypy)")
    return found


# Run by the interpreter restygate and the stock proxy run under, from /, so
# that it imports what twistd there imports.
_INTERPRETER_PROBE = """
import json, platform, sys
import twisted, restygate
from restygate.compiled import data_path
pypy = getattr(sys, "pypy_version_info", None)
print(json.dumps({
    "executable": sys.executable,
    "implementation": platform.python_implementation(),
    "python": platform.python_version(),
    "sys_version": sys.version,
    "pypy": ".".join(str(n) for n in pypy[:3]) if pypy else None,
    "twisted": twisted.__version__,
    "restygate": restygate.__version__,
    "restygate_imported_from": restygate.__path__[0],
    "data_path": data_path(),
}))
"""


def interpreter_info(python: str) -> Dict[str, Any]:
    """What C{python} is: implementation, versions, and where it imports restygate from."""
    if not os.path.exists(python):
        raise BenchError(f"{python} does not exist (bench/run --pypy makes the PyPy virtualenv)")
    try:
        done = subprocess.run([python, "-c", _INTERPRETER_PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd="/", timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"cannot run {python}: {e}") from None
    if done.returncode != 0:
        raise BenchError(f"{python} cannot import twisted and restygate:\n"
                         f"{done.stderr.decode(errors='replace')[-2000:]}")
    info: Dict[str, Any] = json.loads(done.stdout)
    info["path"] = python
    if info["pypy"]:
        info["label"] = f"PyPy {info['pypy']} (Python {info['python']})"
    else:
        info["label"] = f"{info['implementation']} {info['python']}"
    return info


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = Processes()
        self.monitored = Monitored()
        self.ports: Dict[str, int] = {}
        self.pids: Dict[str, int] = {}
        self.workers = 1
        self.results: Dict[str, Any] = {}
        self.restygate_cmd: List[str] = []
        self.profile_raw = tmp / "restygate.pyspy.txt"
        # The interpreter restygate (through the twistd beside it) and the
        # stock proxy run under; the Consul test server stays on this one.
        # Not resolved: a virtualenv's bin/python is a symlink to the base
        # interpreter, which would not see the virtualenv.
        self.python = os.path.abspath(args.python) if args.python else sys.executable
        self.interpreter: Dict[str, Any] = {}
        self.access_log: Optional[str] = None

    @property
    def jit(self) -> bool:
        """Whether restygate and stock run under a JIT that needs warming up."""
        return bool(self.args.pypy or self.interpreter.get("implementation") == "PyPy")

    # -- starting ------------------------------------------------------------

    def start_all(self) -> None:
        tmp = self.tmp
        for name in ("backend", "consul", "restygate", "nginx", "stock"):
            self.ports[name] = free_port()
        root = tmp / "backend-root"
        root.mkdir()
        # 10 KiB exactly, and not all one byte, so nothing compresses it by accident.
        (root / "10k").write_bytes((b"0123456789abcdef" * 640)[:10240])
        tmp.chmod(0o755)  # nginx workers run as another user when we are root
        root.chmod(0o755)
        (root / "10k").chmod(0o644)

        self.workers = self.args.workers or 1
        restygate_twistd = twistd_beside(self.python if self.args.python else None)
        options = restygate_options(restygate_twistd)
        has_workers = "--workers" in options
        if self.args.workers and not has_workers:
            raise BenchError("restygate has no --workers option; run without --workers")
        if has_workers and not self.args.workers:
            self.workers = os.cpu_count() or 1

        values = {"DIR": tmp, "BACKEND_PORT": self.ports["backend"], "PROXY_PORT": self.ports["nginx"],
                  "WORKERS": self.workers}
        render_template("backend.conf.in", tmp / "backend.conf", values)
        render_template("proxy.conf.in", tmp / "proxy.conf", values)

        self._start("backend", ["nginx", "-p", f"{tmp}/", "-e", str(tmp / "backend-error.log"),
                                "-c", str(tmp / "backend.conf")])

        bodies = [registration("web", self.ports["backend"], copy=n) for n in range(1, self.args.instances + 1)]
        bodies.append(registration("conv", self.ports["backend"]))
        bodies += [registration(f"svc{i}", self.ports["backend"]) for i in range(WATCHED_SERVICES)]
        (tmp / "register.json").write_text(json.dumps(bodies))
        self._start("consul", [sys.executable, "-m", "restygate.testing.consul", "--port", str(self.ports["consul"]),
                               "--register", str(tmp / "register.json")], cwd=ROOT)

        self.restygate_cmd = [
            restygate_twistd, "-n", "--pidfile=", "restygate", "--consul", f"{HOST}:{self.ports['consul']}",
            "--listen", f"tcp:{self.ports['restygate']}:interface={HOST}",
        ]
        if has_workers:
            self.restygate_cmd += ["--workers", str(self.workers)]
        if self.args.balancer:
            self.restygate_cmd += ["--balancer", self.args.balancer]
        if "--admin" in options:
            # The admin listener (metrics, status) stays on, as a user has
            # it, but on a free port: its default port may be taken by
            # another restygate on this machine.
            self.ports["admin"] = free_port()
            self.restygate_cmd += ["--admin", f"tcp:{self.ports['admin']}:interface={HOST}"]
        if "--access-log=" in options:
            # To a file, as nginx and the stock proxy write theirs: the same
            # kind of cost for all three.
            self.access_log = str(tmp / "restygate-access.log")
            self.restygate_cmd += ["--access-log", self.access_log]
        # From the temp dir: a user's daemon does not run inside the checkout.
        self._start("restygate", self.restygate_cmd, cwd=tmp)

        self._start("nginx", ["nginx", "-p", f"{tmp}/", "-e", str(tmp / "proxy-error.log"),
                              "-c", str(tmp / "proxy.conf")])
        # Under PyPy, restygate's workers start with GC settings of their own
        # (restygate.daemon.workers.pool.PYPY_GC); the stock proxy gets the same, so
        # the comparison is of the proxies, not of their GC settings.
        stock_env = dict(STOCK_PYPY_GC, **os.environ) if self.jit else None
        self._start("stock", [self.python, str(BENCH / "stock_proxy.py"), "--port", str(self.ports["stock"]),
                              "--backend-port", str(self.ports["backend"]),
                              "--access-log", str(tmp / "stock-access.log")], cwd=tmp, env=stock_env)
        self.monitored.roots = {
            "restygate": self.pids["restygate"], "nginx": self.pids["nginx"],
            "stock": self.pids["stock"], "backend": self.pids["backend"], "consul": self.pids["consul"],
        }

    def _start(
        self, name: str, argv: Sequence[str], cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None
    ) -> None:
        log = self.tmp / f"{name}.log"
        proc = self.procs.start(name, argv, log, cwd=cwd, env=env)
        self.pids[name] = proc.pid
        wait_for_port(self.ports[name], proc, log)

    def url(self, target: str, path: str) -> str:
        return f"http://{HOST}:{self.ports[target]}/dc1/web{path}"

    def check_targets(self) -> None:
        """Every target answers every case correctly before anything is timed."""
        expected = {"/small": b"small:ok\n", "/10k": (b"0123456789abcdef" * 640)[:10240]}
        for target in TARGETS:
            port = self.ports[target]
            for path, body in expected.items():
                status, got = http_request(port, "GET", f"/dc1/web{path}")
                if status != 200 or got != body:
                    raise BenchError(f"{target} GET /dc1/web{path}: {status} {got[:80]!r}")
            status, got = http_request(port, "POST", "/dc1/web/post", body=b"x" * 65536)
            if status != 200 or got != b"small:ok\n":
                raise BenchError(f"{target} POST /dc1/web/post: {status} {got[:80]!r}")

    # -- throughput ------------------------------------------------------------

    def throughput(self) -> None:
        args = self.args
        warm = {target: self.warm_seconds(False) for target in TARGETS}
        jit_runs: Dict[str, float] = {}
        if self.jit:
            for target in ("restygate", "stock"):
                warm[target] = self.warm_seconds(True)
                progress(f"JIT warm-up: {target} small c50 for {JIT_WARMUP:g} s")
                result = run_wrk(self.url(target, "/small"), 50, JIT_WARMUP, None, self.monitored)
                jit_runs[target] = result["rps"]
                progress(f"JIT warm-up: {target} {result['rps']:.0f} req/s")
        for target in TARGETS:
            for case in CASES:
                run_wrk(self.url(target, case.path), case.connections, warm[target], case.script, self.monitored)
        self.results["warmup"] = {
            "jit_small_c50_s": JIT_WARMUP if self.jit else 0,
            "jit_small_c50_rps": jit_runs,
            "per_case_s": warm,
        }
        self.results["restygate_memory_after_warmup_kib"] = self.restygate_memory()
        runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {c.name: {t: [] for t in TARGETS} for c in CASES}
        total = args.rounds * len(CASES) * len(TARGETS)
        done = 0
        for round_no in range(args.rounds):
            for case in CASES:
                for target in TARGETS:
                    done += 1
                    result = run_wrk(self.url(target, case.path), case.connections, args.duration,
                                     case.script, self.monitored)
                    runs[case.name][target].append(result)
                    progress(f"[{done}/{total}] round {round_no + 1} {case.name:<12} {target:<9} "
                             f"{result['rps']:>9.0f} req/s  p99 {result['p99_ms']:.2f} ms")
        self.results["runs"] = runs

    def warm_seconds(self, jit: bool) -> float:
        """How long each case warms a target up before the rounds."""
        if jit:
            return 3.0 if self.args.quick else 5.0
        return 1.0 if self.args.quick else 3.0

    def default_log(self) -> None:
        """
        restygate as a service manager runs it, with its default access log
        (access-log = "-"): every line goes to the daemon's stdout, here a
        file.  It runs beside the restygate above (access log to a file of
        its own), with the same warm-up, the two in alternation on the
        DEFAULT_LOG_CASES; it is stopped afterwards.
        """
        args = self.args
        name = "restygate-default"
        self.ports[name] = free_port()
        cmd = list(self.restygate_cmd)
        cmd[cmd.index("--listen") + 1] = f"tcp:{self.ports[name]}:interface={HOST}"
        if "--admin" in cmd:
            cmd[cmd.index("--admin") + 1] = f"tcp:{free_port()}:interface={HOST}"
        at = cmd.index("--access-log")
        del cmd[at:at + 2]
        self._start(name, cmd, cwd=self.tmp)
        self.monitored.roots[name] = self.pids[name]
        cases = [case for case in CASES if case.name in DEFAULT_LOG_CASES]
        if self.jit:
            progress(f"JIT warm-up: {name} small c50 for {JIT_WARMUP:g} s")
            run_wrk(self.url(name, "/small"), 50, JIT_WARMUP, None, self.monitored)
        for case in cases:
            run_wrk(self.url(name, case.path), case.connections, self.warm_seconds(self.jit), case.script,
                    self.monitored)
        pair = ("restygate", name)
        runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {c.name: {t: [] for t in pair} for c in cases}
        for round_no in range(args.rounds):
            for case in cases:
                for target in pair:
                    result = run_wrk(self.url(target, case.path), case.connections, args.duration,
                                     case.script, self.monitored)
                    runs[case.name][target].append(result)
                    progress(f"default access log: round {round_no + 1} {case.name:<12} {target:<17} "
                             f"{result['rps']:>9.0f} req/s  p99 {result['p99_ms']:.2f} ms")
        memory = {str(pid): memory_kib(pid) for pid in descendants(self.pids[name])}
        stdout = self.tmp / f"{name}.log"
        with open(stdout, "rb") as f:
            access_lines = sum(1 for line in f if b" access] " in line or b" [restygate.access#info] " in line)
        self.results["default_log"] = {
            "command": cmd, "runs": runs, "memory_after_run_kib": memory,
            "stdout_bytes": stdout.stat().st_size, "stdout_access_lines": access_lines,
        }
        del self.monitored.roots[name]
        for started_name, proc in self.procs.started:
            if started_name == name:
                self.procs.started.remove((started_name, proc))
                self.procs.stop(proc)
                break

    def restygate_memory(self) -> Dict[str, Dict[str, int]]:
        out = {}
        for pid in descendants(self.pids["restygate"]):
            try:
                out[str(pid)] = memory_kib(pid)
            except OSError:
                continue
        return out

    # -- Consul load -------------------------------------------------------------

    def start_watches(self, stop: threading.Event, errors: List[str]) -> threading.Thread:
        """
        Start watching svc0..svc99, spread evenly over one consul-wait
        period, so the watchers' blocking queries are spread over the period
        too and any window counts them at their average rate.
        """
        spacing = CONSUL_WAIT / WATCHED_SERVICES

        def spread() -> None:
            began = time.monotonic()
            for i in range(WATCHED_SERVICES):
                delay = began + i * spacing - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                try:
                    status, _ = http_request(self.ports["restygate"], "GET", f"/dc1/svc{i}/")
                    if status != 200:
                        errors.append(f"svc{i}: {status}")
                except OSError as e:
                    errors.append(f"svc{i}: {e}")

        thread = threading.Thread(target=spread, name="watch-starter", daemon=True)
        thread.start()
        return thread

    def consul_window(self, measure: Callable[[], None]) -> None:
        """
        Runs C{measure} (the throughput runs) while the watches start and,
        once all are in place, while Consul requests are counted over the
        window; waits for the window's end if C{measure} ends first.
        """
        window = self.args.window
        counted: Dict[str, Any] = {}
        stop = threading.Event()
        errors: List[str] = []
        starter = self.start_watches(stop, errors)

        def count() -> None:
            starter.join()
            try:
                if stop.is_set():
                    return
                counted["first"], counted["t0"] = consul_counts(self.ports["consul"]), time.monotonic()
                if stop.wait(window):
                    return
                counted["last"], counted["t1"] = consul_counts(self.ports["consul"]), time.monotonic()
            except (OSError, BenchError, ValueError) as e:
                errors.append(f"counting Consul requests: {e}")

        counter = threading.Thread(target=count, name="consul-counter", daemon=True)
        counter.start()
        try:
            measure()
            if counter.is_alive():
                progress("waiting for the Consul counting window to close")
            counter.join(timeout=CONSUL_WAIT + window + 60)
        finally:
            # On an error or Ctrl-C the helper threads end at their next wait.
            stop.set()
        if errors:
            raise BenchError(f"measuring the Consul load failed: {errors[:5]}")
        if "last" not in counted:
            raise BenchError("the Consul counting window did not complete")
        first, last = counted["first"], counted["last"]
        minutes = (counted["t1"] - counted["t0"]) / 60

        def health(counts: Dict[str, int], prefix: str) -> int:
            return sum(n for key, n in counts.items() if key.startswith(f"GET /v1/health/service/{prefix}"))

        svc = health(last, "svc") - health(first, "svc")
        every = sum(last.values()) - sum(first.values())
        watched = len({k for k in last if k.startswith("GET /v1/health/service/")})
        # Consul (and the test server) hold a blocking query for wait plus a
        # random extra of up to wait/16, so each watcher asks about once per
        # 60 * (1 + 1/32) s on average.
        expected = WATCHED_SERVICES * 60 / (CONSUL_WAIT * (1 + 1 / 32))
        self.results["consul_load"] = {
            "window_s": round(counted["t1"] - counted["t0"], 1),
            "watched_services": watched,
            "svc_requests": svc,
            "svc_requests_per_min": round(svc / minutes, 1),
            "all_requests": every,
            "all_requests_per_min": round(every / minutes, 1),
            "expected_svc_requests_per_min": round(expected, 1),
            "other_requests": {
                key: last[key] - first.get(key, 0) for key in sorted(last)
                if not key.startswith("GET /v1/health/service/svc") and last[key] != first.get(key, 0)
            },
            "consul_wait_s": CONSUL_WAIT,
            "during_load": True,
        }

    # -- convergence -------------------------------------------------------------

    def convergence(self) -> None:
        gateway = http.client.HTTPConnection(HOST, self.ports["restygate"], timeout=10)
        consul = http.client.HTTPConnection(HOST, self.ports["consul"], timeout=10)
        path = "/dc1/conv/small"
        times: List[float] = []
        polls: List[int] = []
        try:
            status = self._get(gateway, path)
            if status != 200:
                raise BenchError(f"GET {path} before any flip: {status}")
            for flip in range(CONVERGENCE_FLIPS):
                critical = flip % 2 == 0
                want = 503 if critical else 200
                body = json.dumps(registration("conv", self.ports["backend"], "critical" if critical else "passing"))
                started = time.perf_counter()
                consul.request("PUT", "/v1/catalog/register", body=body.encode())
                answer = consul.getresponse()
                answer.read()
                if answer.status != 200:
                    raise BenchError(f"PUT /v1/catalog/register: {answer.status}")
                # Bounded: at most 20000 polls or 10 s, whichever comes first.
                deadline = started + 10.0
                for tries in range(1, 20001):
                    status = self._get(gateway, path)
                    if status == want:
                        times.append((time.perf_counter() - started) * 1e3)
                        polls.append(tries)
                        break
                    if time.perf_counter() > deadline:
                        raise BenchError(f"flip {flip}: gateway still answers {status} after 10 s")
                else:
                    raise BenchError(f"flip {flip}: gateway still answers {status} after 20000 polls")
                time.sleep(FLIP_SPACING)
        finally:
            gateway.close()
            consul.close()
        ordered = sorted(times)
        self.results["convergence"] = {
            "flips": len(times),
            "median_ms": round(statistics.median(times), 2),
            # Nearest rank.
            "p90_ms": round(ordered[math.ceil(0.9 * len(ordered)) - 1], 2),
            "max_ms": round(ordered[-1], 2),
            "min_ms": round(ordered[0], 2),
            "polls_median": statistics.median(polls),
            "times_ms": [round(t, 2) for t in times],
            "flip_spacing_s": FLIP_SPACING,
        }

    @staticmethod
    def _get(conn: http.client.HTTPConnection, path: str) -> int:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status

    # -- profile -----------------------------------------------------------------

    def profile(self) -> None:
        """A small c50 run against restygate with py-spy sampling it."""
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            raise BenchError("py-spy is not installed (bench/run --profile installs it)")
        # Long enough for a couple of thousand samples even with --quick.
        seconds = max(20, int(self.args.duration))
        spy: Dict[str, subprocess.Popen[bytes]] = {}

        def attach(wrk_pid: int) -> None:
            spy["proc"] = self.procs.start(
                "py-spy",
                # Blocking mode (py-spy pauses restygate for each sample):
                # --nonblocking lost about half the samples here.  The pauses
                # slow restygate down (the report shows wrk's numbers under
                # the profiler) but not one function more than another.
                [pyspy, "record", "--pid", str(self.pids["restygate"]), "--rate", str(PROFILE_RATE),
                 "--duration", str(seconds), "--format", "raw", "--output", str(self.profile_raw)],
                self.tmp / "py-spy.log",
            )

        case = CASES[0]
        result = run_wrk(self.url("restygate", case.path), case.connections, seconds, None, self.monitored,
                         during=attach)
        proc = spy["proc"]
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise BenchError("py-spy did not finish") from None
        if proc.returncode != 0 or not self.profile_raw.exists():
            raise BenchError(f"py-spy failed:\n{tail(self.tmp / 'py-spy.log')}")
        self.results["profile"] = {
            "case": case.name, "rate_hz": PROFILE_RATE, "seconds": seconds,
            "wrk_under_profiler": {k: result[k] for k in ("rps", "p50_ms", "p99_ms")},
            "restygate_cpu_s": result["cpu_s"]["restygate"],
            **summarize_profile(self.profile_raw.read_text(), PROFILE_RATE * seconds),
        }


# The reactor loop and twistd's start-up frames hold every sample; ranked by
# total time they would fill the table and say nothing about the hot path.
_PLUMBING = re.compile(
    r"^(<module> \(twistd\)|\S+ \(twisted/(scripts|application)/"
    r"|ReactorBase\.(run|mainLoop) |EPollReactor\.doPoll |_PollLikeMixin\._doReadOrWrite "
    r"|callWithLogger \(twisted/python/log\.py\)|callWithContext \(twisted/python/log\.py\)"
    r"|\w*ContextTracker\.callWithContext )"
)


def _function(frame: str) -> str:
    # py-spy frames read "name (path/to/file.py:123)"; drop the line number
    # so a function counts once wherever in it the sample landed.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for prefix in (str(ROOT) + "/", "/usr/local/lib/", "/usr/lib/"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def summarize_profile(raw: str, possible: float, top: int = 15) -> Dict[str, Any]:
    """Top functions by self and by total samples, from py-spy's collapsed stacks."""
    own: Dict[str, int] = {}
    total: Dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";")]
        # py-spy may put "process ..." / "thread ..." roots before the Python frames.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        # Only the reactor's thread: py-spy counts the idle reactor thread
        # pool's worker (waiting on its queue) as busy in some samples.
        if not frames or frames[0].startswith("Thread._bootstrap "):
            continue
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        # A recursive function counts once per sample.
        for name in set(frames):
            total[name] = total.get(name, 0) + count

    def ranked(table: Dict[str, int], skip: Optional[re.Pattern[str]] = None) -> List[Dict[str, Any]]:
        rows = [kv for kv in sorted(table.items(), key=lambda kv: -kv[1]) if not (skip and skip.match(kv[0]))]
        return [{"function": k, "samples": v, "percent": round(100 * v / samples, 1)} for k, v in rows[:top]]

    return {
        "samples": samples,
        "busy_percent": round(100 * samples / possible, 1) if possible else None,
        "top_self": ranked(own),
        "top_total": ranked(total, _PLUMBING),
        "top_total_note": "reactor loop and twistd start-up frames (in every sample) left out",
        "top_restygate_total": ranked({k: v for k, v in total.items() if "(restygate/" in k}),
    }


# ---------------------------------------------------------------------------
# Summaries and the report.


def median_of(runs: List[Dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarize_target(target: str, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One target's medians over its runs of a case."""
    roles = runs[0]["cpu_s"].keys()
    cpu = {role: round(statistics.median(r["cpu_s"][role] for r in runs), 3) for role in roles}
    requests = median_of(runs, "requests")
    return {
        "rps": round(median_of(runs, "rps"), 1),
        "p50_ms": round(median_of(runs, "p50_ms"), 3),
        "p99_ms": round(median_of(runs, "p99_ms"), 3),
        "errors": sum(sum(r["socket_errors"].values()) + r["non_2xx"] for r in runs),
        "cpu_s": cpu,
        "proxy_cpu_us_per_request": round(1e6 * cpu[target] / requests, 1) if requests else None,
    }


def summarize(results: Dict[str, Any]) -> Dict[str, Any]:
    summary: Dict[str, Any] = {}
    for case, by_target in results["runs"].items():
        row: Dict[str, Any] = {target: summarize_target(target, runs) for target, runs in by_target.items()}
        row["restygate_vs_nginx"] = round(row["restygate"]["rps"] / row["nginx"]["rps"], 3)
        row["restygate_vs_stock"] = round(row["restygate"]["rps"] / row["stock"]["rps"], 3)
        summary[case] = row
    return summary


def summarize_default_log(results: Dict[str, Any]) -> Dict[str, Any]:
    """The default access log's cases: medians, and default against file."""
    summary: Dict[str, Any] = {}
    for case, by_target in results["runs"].items():
        row: Dict[str, Any] = {target: summarize_target(target, runs) for target, runs in by_target.items()}
        row["default_vs_file"] = round(row["restygate-default"]["rps"] / row["restygate"]["rps"], 3)
        summary[case] = row
    return summary


def targets(data: Dict[str, Any]) -> List[str]:
    """
    Issue 11's targets, each with the measured value and whether it is met:
    restygate/nginx at small and 10 KiB c50, p99 against nginx's, CPU per
    request and RSS per process (CPython; PyPy has its own two).
    """
    summary = data["summary"]
    interpreter = data["config"].get("interpreter") or {}
    pypy = "pypy" in str(interpreter.get("label", "")).lower()
    checks: List[Tuple[str, Optional[float], float, bool]] = []  # (what, value, limit, at least)
    for case, ratio in (("small c50", 0.5 if pypy else 0.35), ("10k c50", 0.5 if pypy else 0.3)):
        row = summary.get(case)
        checks.append((f"{case}: restygate/nginx", row["restygate_vs_nginx"] if row else None, ratio, True))
    for case in ("small c50", "10k c50"):
        row = summary.get(case)
        p99 = row["restygate"]["p99_ms"] / row["nginx"]["p99_ms"] if row and row["nginx"]["p99_ms"] else None
        checks.append((f"{case}: restygate p99 / nginx p99", p99, 3.0, False))
    if not pypy:
        row = summary.get("small c50")
        checks.append(("small c50: restygate CPU us per request",
                       row["restygate"]["proxy_cpu_us_per_request"] if row else None, 100.0, False))
    memory = data.get("restygate_memory_after_run_kib", {})
    rss = max((m.get("VmRSS", 0) / 1024 for m in memory.values()), default=None)
    checks.append(("largest restygate process RSS after the run, MiB", rss, 300.0 if pypy else 80.0, False))
    out = ["targets (issue 11, " + ("PyPy" if pypy else "CPython") + "):"]
    for what, value, limit, at_least in checks:
        if value is None:
            out.append(f"  {what:<52} not measured")
            continue
        met = value >= limit if at_least else value <= limit
        out.append(f"  {what:<52} {value:>8.3f}  {'>=' if at_least else '<='} {limit:g}  "
                   f"{'met' if met else 'MISSED'}")
    return out


def report(data: Dict[str, Any]) -> str:
    lines: List[str] = []
    add = lines.append
    summary = data["summary"]
    env = data["environment"]
    add(f"restygate benchmark  {data['timestamp']}  ({data['rounds']} round(s) x {data['duration_s']:g} s per run, "
        f"medians; wrk -t1)")
    config = data["config"]
    interpreter = config.get("interpreter")
    if interpreter:
        python = (f"restygate ({interpreter.get('data_path', 'unknown')} data path) and stock under "
                  f"{interpreter['label']}, Twisted {interpreter['twisted']}")
    else:  # an earlier run's JSON
        python = f"Python {env['python']}, Twisted {env['twisted']}"
    add(f"{env['cpu_model']}, {env['nproc']} cores; {python}; {env['nginx']}, {env['wrk'].split(' Copyright')[0]}")
    if "restygate_access_log" not in config:  # an earlier run's JSON
        logs = "access logs on for all three proxies"
    elif config["restygate_access_log"]:
        logs = "access logs on for all three proxies, each to a file"
    else:
        logs = "access logs on for all three proxies (restygate's in its daemon log: it has no --access-log)"
    add(f"restygate workers: {config['restygate_workers']}; nginx proxy worker_processes: "
        f"{config['nginx_proxy_workers']}; {logs}; load average "
        f"{env['loadavg_start'][0]:.2f} at start, {env['loadavg_end'][0]:.2f} at end")
    warmup = data.get("warmup")
    if warmup and warmup.get("jit_small_c50_s"):
        add(f"JIT warm-up first: restygate and stock {warmup['jit_small_c50_s']:g} s small c50 each, then "
            f"{warmup['per_case_s']['restygate']:g} s per case (nginx {warmup['per_case_s']['nginx']:g} s)")
        gc_env = data["config"].get("stock_pypy_gc")
        if gc_env:
            settings = " ".join(f"{k}={v}" for k, v in sorted(gc_env.items()))
            add(f"stock runs with {settings}, as restygate's workers do")
    add("")
    add(f"{'case':<12} | {'req/s restygate':>15} {'nginx':>8} {'stock':>7} | {'rg/nginx':>8} {'rg/stock':>8} | "
        f"{'p50 ms rg':>9} {'nginx':>6} {'stock':>7} | {'p99 ms rg':>9} {'nginx':>6} {'stock':>7} | errors")
    add("-" * 132)
    for case, row in summary.items():
        rg, ng, st = row["restygate"], row["nginx"], row["stock"]
        errors = "/".join(str(row[t]["errors"]) for t in TARGETS)
        add(f"{case:<12} | {rg['rps']:>15.0f} {ng['rps']:>8.0f} {st['rps']:>7.0f} | "
            f"{row['restygate_vs_nginx']:>8.3f} {row['restygate_vs_stock']:>8.2f} | "
            f"{rg['p50_ms']:>9.2f} {ng['p50_ms']:>6.2f} {st['p50_ms']:>7.2f} | "
            f"{rg['p99_ms']:>9.2f} {ng['p99_ms']:>6.2f} {st['p99_ms']:>7.2f} | {errors}")
    add("")
    add(f"CPU seconds during one {data['duration_s']:g} s run (median), user+sys: the proxy under test, the nginx "
        "backend, wrk,")
    add("and every other process on the machine (not ours: other load competing for the 2 cores); and the proxy's")
    add("CPU time per request")
    add(f"{'case':<12} {'target':<10} {'proxy':>7} {'backend':>8} {'wrk':>6} {'others':>7} {'proxy us/req':>13}")
    for case, row in summary.items():
        for target in TARGETS:
            t = row[target]
            add(f"{case:<12} {target:<10} {t['cpu_s'][target]:>7.2f} {t['cpu_s']['backend']:>8.2f} "
                f"{t['cpu_s']['wrk']:>6.2f} {t['cpu_s']['others']:>7.2f} {t['proxy_cpu_us_per_request']:>13.1f}")
    noisy = [
        f"{case} {target} round {i + 1} ({run['cpu_s'].get('others', 0):.1f} s)"
        for case, by_target in data["runs"].items() for target, runs in by_target.items()
        for i, run in enumerate(runs) if run["cpu_s"].get("others", 0) > NOISY_OTHERS * data["duration_s"]
    ]
    if noisy:
        total = sum(len(runs) for by_target in data["runs"].values() for runs in by_target.values())
        shown = "; ".join(noisy[:8]) + ("; ..." if len(noisy) > 8 else "")
        add(f"{len(noisy)} of {total} runs had other processes using over {NOISY_OTHERS:.0%} of a core "
            f"(lower numbers; a median absorbs one such round per case): {shown}")
    add("")
    lines.extend(targets(data))
    add("")
    for label, key in (("after warm-up", "restygate_memory_after_warmup_kib"),
                       ("after the run", "restygate_memory_after_run_kib")):
        mem = data.get(key, {})
        shown = ", ".join(f"pid {pid}: VmRSS {m.get('VmRSS', 0) / 1024:.1f} MiB (peak {m.get('VmHWM', 0) / 1024:.1f})"
                          for pid, m in mem.items())
        add(f"restygate RSS {label}: {shown}")
    if data.get("convergence_failed"):
        add(f"discovery convergence FAILED: {data['convergence_failed']}")
    conv = data.get("convergence")
    if conv:
        add(f"discovery convergence ({conv['flips']} health flips, PUT sent -> gateway answer changes): "
            f"median {conv['median_ms']:.1f} ms, p90 {conv['p90_ms']:.1f} ms, max {conv['max_ms']:.1f} ms")
    load = data.get("consul_load")
    if load:
        add(f"Consul load: {load['svc_requests']} health queries for the {WATCHED_SERVICES} svc* watches in "
            f"{load['window_s']:.0f} s = {load['svc_requests_per_min']:.1f}/min (expected ~"
            f"{load['expected_svc_requests_per_min']:.0f}/min); all Consul requests: "
            f"{load['all_requests_per_min']:.1f}/min for {load['watched_services']} watched services, "
            f"measured during the wrk runs")
    default = data.get("default_log")
    if default:
        add("")
        add('restygate with its default access log (access-log = "-": whole lines written by the workers (or the one process) to the')
        add(f"daemon's stdout, a file here: {default['stdout_access_lines']} access lines, "
            f"{default['stdout_bytes'] / 1e6:.1f} MB), in alternation with the file case above:")
        add(f"{'case':<12} | {'req/s file':>10} {'default':>8} | {'default/file':>12} | {'p99 ms file':>11} "
            f"{'default':>8} | {'us/req file':>11} {'default':>8}")
        for case, row in default["summary"].items():
            f, d = row["restygate"], row["restygate-default"]
            add(f"{case:<12} | {f['rps']:>10.0f} {d['rps']:>8.0f} | {row['default_vs_file']:>12.3f} | "
                f"{f['p99_ms']:>11.2f} {d['p99_ms']:>8.2f} | {f['proxy_cpu_us_per_request']:>11.1f} "
                f"{d['proxy_cpu_us_per_request']:>8.1f}")
    profile = data.get("profile")
    if profile:
        add("")
        add(f"py-spy on restygate during {profile['case']} ({profile['samples']} samples at {profile['rate_hz']} Hz, "
            f"busy {profile['busy_percent']}% of the time; wrk under the profiler: "
            f"{profile['wrk_under_profiler']['rps']:.0f} req/s)")
        for title, key in (("by self time", "top_self"),
                           ("by total time (reactor loop and twistd frames left out)", "top_total"),
                           ("restygate functions by total time", "top_restygate_total")):
            add(f"  top {len(profile[key])} {title}:")
            for row in profile[key]:
                add(f"    {row['percent']:>5.1f}%  {row['function']}")
    return "\n".join(lines)


def progress(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description="Benchmark restygate against nginx and stock Twisted.")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs, a 15 s Consul window")
    parser.add_argument("--rounds", type=int, help="rounds of A B C runs per case (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 8; --quick 3)")
    parser.add_argument("--window", type=float, help="seconds Consul requests are counted (default 60; --quick 15)")
    parser.add_argument("--workers", type=int, help="restygate --workers, when restygate has that option")
    parser.add_argument("--instances", type=int, default=1,
                        help="register the benchmarked service this many times (same backend), for the balancer")
    parser.add_argument("--balancer", help="restygate --balancer (round-robin, least-request, random, hash)")
    parser.add_argument("--profile", action="store_true", help="also profile restygate with py-spy (small c50)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs and logs)")
    parser.add_argument("--pypy", action="store_true",
                        help="run restygate and the stock proxy under PyPy, from the virtualenv bench/run makes "
                             "in .bench-pypy, with a JIT warm-up first")
    parser.add_argument("--python", metavar="PATH",
                        help="interpreter for restygate (the twistd beside it) and the stock proxy "
                             "(default: this one, with twistd from PATH)")
    parser.add_argument("--report", metavar="RESULT.json", help="only print the report of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 3.0 if args.quick else 8.0
    if args.window is None:
        args.window = 15.0 if args.quick else 60.0
    if args.rounds < 1 or args.duration < 1 or args.window < 1 or args.instances < 1:
        parser.error("--rounds, --duration, --window and --instances must be at least 1")
    if args.pypy and args.python is None:
        args.python = str(PYPY_VENV / "bin" / "python")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f)))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    # Started in the background by a shell, we inherit SIGINT ignored; a
    # Ctrl-C or kill -INT must still stop the run and what it started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            progress(f"{tool} is not installed: run bench/run, which installs it")
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="restygate-bench-"))
    bench = Bench(args, tmp)
    started = datetime.datetime.now(datetime.timezone.utc)
    failed = False
    try:
        env = environment()
        bench.interpreter = interpreter_info(bench.python)
        progress(f"restygate and stock under {bench.interpreter['label']} ({bench.python})")
        if args.profile and bench.interpreter["implementation"] != "CPython":
            raise BenchError(f"py-spy profiles CPython only; restygate would run under {bench.interpreter['label']}")
        progress(f"working in {tmp}")
        bench.start_all()
        progress("started: " + ", ".join(f"{n} pid {p} port {bench.ports[n]}" for n, p in bench.pids.items()))
        bench.check_targets()
        bench.consul_window(bench.throughput)
        bench.results["restygate_memory_after_run_kib"] = bench.restygate_memory()
        progress("measuring discovery convergence")
        try:
            bench.convergence()
        except BenchError as e:
            # Reported with everything measured so far, and the run fails.
            progress(f"discovery convergence failed: {e}")
            bench.results["convergence_failed"] = str(e)
        if bench.access_log:
            progress("restygate with its default access log, to its stdout")
            bench.default_log()
        if args.profile:
            progress("profiling restygate with py-spy")
            bench.profile()
        env["loadavg_end"] = os.getloadavg()
        data: Dict[str, Any] = {
            "timestamp": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "quick": args.quick,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "environment": env,
            "config": {
                "restygate_workers": bench.workers,
                "stock_pypy_gc": {k: os.environ.get(k, v) for k, v in STOCK_PYPY_GC.items()} if bench.jit else None,
                "nginx_proxy_workers": bench.workers,
                "nginx_backend_workers": 1,
                "wrk": "wrk -t1 --latency",
                "restygate_command": bench.restygate_cmd,
                "interpreter": bench.interpreter,
                "restygate_access_log": bench.access_log,
                "cases": [c.__dict__ for c in CASES],
            },
            **bench.results,
        }
        data["summary"] = summarize(data)
        if "default_log" in data:
            data["default_log"]["summary"] = summarize_default_log(data["default_log"])
        text = report(data)
        RESULTS.mkdir(exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        for name in (f"{stamp}.json", "latest.json"):
            (RESULTS / name).write_text(json.dumps(data, indent=2) + "\n")
        if args.profile:
            # Collapsed stacks: flamegraph.pl or speedscope read them as they are.
            for name in (f"{stamp}.pyspy.txt", "latest.pyspy.txt"):
                shutil.copy(bench.profile_raw, RESULTS / name)
        print(text)
        print(f"\nresults: {RESULTS / (stamp + '.json')}")
        return 1 if "convergence_failed" in data else 0
    except (BenchError, OSError, http.client.HTTPException) as e:
        progress(f"failed: {type(e).__name__}: {e}")
        failed = True
        return 1
    except KeyboardInterrupt:
        progress("interrupted: stopping what the run started")
        return 128 + signal.SIGINT
    except SystemExit as e:
        # From _terminate (SIGTERM, SIGHUP).
        progress("terminated: stopping what the run started")
        return int(e.code) if isinstance(e.code, int) else 1
    finally:
        bench.procs.stop_all()
        if args.keep or failed:
            progress(f"logs and configs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
