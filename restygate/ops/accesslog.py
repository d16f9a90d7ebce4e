"""
The access log: one line per finished request, in the Apache/nginx
C{combined} format (plus upstream fields) or as one JSON object, written to
the daemon's log or to a file of its own.

Rotation: with C{access-log = "-"} the lines are twisted.logger events and go
wherever the daemon's log goes, so they rotate with it (C{twistd --logfile}
rotates by size and on SIGUSR1; stdout under systemd or Docker is the
journal's or the runtime's business).  With a file, logrotate works either
with C{copytruncate} (the file is opened in append mode, so writes land at
the new end) or with C{create} plus C{postrotate kill -USR1 <pid>}: SIGUSR1
makes the gateway reopen the path.  The handler chains to the one it
replaced, so twistd's own SIGUSR1 rotation of C{--logfile} keeps working.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Callable, Dict, Final, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger, formatTime
from twisted.web.http import datetimeToLogString

from restygate.config import Config
from restygate.proxy.observe import FIELDS, Completed
from restygate.signals import SignalHook

__all__ = ["AccessLog", "combined", "json_line", "FORMATS"]

log = Logger()
access = Logger(namespace="restygate.access")

# Like nginx: quotes, backslashes, control and non-ASCII characters (the
# request line and headers are latin-1 decoded bytes) become escapes, so a
# client cannot forge a line or break a field apart.
_ESCAPES: Final[Dict[int, str]] = {
    code: f"\\x{code:02X}" for code in [*range(0x20), *range(0x7F, 0x100)]
}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


@lru_cache(maxsize=4)
def _log_time(second: int) -> str:
    # The format has whole seconds: one formatting per second, not per line.
    text: str = datetimeToLogString(second)
    return text


class _LastSecond:
    """
    The stamp of the second the last line was in.  A line's time is nearly
    always in the same second as the one before, and comparing it with that
    second's bounds costs a fraction of int() and a cache lookup; any other
    second is asked of C{make} (itself cached, for lines of a few seconds
    interleaved).
    """

    __slots__ = ("start", "end", "text", "_make")

    def __init__(self, make: Callable[[int], str]) -> None:
        self._make = make
        self.start = self.end = 0.0
        self.text = ""

    def at(self, when: float) -> str:
        second = int(when)
        self.start, self.end = float(second), float(second + 1)
        self.text = self._make(second)
        return self.text


_STARTED: Final = _LastSecond(_log_time)
# Small numbers' text, for the status and retries of every line: formatting an
# int costs several times a list index.
_DECIMAL: Final = [str(n) for n in range(1000)]


def combined(c: Completed) -> str:
    """
    The combined log format, then C{upstream dc service duration retries}
    (and, for a tunnel, the bytes the client sent through it); C{dc} is
    C{asked>served} when failover served the request from another one.
    """
    request_line = f"{c.method} {c.uri} {c.proto}"
    referer, agent = c.referer, c.user_agent
    # Nearly every line needs nothing escaped.  Finding that out for the
    # three fields at once, with str's own tests (printable ASCII, no quote,
    # no backslash), costs a fraction of a regular expression's search,
    # let alone a translate() (a dict lookup per character on PyPy).
    raw = request_line + referer + agent
    if not (raw.isascii() and raw.isprintable()) or '"' in raw or "\\" in raw:
        request_line, referer, agent = (
            request_line.translate(_ESCAPES), referer.translate(_ESCAPES), agent.translate(_ESCAPES)
        )
    started, status, retries, sent = c.started, c.status, c.retries, c.bytes_sent
    stamp = _STARTED.text if _STARTED.start <= started < _STARTED.end else _STARTED.at(started)
    # Every field made text first, so that the line's f-string has only
    # plain text in it: compiled (setup.py), an f-string with a format
    # spec or a non-text value in it becomes a str.format() call per field.
    status_text = _DECIMAL[status] if status < 1000 else str(status)
    retries_text = _DECIMAL[retries] if retries < 1000 else str(retries)
    sent_text = str(sent) if sent else "-"
    duration = "%.3f" % c.duration
    failed_over = c.failed_over + ">" if c.failed_over else ""
    line = (
        f'{c.client} - - {stamp} "{request_line}" {status_text} {sent_text} '
        f'"{referer or "-"}" "{agent or "-"}" {c.upstream or "-"} {failed_over}{c.dc or "-"} '
        f'{c.service or "-"} {duration} {retries_text}'
    )
    # An Upgrade tunnel's line, at its close, has the bytes the other way too.
    return line + " " + str(c.bytes_received) if status == 101 else line


def json_line(c: Completed) -> str:
    """
    Every field of the record, after its start as an ISO 8601 C{time}.
    """
    record: Dict[str, Any] = {
        "time": datetime.fromtimestamp(c.started, timezone.utc).isoformat(timespec="milliseconds")
    }
    for name, value in zip(FIELDS, c.values()):
        record[name] = value
    if c.failure is not None:
        record["failure"] = c.failure.name.lower()
    return json.dumps(record, separators=(",", ":"))


FORMATS: Dict[str, Callable[[Completed], str]] = {"combined": combined, "json": json_line}


class AccessLog(Service):
    """
    A request observer writing access log lines; its format and destination
    can be swapped while running with L{reconfigure}.
    """

    def __init__(self, config: Config, reactor: Any) -> None:
        self._reactor = reactor
        self._format = FORMATS[config.access_log_format]
        self._path = config.access_log
        self._file: Optional[io.FileIO] = None
        # Lines of this reactor turn, written together by _flush.
        self._pending: List[str] = []
        self._flush_call: Optional[IDelayedCall] = None
        self._usr1 = SignalHook(signal.SIGUSR1, self.reopen, reactor)
        self._fd: Optional[int] = None
        self._system = ""

    def write_to(self, fd: int, system: str) -> None:
        """
        With the default destination (the daemon's own log), write lines
        straight to C{fd}, where that log goes, as its own lines under
        C{system}: for a worker, instead of sending each line through the
        daemon to be logged again.
        """
        self._fd, self._system = fd, system

    def __call__(self, c: Completed) -> None:
        line = self._format(c)
        if self._fd is not None and self._path is None:
            ended = c.started + c.duration
            stamp = _ENDED.text if _ENDED.start <= ended < _ENDED.end else _ENDED.at(ended)
            self._pending.append(f"{stamp} [{self._system}] {line}")
            if self._flush_call is None:
                self._flush_call = self._reactor.callLater(0, self._flush)
            return
        if self._file is None:
            access.info("{line}", line=line)
            return
        self._pending.append(line)
        # One write per reactor turn: a burst of requests finishing together
        # costs one system call, and no line waits longer than the turn.
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def startService(self) -> None:
        Service.startService(self)
        if self._path is not None:
            try:
                self._file = _open(self._path)
            except OSError as e:
                raise SystemExit(f"restygate: cannot open access log {self._path}: {e.strerror}")
            self._handle_usr1(True)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self._handle_usr1(False)
        self._close()
        return succeed(None)

    def reconfigure(self, config: Config) -> None:
        """
        Use C{config}'s format and destination from now on; a file that
        cannot be opened is logged and the current destination kept.
        """
        self._format = FORMATS[config.access_log_format]
        if config.access_log == self._path:
            return
        if self.running and config.access_log is not None:
            if not self._switch_to(config.access_log, "keeping the current access log"):
                return
        else:
            self._close()
        self._path = config.access_log
        self._handle_usr1(bool(self.running) and self._path is not None)

    def reopen(self) -> None:
        """
        Open the path again, after logrotate moved the file away.
        """
        if self._file is None or self._path is None:
            return
        if self._switch_to(self._path, "still writing the old access log"):
            log.info("reopened the access log {path}", path=self._path)

    def _switch_to(self, path: str, otherwise: str) -> bool:
        """
        Write to C{path} from now on; if it cannot be opened, say so and
        keep the current destination.
        """
        try:
            opened = _open(path)
        except OSError as e:
            log.error("{otherwise}: cannot open {path}: {error}", otherwise=otherwise, path=path,
                      error=e.strerror)
            return False
        self._close()
        self._file = opened
        return True

    def _flush(self) -> None:
        self._flush_call = None
        lines, self._pending = self._pending, []
        if self._fd is not None and self._path is None:
            _write_whole_lines(self._fd, lines)
            return
        if self._file is None or not lines:
            return
        # One write() of whole lines to a file opened with O_APPEND: lines
        # of several workers sharing the file never interleave.
        try:
            self._file.write(("\n".join(lines) + "\n").encode("utf-8"))
        except OSError as e:
            log.error("lost {n} access log line(s): cannot write {path}: {error}",
                      n=len(lines), path=self._path, error=e.strerror)

    def _close(self) -> None:
        if self._flush_call is not None:
            self._flush_call.cancel()
        if self._file is not None:
            self._flush()
            self._file.close()
            self._file = None
        self._flush_call = None

    def _handle_usr1(self, wanted: bool) -> None:
        if wanted:
            self._usr1.install()
        else:
            self._usr1.remove()


def _open(path: str) -> io.FileIO:
    # Append mode: with logrotate's copytruncate, writes go to the new end.
    # Unbuffered: _flush writes each turn's lines itself, in one call.
    return io.FileIO(path, "a")


@lru_cache(maxsize=4)
def _daemon_log_time(second: int) -> str:
    # How twistd's text log stamps its own lines.
    return formatTime(second)


_ENDED: Final = _LastSecond(_daemon_log_time)


def _write_whole_lines(fd: int, lines: List[str]) -> None:
    """
    Write C{lines} to C{fd} in writes of whole lines no larger than
    PIPE_BUF, which a pipe (or journald's stream) takes whole: lines of
    several processes sharing it never interleave.
    """
    chunk: List[bytes] = []
    size = 0
    for text in lines:
        data = (text + "\n").encode("utf-8")
        if chunk and size + len(data) > select.PIPE_BUF:
            _write(fd, b"".join(chunk), len(chunk))
            chunk, size = [], 0
        chunk.append(data)
        size += len(data)
    if chunk:
        _write(fd, b"".join(chunk), len(chunk))


def _write(fd: int, data: bytes, count: int) -> None:
    try:
        os.write(fd, data)
    except OSError as e:
        log.error("lost {n} access log line(s): cannot write to the daemon's log: {error}",
                  n=count, error=e.strerror)
