#!/usr/bin/env python3
"""
bench/pair_memory.py: what one (dc, service) costs a worker, in-process,
with tracemalloc, and how long the daemon takes to merge its workers'
/metrics.  Not a test: it measures and prints, it asserts nothing.

    python3 bench/pair_memory.py --pairs 5000

For --pairs pairs of 3 instances each it measures the bytes per pair of
 - the worker's view of the daemon's snapshots (RemoteDiscovery fed the
   daemon's `snap` lines, as a worker is);
 - the worker's request series (each pair answered three times);
then the time to write one worker's request series as Prometheus text and
to merge two such expositions as the daemon does.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from twisted.internet.task import Clock  # noqa: E402

from restygate.daemon.workers.admin import merge_expositions  # noqa: E402
from restygate.discovery.channel import encode_snapshot  # noqa: E402
from restygate.discovery.model import Instance, Snapshot  # noqa: E402
from restygate.discovery.remote import RemoteDiscovery  # noqa: E402
from restygate.ops.series import RequestSeries, ServiceSeries  # noqa: E402
from restygate.proxy.observe import Completed  # noqa: E402


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5000)
    args = parser.parse_args(argv)
    pairs = [(f"dc{n % 5 + 1}", f"svc-{n // 5:04d}") for n in range(args.pairs)]
    lines: List[bytes] = []
    for version, (dc, service) in enumerate(pairs, 1):
        instances = tuple(
            Instance("127.0.0.1", 9000 + k, tags=("v1",), meta=(("version", "1"),), id=f"{service}-{k}",
                     node=f"node-{k}")
            for k in range(3)
        )
        snapshot = Snapshot(dc, service, instances, 100 + version, instances, ())
        lines.append(f"snap {encode_snapshot(version, snapshot)}".encode())
    tracemalloc.start()
    before = traced()
    view = RemoteDiscovery(lambda line: None, Clock(), 5.0)
    for line in lines:
        view.received(line)
    print(f"worker's view: {(traced() - before) / len(pairs):.0f} bytes a pair")
    before = traced()
    series = RequestSeries()
    for dc, service in pairs:
        one = series.services[(dc, service)] = ServiceSeries(dc, service)
        for _ in range(3):
            one.count(Completed(
                started=0.0, duration=0.01, client="", method="GET", uri="/", proto="HTTP/1.1", host="",
                status=200, bytes_sent=10, dc=dc, service=service, upstream="x", upstream_latency=0.005,
                retries=0, error=None, aborted=False,
            ), None)
    print(f"request series: {(traced() - before) / len(pairs):.0f} bytes a pair")
    tracemalloc.stop()
    start = time.perf_counter()
    text = ("\n".join(series.exposition()) + "\n").encode()
    count = text.count(b"\n")
    print(f"one worker's request series as text: {count} lines, {len(text)} bytes, "
          f"{time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    merged = merge_expositions([("0", text), ("1", text)])
    print(f"two merged as the daemon does: {len(merged)} bytes, {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
