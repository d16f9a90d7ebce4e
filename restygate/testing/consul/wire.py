"""The test server's HTTP plumbing: requests as seen, replies, blocking queries and the twisted.web face.

`Exchange` is one request in flight, `BlockingQuery` a read that may wait for an index to move, `Reply` an
answer with Consul's content type and headers; `ConsulApiResource` hands every request to a dispatcher.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Protocol, Tuple, Union

from twisted.internet.interfaces import IDelayedCall
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .goparse import Query
from .model import JSON

TEXT_TYPE = b"text/plain; charset=utf-8"
JSON_TYPE = b"application/json"


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server received it, for tests to assert on.

    ``args`` keeps the query string's order and repeats (``[("tag", "a"), ("tag", "b")]``); ``headers`` maps
    lower-cased names to values (repeated headers joined with ``", "``); ``time`` is the reactor's clock.
    """

    method: str
    path: str
    args: List[Tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes
    time: float

    def arg(self, key: str) -> Optional[str]:
        """The first value of query argument ``key``, or None when absent."""
        for k, v in self.args:
            if k == key:
                return v
        return None


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = TEXT_TYPE
    headers: Tuple[Tuple[str, str], ...] = ()


def text_reply(status: int, message: str, headers: Tuple[Tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, message.encode("utf-8"), TEXT_TYPE, headers)


def json_reply(value: JSON, headers: Tuple[Tuple[str, str], ...] = ()) -> Reply:
    # Compact like Go's encoder; Consul pretty-prints only for ?pretty.
    return Reply(200, json.dumps(value, separators=(",", ":")).encode("utf-8"), JSON_TYPE, headers)


@dataclass
class BlockingQuery:
    """A read that may block: answer at once unless ``min_index`` > 0 and the data has not moved past it."""

    datacenter: str
    min_index: int
    wait: float
    current_index: Callable[[], int]
    answer: Callable[[], Reply]


Outcome = Union[Reply, BlockingQuery]


class Response(Protocol):
    """The part of ``twisted.web.server.Request`` used to answer, with the types Twisted leaves out."""

    def setResponseCode(self, code: int, message: Optional[bytes] = None) -> None: ...

    def setHeader(self, name: bytes, value: bytes) -> None: ...

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


class Exchange:
    """One HTTP request in flight, tracked until it is answered or its client goes away."""

    def __init__(self, request: Request, seen: SeenRequest) -> None:
        self.request = request
        self.seen = seen
        self.query = Query(seen.args)
        self.done = False
        self.waiter: Optional[Waiter] = None


class Waiter:
    """A blocking query parked until its index moves or its wait runs out."""

    def __init__(self, exchange: Exchange, query: BlockingQuery) -> None:
        self.exchange = exchange
        self.query = query
        self.timer: Optional[IDelayedCall] = None


class QuietSite(Site):
    """A Site without the access log: a benchmark's request rate would flood stdout."""

    def log(self, request: http.Request) -> None:
        pass


class ConsulApiResource(Resource):
    """The twisted.web face of a `ConsulServer`: every path goes to the server's dispatcher."""

    isLeaf = True

    def __init__(self, handle: Callable[[Request], None]) -> None:
        super().__init__()
        self._handle = handle

    def render(self, request: Request) -> int:
        self._handle(request)
        return NOT_DONE_YET

