"""
Tests for C{workers}: the installed daemon with several worker processes
on one listener -- supervision, signals, and the parent's admin side -- and
the merging of the workers' metrics.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from typing import Any, Dict, List, Sequence

from twisted.trial.unittest import SynchronousTestCase

from restygate.daemon.workers.admin import merge_expositions
from restygate.daemon.workers.pool import PYPY_GC, worker_environment
from tests.support.installed import DaemonTestCase, log_tail


def _stat(pid: int) -> List[bytes]:
    """
    The fields of C{/proc/<pid>/stat} after the command name: state, parent...
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def _gone(pid: int) -> bool:
    """
    Whether process C{pid} has exited (a zombie nobody reaped has, too).
    """
    try:
        return _stat(pid)[0] == b"Z"
    except FileNotFoundError:
        return True


class MergeExpositionsTests(SynchronousTestCase):
    def test_labels_and_groups(self) -> None:
        """
        Each sample gains its worker's label (labels in name order, as
        prometheus_client writes them); a family's HELP and TYPE appear
        once, all its samples below them.
        """
        one = (
            b"# HELP rg_requests_total Requests.\n"
            b"# TYPE rg_requests_total counter\n"
            b'rg_requests_total{code="2xx"} 3.0\n'
            b"# HELP rg_open Open connections.\n"
            b"# TYPE rg_open gauge\n"
            b"rg_open 2.0\n"
        )
        two = (
            b"# HELP rg_requests_total Requests.\n"
            b"# TYPE rg_requests_total counter\n"
            b'rg_requests_total{code="2xx"} 5.0\n'
            b'rg_requests_total{code="5xx"} 1.0\n'
            b"# HELP rg_open Open connections.\n"
            b"# TYPE rg_open gauge\n"
            b"rg_open 7.0\n"
        )
        self.assertEqual(
            merge_expositions([("0", one), ("1", two)]).decode().splitlines(),
            [
                "# HELP rg_requests_total Requests.",
                "# TYPE rg_requests_total counter",
                'rg_requests_total{code="2xx",worker="0"} 3.0',
                'rg_requests_total{code="2xx",worker="1"} 5.0',
                'rg_requests_total{code="5xx",worker="1"} 1.0',
                "# HELP rg_open Open connections.",
                "# TYPE rg_open gauge",
                'rg_open{worker="0"} 2.0',
                'rg_open{worker="1"} 7.0',
            ],
        )

    def test_histogram_suffixes_stay_in_family(self) -> None:
        """
        A histogram's C{_bucket}, C{_count} and C{_sum} samples stay under
        its family, label values with spaces and braces intact.
        """
        text = (
            b"# HELP h Latency.\n# TYPE h histogram\n"
            b'h_bucket{le="0.1",path="a b{c}"} 1.0\nh_count 1.0\nh_sum 0.05\n'
        )
        self.assertEqual(
            merge_expositions([("3", text)]).decode().splitlines()[2:],
            ['h_bucket{le="0.1",path="a b{c}",worker="3"} 1.0', 'h_count{worker="3"} 1.0', 'h_sum{worker="3"} 0.05'],
        )

    def test_nothing(self) -> None:
        self.assertEqual(merge_expositions([]), b"")

    def test_unparsable_part_left_out(self) -> None:
        """
        A worker whose exposition does not parse costs only its own series.
        """
        good = b"# HELP rg_open Open.\n# TYPE rg_open gauge\nrg_open 2.0\n"
        merged = merge_expositions([("0", b"rg_open{ 2.0\n"), ("1", good)])
        self.assertEqual(merged.decode().splitlines()[2:], ['rg_open{worker="1"} 2.0'])


class WorkerEnvironmentTests(SynchronousTestCase):
    def test_pypy_gc(self) -> None:
        """
        On PyPy a worker gets restygate's GC settings, each unless the
        operator chose one; on CPython the environment passes unchanged.
        """
        self.assertEqual(
            worker_environment({"A": "1"}, "PyPy"),
            {"A": "1", "PYPY_GC_NURSERY": "32MB", "PYPY_GC_MIN": "64MB", "PYPY_GC_INCREMENT_STEP": "8MB"},
        )
        self.assertEqual(
            worker_environment({"PYPY_GC_MIN": "96MB", "PYPY_GC_NURSERY": "4MB"}, "PyPy"),
            {"PYPY_GC_NURSERY": "4MB", "PYPY_GC_MIN": "96MB", "PYPY_GC_INCREMENT_STEP": "8MB"},
        )
        self.assertEqual(worker_environment({"A": "1"}, "CPython"), {"A": "1"})


