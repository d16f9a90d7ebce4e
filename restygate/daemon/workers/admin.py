"""
The admin side of a multi-worker gateway, served by the parent on the
configured admin endpoint.  Each worker keeps its own admin site on a
private loopback port; the parent reads them and answers for the whole:

 - C{/metrics}: every worker's series with a C{worker} label added (sum
   over it for gateway totals), plus the parent's C{restygate_workers_up}
   and C{restygate_worker_restarts_total} (only the samples C{name[]}
   names, when it does: the workers are asked for just those);
 - C{/status}: the workers table and each worker's status document (JSON),
   or a page linking each worker's own page (C{?worker=N});
 - C{/healthz}: 200 while at least one worker is up;
 - C{/readyz}: 200 when every worker that is up says it is ready.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from restygate import __version__
from restygate.ops.admin import AdminSite, answer, answer_html, answer_json, refuse_names
from restygate.ops.pages import workers_page
from restygate.ops.selection import Names, TooManyNames, as_query, asked, registry_text
from restygate._compat import quiet_pool
__all__ = ["WorkerAdmin", "Worker", "Workers", "merge_expositions"]

log = Logger()

# Seconds a worker's admin site gets to answer the parent.
WORKER_ANSWER_TIMEOUT = 5.0

class Worker(Protocol):
    """
    One worker process, as its parent knows it.
    """

    @property
    def index(self) -> int: ...

    @property
    def pid(self) -> Optional[int]: ...

    @property
    def up(self) -> bool: ...

    @property
    def started(self) -> float: ...

    @property
    def admin_port(self) -> Optional[int]:
        """
        The port of its private admin site, once it is up.
        """


class Workers(Protocol):
    """
    The worker processes the parent runs: a slot per worker (L{None} while
    none runs in it), and the times each slot's worker was started again.
    """

    @property
    def workers(self) -> Sequence[Optional[Worker]]: ...

    @property
    def restarts(self) -> Sequence[int]: ...

    @property
    def started(self) -> float: ...


_Block = Tuple[str, List[str], List[str]]


def _blocks(worker: str, text: str) -> Optional[List[_Block]]:
    """
    C{text}'s families in order, each as (name, its HELP and TYPE lines,
    its sample lines with C{worker="..."} added as the last label); L{None}
    when a line is not a Prometheus text sample.  Lines are edited as text,
    never parsed into objects: a worker in front of thousands of services
    writes hundreds of thousands of lines.
    """
    label = f'worker="{worker}"'
    blocks: List[_Block] = []
    current: Optional[_Block] = None
    base = ""
    for line in text.split("\n"):
        if not line:
            continue
        if line[0] == "#":
            words = line.split(" ", 3)
            if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                if current is None or current[0] != words[2]:
                    current = (words[2], [], [])
                    blocks.append(current)
                    # A counter's HELP names NAME_total; its NAME_created samples belong too.
                    base = words[2][:-6] if words[2].endswith("_total") else words[2]
                current[1].append(line)
            continue
        brace = line.find("{")
        if brace >= 0:
            # The label set ends at the last brace: label values may hold braces, values never do.
            end = line.rfind("}")
            if end < brace:
                return None
            name = line[:brace]
            line = f"{line[:end]}{',' if end > brace + 1 else ''}{label}{line[end:]}"
        else:
            space = line.find(" ")
            if space <= 0:
                return None
            name = line[:space]
            line = f"{name}{{{label}}}{line[space:]}"
        if current is None or not name.startswith(base):
            return None
        current[2].append(line)
    return blocks


def _merged(parts: Sequence[Tuple[str, bytes]]) -> str:
    """
    The families of several workers' expositions as one: each sample
    labelled with its worker, a family's samples from every worker together.
    A worker's exposition that does not read as Prometheus text is left out
    (logged): it must not cost the others' series.
    """
    families: Dict[str, Tuple[List[str], List[str]]] = {}
    for worker, exposition in parts:
        blocks = _blocks(worker, exposition.decode("utf-8", "replace"))
        if blocks is None:
            log.warn("worker {worker}'s metrics do not parse", worker=worker)
            continue
        for name, header, samples in blocks:
            merged = families.get(name)
            if merged is None:
                families[name] = (header, samples)
            else:
                merged[1].extend(samples)
    lines = [line for header, samples in families.values() for line in (*header, *samples)]
    return "".join(f"{line}\n" for line in lines)


class _Supervision(Collector):
    """
    The parent's own series: workers up, and restarts per worker.
    """

    def __init__(self, admin: WorkerAdmin) -> None:
        self._admin = admin

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "restygate_workers_up", "Worker processes up and serving.", value=len(self._admin.up())
        )
        restarts = CounterMetricFamily(
            "restygate_worker_restarts", "Times a worker process was started again after it exited.",
            labels=["worker"],
        )
        for index, count in enumerate(self._admin.pool.restarts):
            restarts.add_metric([str(index)], count)
        yield restarts


def merge_expositions(parts: Sequence[Tuple[str, bytes]], *more: Collector, names: Names = None) -> bytes:
    """
    One Prometheus text exposition from several workers' (after the series
    of the C{more} collectors, which prometheus_client writes, restricted
    to C{names} when given), each sample labelled with its part's C{worker}
    value.

    @param parts: (worker label value, that worker's exposition).
    """
    registry = CollectorRegistry(auto_describe=False)
    for collector in more:
        registry.register(collector)
    return registry_text(registry, names) + _merged(parts).encode("utf-8")


class WorkerAdmin:
    """
    The parent's admin state: the pool it reports on, and a client for the
    workers' admin sites.

    @ivar site: the admin L{Site}, for a listener.
    """

    def __init__(self, pool: Workers, reactor: Any, collectors: Sequence[Collector] = ()) -> None:
        self.pool = pool
        self.clock = reactor
        # The parent's own series beyond supervision (its discovery's load).
        self.collectors = collectors
        self._agent = Agent(reactor, pool=quiet_pool(reactor, 2))
        root = Resource()
        for name, page in [(b"metrics", _Metrics), (b"status", _Status), (b"healthz", _Health), (b"readyz", _Ready)]:
            root.putChild(name, page(self))
        self.site = AdminSite(root, reactor)

    def up(self) -> List[Worker]:
        return [w for w in self.pool.workers if w is not None and w.up and w.admin_port is not None]

    def fetch(self, worker: Worker, path: str) -> Deferred[Tuple[int, bytes]]:
        """
        A worker's admin answer to C{GET path}: its status code and body.
        """
        url = f"http://127.0.0.1:{worker.admin_port}{path}".encode("ascii")
        d: Deferred[Any] = self._agent.request(b"GET", url)

        def body(response: Any) -> Deferred[Tuple[int, bytes]]:
            return readBody(response).addCallback(lambda data: (response.code, data))

        d.addCallback(body)
        # Bounds the answer as a whole: connecting, the headers and the body.
        d.addTimeout(WORKER_ANSWER_TIMEOUT, self.clock)
        return d

    def fetch_all(self, path: str) -> Deferred[List[Tuple[Worker, Optional[Tuple[int, bytes]]]]]:
        """
        Every up worker's answer to C{GET path}; L{None} for one that did
        not give one (logged).
        """
        workers = self.up()

        def one(worker: Worker) -> Deferred[Any]:
            def failed(failure: Failure) -> None:
                log.warn(
                    "worker {index} admin site did not answer {path}: {error}",
                    index=worker.index, path=path, error=failure.getErrorMessage(),
                )

            return self.fetch(worker, path).addErrback(failed).addCallback(lambda got: (worker, got))

        return gatherResults([one(worker) for worker in workers])

    def summary(self, worker: Optional[Worker], index: int) -> Dict[str, Any]:
        now = self.clock.seconds()
        return {
            "index": index,
            "pid": worker.pid if worker is not None else None,
            "up": worker is not None and worker.up,
            "uptime_seconds": round(now - worker.started, 3) if worker is not None else None,
            "restarts": self.pool.restarts[index],
        }


class _Page(Resource):
    isLeaf = True

    def __init__(self, admin: WorkerAdmin) -> None:
        Resource.__init__(self)
        self._admin = admin

    def render_GET(self, request: Request) -> Any:
        gone: List[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        d = Deferred.fromCoroutine(self.answer(request))

        def write(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("admin page {path} failed", failure, path=request.path)
            write(answer(request, 500, b"text/plain; charset=utf-8", b"internal error\n"))

        d.addCallbacks(write, failed)
        return NOT_DONE_YET

    async def answer(self, request: Request) -> bytes:
        raise NotImplementedError


class _Health(_Page):
    async def answer(self, request: Request) -> bytes:
        up = len(self._admin.up())
        total = len(self._admin.pool.workers)
        status = 200 if up else 503
        return answer(request, status, b"text/plain; charset=utf-8", f"{'ok' if up else 'down'} ({up}/{total} workers up)\n".encode("ascii"))


class _Ready(_Page):
    async def answer(self, request: Request) -> bytes:
        admin = self._admin
        reasons = []
        for worker, got in await admin.fetch_all("/readyz"):
            if got is None:
                reasons.append(f"worker {worker.index}: no answer")
            elif got[0] != 200:
                reasons.append(f"worker {worker.index}: {_reason(got[1])}")
        if not admin.up():
            reasons.append("no worker is up")
        if reasons:
            return answer_json(request, 503, {"ready": False, "reason": "; ".join(reasons)})
        return answer_json(request, 200, {"ready": True})


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body)["reason"])
    except (ValueError, KeyError, TypeError):
        return "not ready"


class _Metrics(_Page):
    async def answer(self, request: Request) -> bytes:
        admin = self._admin
        try:
            names = asked(request.args)
        except TooManyNames as e:
            return refuse_names(request, e)
        parts = [
            (str(worker.index), got[1])
            for worker, got in await admin.fetch_all("/metrics" + as_query(names)) if got is not None
        ]
        body = merge_expositions(parts, _Supervision(admin), *admin.collectors, names=names)
        return answer(request, 200, CONTENT_TYPE_LATEST.encode("ascii"), body)


class _Status(_Page):
    async def answer(self, request: Request) -> bytes:
        admin = self._admin
        wanted = request.args.get(b"worker", [b""])[0]
        accept = (request.getHeader(b"accept") or b"").lower()
        as_json = request.args.get(b"format") == [b"json"] or b"application/json" in accept
        if wanted:
            return await self._one_worker(request, wanted, as_json)
        documents: Dict[int, Any] = {}
        for answered, got in await admin.fetch_all("/status?format=json"):
            if got is not None and got[0] == 200:
                documents[answered.index] = json.loads(got[1])
        workers = []
        for index, slot in enumerate(admin.pool.workers):
            entry = admin.summary(slot, index)
            entry["status"] = documents.get(index)
            workers.append(entry)
        document = {
            "version": __version__,
            "uptime_seconds": round(admin.clock.seconds() - admin.pool.started, 3),
            "workers": workers,
        }
        if as_json:
            return answer_json(request, 200, document)
        return answer_html(request, 200, workers_page(document))

    async def _one_worker(self, request: Request, wanted: bytes, as_json: bool) -> bytes:
        workers = {str(w.index).encode("ascii"): w for w in self._admin.up()}
        worker = workers.get(wanted)
        if worker is None:
            return answer(request, 404, b"text/plain; charset=utf-8", b"no such worker up\n")
        try:
            got = await self._admin.fetch(worker, "/status?format=json" if as_json else "/status")
        except Exception as e:
            # It may have died or be stuck; that is its state, not our error.
            log.warn("worker {index} admin site did not answer /status: {error}", index=worker.index, error=e)
            return answer(request, 503, b"text/plain; charset=utf-8", b"the worker did not answer\n")
        if as_json:
            return answer(request, got[0], b"application/json", got[1])
        return answer_html(request, got[0], got[1])
