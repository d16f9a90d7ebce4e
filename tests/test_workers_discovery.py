"""
One discovery per host: C{twistd restygate --workers 2} (installed from the
wheel) against the Consul test server run as its own process. The daemon
asks Consul once for the host and every worker routes with the snapshots it
sends them; a worker that restarts gets the current view at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Dict

from tests.support.installed import DaemonTestCase, free_ports, installed, log_tail


class OneDiscoveryPerHostTests(DaemonTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.body = f"served {time.time()}\n".encode("ascii")
        backend = self.serve_file(self.base, "hello.txt", self.body)
        registrations = os.path.join(self.base, "register.json")
        with open(registrations, "w") as f:
            json.dump(
                [
                    {
                        "Datacenter": "dc1", "Node": "n1", "Address": "127.0.0.1",
                        "Service": {"ID": "web-1", "Service": "Web", "Port": backend},
                        "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
                                   {"CheckID": "service:web-1", "ServiceID": "web-1", "Status": "passing"}],
                    },
                ],
                f,
            )
        [self.consul_port] = free_ports(1)
        consul_log = os.path.join(self.base, "consul.log")
        consul = self.spawn(
            [sys.executable, "-m", "restygate.testing.consul", "--port", str(self.consul_port), "--register",
             registrations, "--http-max-conns-per-client", "200"],
            consul_log,
        )
        self.waitForPort(self.consul_port, consul, consul_log)
        self.port, self.admin_port = free_ports(2)
        self.log = os.path.join(self.base, "twistd.log")
        daemon = self.spawn(
            [installed().venv.twistd, "-n", "--pidfile=", "--logfile=-", "restygate",
             "--consul", f"127.0.0.1:{self.consul_port}", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--admin", f"tcp:{self.admin_port}:interface=127.0.0.1", "--workers", "2"],
            self.log,
        )
        self.waitForPort(self.port, daemon, self.log)
        self.waitForPort(self.admin_port, daemon, self.log)
        self.waitFor(lambda: self.get(self.admin("/healthz"))[1].startswith(b"ok (2/2"), "both workers to be up")

    def consul_requests(self) -> Dict[str, Any]:
        code, body = self.get(f"http://127.0.0.1:{self.consul_port}/_test/stats")
        requests: Dict[str, Any] = json.loads(body)["requests"]
        return requests

    def serves(self, count: int) -> None:
        url = f"http://127.0.0.1:{self.port}/dc1/web/hello.txt"
        answers = [self.get(url) for _ in range(count)]
        self.assertEqual(answers, [(200, self.body)] * count, log_tail(self.log))

    def test_consul_is_asked_once_for_the_host(self) -> None:
        # Ready before any request: the daemon's discovery has Consul's answer.
        self.waitFor(lambda: self.get(self.admin("/readyz"))[0] == 200, "the gateway to be ready")
        self.serves(20)
        # Each worker that served (the kernel spreads the connections) holds
        # the snapshot; one that did not was never sent it.
        status = json.loads(self.get(self.admin("/status?format=json"))[1])
        views = [[s["service"] for s in w["status"]["services"]] for w in status["workers"]]
        self.assertIn(["Web"], views)
        self.assertTrue(all(v in ([], ["Web"]) for v in views), views)
        # One first fetch and one blocking query from the daemon, not one each per worker.
        self.waitFor(lambda: self.consul_requests().get("GET /v1/health/service/Web", 0) >= 2, "the blocking query")
        self.assertEqual(self.consul_requests().get("GET /v1/health/service/Web"), 2)
        self.assertLessEqual(self.consul_requests().get("GET /v1/catalog/datacenters", 0), 2)
        # The daemon's /metrics shows its discovery's load, once for the host.
        metrics = self.get(self.admin("/metrics"))[1].decode()
        self.assertEqual(metrics.count("restygate_consul_max_connections 64.0"), 1, metrics)
        self.assertIn("restygate_watches_dedicated 1.0", metrics)
        # Each watch's series once, the daemon's (workers' views have no
        # watches, and no age they could know).
        watch = [line for line in metrics.splitlines() if line.startswith("restygate_watch_")]
        names = ("index", "last_success_age_seconds", "errors")
        self.assertEqual([line.split(" ")[0] for line in watch],
                         [f'restygate_watch_{name}{{dc="dc1",service="Web"}}' for name in names], metrics)
        self.assertNotIn("+Inf", "".join(watch))
        # Made-up names: answered from the daemon's names, nothing asked of Consul.
        before = self.consul_requests()
        for name in ["ghost", "nope", "WEBX"]:
            code, body = self.get(f"http://127.0.0.1:{self.port}/dc1/{name}/")
            self.assertEqual((code, json.loads(body)["error"]), (404, "unknown service"))
        self.assertEqual(self.get(f"http://127.0.0.1:{self.port}/nowhere/web/")[0], 404)
        after = self.consul_requests()
        self.assertEqual({k: v for k, v in after.items() if "/v1/health/" in k},
                         {k: v for k, v in before.items() if "/v1/health/" in k})

    def test_a_restarted_worker_gets_the_view_at_once(self) -> None:
        self.serves(4)
        self.waitFor(lambda: self.consul_requests().get("GET /v1/health/service/Web", 0) >= 2, "the blocking query")
        asked = self.consul_requests()["GET /v1/health/service/Web"]
        workers = json.loads(self.get(self.admin("/status?format=json"))[1])["workers"]
        # A worker that served (the kernel spreads connections): its slot asked for Web.
        index = next(n for n, w in enumerate(workers) if (w["status"] or {}).get("services"))
        pid = workers[index]["pid"]
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            worker = json.loads(self.get(self.admin("/status?format=json"))[1])["workers"][index]
            return worker["pid"] not in (None, pid) and worker["up"]

        self.waitFor(restarted, f"worker {index} to be started again")
        status = json.loads(self.get(self.admin(f"/status?worker={index}&format=json"))[1])
        self.assertEqual([s["service"] for s in status["services"]], ["Web"])
        self.serves(10)
        self.assertEqual(self.consul_requests()["GET /v1/health/service/Web"], asked)