class WorkersTests(DaemonTestCase):
    """
    C{twistd restygate --workers 2}, installed from the wheel, on a static
    catalog in front of a real backend.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.body = f"served {time.time()}\n".encode("ascii")
        self.config = os.path.join(self.base, "restygate.toml")
        with open(self.config, "w") as f:
            f.write("pool-size = 8\n")
        gateway = self.start_gateway(
            self.base, "demo", self.serve_file(self.base, "hello.txt", self.body),
            "--workers", "2", "--worker-timeout", "2", "--config", self.config, admin=True,
        )
        self.daemon, self.port, self.log = gateway.process, gateway.port, gateway.log
        self.admin_port = gateway.admin_port
        self.waitFor(lambda: self.get(self.admin("/healthz"))[1].startswith(b"ok (2/2"), "both workers to be up")
        self.waitFor(lambda: self.get(self.admin("/readyz"))[0] == 200, "the gateway to be ready")

    def logText(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def status(self) -> Dict[str, Any]:
        code, body = self.get(self.admin("/status?format=json"))
        self.assertEqual(code, 200, body)
        document: Dict[str, Any] = json.loads(body)
        return document

    def pids(self) -> List[Any]:
        return [worker["pid"] for worker in self.status()["workers"]]

    def assertServes(self, count: int) -> None:
        """
        C{count} requests, each on a new connection, all answered by the
        backend through the gateway.
        """
        url = f"http://127.0.0.1:{self.port}/dc1/demo/hello.txt"
        answers = [self.get(url) for _ in range(count)]
        self.assertEqual(answers, [(200, self.body)] * count, log_tail(self.log))

    def metric(self, text: str, sample: str) -> float:
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        self.fail(f"no sample {sample} in:\n{text}")

    def test_workers_are_separate_processes(self) -> None:
        """
        Two worker processes, children of the daemon, each with its own
        pid, each reporting its own status and metrics through the
        parent's admin site.
        """
        pids = self.pids()
        self.assertEqual(len(set(pids)), 2)
        self.assertNotIn(self.daemon.pid, pids)
        for pid in pids:
            self.assertEqual(int(_stat(pid)[1]), self.daemon.pid)
            with open(f"/proc/{pid}/environ", "rb") as f:
                gc = sorted(v for v in f.read().split(b"\0") if v.startswith(b"PYPY_GC_"))
            expected = sorted(f"{name}={value}".encode() for name, value in PYPY_GC.items())
            self.assertEqual(gc, expected if sys.implementation.name == "pypy" else [])
        self.assertServes(10)
        # With the default access log, the workers write their lines to the
        # daemon's log (its stdout) themselves, whole, not through the daemon.
        request_line = '"GET /dc1/demo/hello.txt HTTP/1.1" 200'
        self.waitFor(lambda: self.logText().count(request_line) == 10, "ten access-log lines")
        lines = [line for line in self.logText().splitlines() if request_line in line]
        self.assertTrue(all(re.match(r"\S+ \[worker [01] access\] 127\.0\.0\.1 - - \[", line) for line in lines), lines)
        for worker in self.status()["workers"]:
            self.assertTrue(worker["up"])
            self.assertEqual(worker["status"]["services"][0]["service"], "demo")
        code, metrics = self.get(self.admin("/metrics"))
        text = metrics.decode()
        self.assertEqual(self.metric(text, "restygate_workers_up"), 2.0)
        served = [
            self.metric(text, f'restygate_requests_total{{code="2xx",dc="dc1",service="demo",worker="{index}"}}')
            if f'service="demo",worker="{index}"' in text else 0.0
            for index in (0, 1)
        ]
        self.assertEqual(sum(served), 10.0)
        # A scrape naming its samples gets just those, from the daemon and every worker.
        code, some = self.get(self.admin("/metrics?name[]=restygate_workers_up&name[]=restygate_requests_total"))
        samples = [line for line in some.decode().splitlines() if line and not line.startswith("#")]
        self.assertEqual({line.split("{")[0].split(" ")[0] for line in samples},
                         {"restygate_workers_up", "restygate_requests_total"})
        self.assertEqual(sorted(samples), sorted(line for line in text.splitlines() if line.startswith(
            ("restygate_workers_up ", "restygate_requests_total{"))))
        code, _ = self.get(self.admin("/metrics?" + "&".join(f"name[]=n{k}" for k in range(300))))
        self.assertEqual(code, 400)
        code, page = self.get(self.admin("/status"))
        self.assertIn(b'href="?worker=1"', page)
        code, page = self.get(self.admin("/status?worker=1"))
        self.assertEqual(code, 200)
        self.assertIn(b"demo", page)
        # The log names one admin side, the parent's: the workers' private
        # sites stay out of it.
        log = self.logText()
        self.assertEqual(
            [line.rsplit(" ", 1)[1] for line in log.splitlines() if "restygate admin starting on" in line],
            [str(self.admin_port)],
        )
        self.assertIn(f"starting 2 workers; their admin side (/metrics, /status, /healthz, /readyz) is tcp:{self.admin_port}", log)

    def test_crashed_worker_is_replaced(self) -> None:
        """
        A worker killed outright is started again; the other one serves
        every request meanwhile, and the new one serves when the other is
        killed in turn.
        """
        first, second = self.pids()
        os.kill(first, signal.SIGKILL)
        self.assertServes(20)
        self.waitFor(lambda: self.pids()[0] not in (None, first) and self.status()["workers"][0]["up"],
                     "worker 0 to be started again")
        os.kill(second, signal.SIGKILL)
        self.assertServes(20)
        self.waitFor(lambda: self.pids()[1] not in (None, second) and self.status()["workers"][1]["up"],
                     "worker 1 to be started again")
        code, metrics = self.get(self.admin("/metrics"))
        text = metrics.decode()
        self.assertEqual(self.metric(text, 'restygate_worker_restarts_total{worker="0"}'), 1.0)
        self.assertEqual(self.metric(text, 'restygate_worker_restarts_total{worker="1"}'), 1.0)
        self.assertIn("worker 0 exited", self.logText())
        self.assertIn("worker 1 exited", self.logText())

    def test_stuck_worker_is_replaced(self) -> None:
        """
        A worker that stops answering the heartbeat (here: stopped outright)
        is killed after worker-timeout and replaced; the other serves.
        """
        first, second = self.pids()
        os.kill(first, signal.SIGSTOP)
        # Its own page cannot be had; the parent says so rather than failing.
        self.assertIn(self.get(self.admin("/status?worker=0"))[0], (404, 503))
        self.assertServes(5)
        self.waitFor(lambda: self.pids()[0] not in (None, first) and self.status()["workers"][0]["up"],
                     "the stuck worker to be replaced")
        self.assertIn(f"worker 0 (pid {first}) left the heartbeat unanswered for 2s; killing it", self.logText())
        self.assertEqual(self.pids()[1], second)
        self.assertServes(5)
        self.assertNotIn("admin page", self.logText())

    def test_sighup_checked_by_the_parent_then_reaches_every_worker(self) -> None:
        """
        On SIGHUP the parent checks the configuration file first: a broken
        one is refused once, by the parent, the workers not asked and still
        serving; a good one is then put in force by each worker.
        """
        with open(self.config, "w") as f:
            f.write("pool-size = 0\n")
        self.daemon.send_signal(signal.SIGHUP)
        self.waitFor(lambda: "reload refused" in self.logText(), "the reload to be refused")
        self.assertServes(2)
        self.assertEqual(self.logText().count("reload refused"), 1)
        self.assertNotIn("[worker 0 restygate.daemon.reload", self.logText())
        with open(self.config, "w") as f:
            f.write("pool-size = 16\n")
        self.daemon.send_signal(signal.SIGHUP)
        for index in (0, 1):
            self.waitFor(
                lambda: f"[worker {index} restygate.daemon.reload#info] reload ({self.config}): changed pool-size"
                in self.logText(),
                f"worker {index} to reload",
            )
        self.assertIn(f"[restygate.daemon.reload#info] reload ({self.config}): changed pool-size", self.logText())
        self.assertServes(2)

    def test_workers_end_with_a_killed_parent(self) -> None:
        """
        Workers whose parent was killed (no SIGTERM to pass on) notice that
        their pipe to it closed, and exit instead of living on orphaned.
        """
        pids: Sequence[int] = self.pids()
        self.daemon.kill()
        self.daemon.wait()
        self.waitFor(lambda: all(_gone(pid) for pid in pids), "the orphaned workers to exit")
