"""
Tests for L{restygate.ops.accesslog}: the combined and JSON lines of proxied
requests, the file destination and its reopening on SIGUSR1, and swapping
format and destination at runtime.
"""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any, Dict, List
from unittest import SkipTest

from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from restygate.ops.accesslog import AccessLog, combined, json_line
from restygate.config import Config, ConfigError, build
from restygate.proxy.observe import FIELDS, Completed
from tests.support.harness import GatewayRig, captured_log, eventually, reactor

COMBINED = re.compile(
    r'^(?P<client>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
    r"(?P<upstream>\S+) (?P<dc>\S+) (?P<service>\S+) (?P<duration>\d+\.\d{3}) (?P<retries>\d+)$"
)


def _record(**fields: Any) -> Completed:
    values: Dict[str, Any] = dict(
        started=1700000000.25, duration=0.0123, client="192.0.2.7", method="GET", uri="/dc1/web/x?y=1",
        proto="HTTP/1.1", host="gw", status=200, bytes_sent=512, dc="dc1", service="web",
        upstream="10.0.0.5:8080", upstream_latency=0.01, retries=1, error=None, aborted=False,
        referer="https://example.com/", user_agent="curl/8.0",
    )
    values.update(fields)
    return Completed(**values)


class _Captured:
    """
    The access log events published while a test runs.
    """

    def __init__(self, case: TestCase) -> None:
        self.lines: List[str] = []
        globalLogPublisher.addObserver(self._observe)
        case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "restygate.access":
            self.lines.append(event["line"])


class FormatTests(SynchronousTestCase):
    def test_combined(self) -> None:
        line = combined(_record())
        self.assertEqual(
            line,
            '192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] "GET /dc1/web/x?y=1 HTTP/1.1" 200 512 '
            '"https://example.com/" "curl/8.0" 10.0.0.5:8080 dc1 web 0.012 1',
        )

    def test_combined_empty_fields(self) -> None:
        """
        Missing values are "-", as in Apache's and nginx's logs.
        """
        line = combined(_record(bytes_sent=0, referer="", user_agent="", upstream=None, dc=None, service=None))
        self.assertTrue(line.endswith(' 200 - "-" "-" - - - 0.012 1'), line)

    def test_combined_escapes(self) -> None:
        """
        Quotes, backslashes, control and non-ASCII characters a client sent
        are escaped: one request is one line with its fields in place.
        """
        line = combined(_record(uri='/a"b\\c\nd\xe9', user_agent='x" "y'))
        self.assertNotIn("\n", line)
        match = COMBINED.match(line.replace('\\"', "'"))
        assert match is not None, line
        self.assertEqual(match["request"], "GET /a'b\\\\c\\x0Ad\\xE9 HTTP/1.1")
        self.assertEqual(match["agent"], "x' 'y")

    def test_json(self) -> None:
        """
        Every field of the record, and the time in ISO 8601.
        """
        record = _record(uri="/é\"")
        document = json.loads(json_line(record))
        self.assertEqual(document.pop("time"), "2023-11-14T22:13:20.250+00:00")
        self.assertEqual(document, {k: getattr(record, k) for k in document})
        self.assertEqual(len(document), len(FIELDS))
        self.assertNotIn("\n", json_line(record))


class ConfigTests(SynchronousTestCase):
    def test_keys(self) -> None:
        """
        "-" is the daemon's log; the format is one of two names.
        """
        self.assertEqual((build([]).access_log, build([]).access_log_format), (None, "combined"))
        config = build([{"access-log": "/var/log/restygate/access.log", "access-log-format": "json"}])
        self.assertEqual((config.access_log, config.access_log_format), ("/var/log/restygate/access.log", "json"))
        for key, value in [("access-log-format", "common"), ("access-log", ""), ("access-log", 3)]:
            error = self.assertRaises(ConfigError, build, [{key: value}])
            self.assertTrue(str(error).startswith(f"{key}: "), str(error))


class ProxiedTests(TestCase):
    async def test_combined_line_for_a_proxied_request(self) -> None:
        captured = _Captured(self)
        rig = GatewayRig(self)
        backend = rig.backend()
        rig.register(backend)
        response, body = await rig.get("/dc1/web/hello?x=1")
        self.assertEqual(response.code, 200)
        await eventually(lambda: captured.lines)
        [line] = captured.lines
        match = COMBINED.match(line)
        assert match is not None, line
        self.assertEqual(match["client"], "127.0.0.1")
        self.assertEqual(match["request"], "GET /dc1/web/hello?x=1 HTTP/1.1")
        self.assertEqual((match["status"], match["size"]), ("200", str(len(body))))
        self.assertEqual(match["upstream"], f"127.0.0.1:{backend.port}")
        self.assertEqual((match["dc"], match["service"], match["retries"]), ("dc1", "web", "0"))

    async def test_json_line_for_a_gateway_error(self) -> None:
        captured = _Captured(self)
        rig = GatewayRig(self, access_log_format="json")
        response, _ = await rig.get("/nowhere/web/")
        self.assertEqual(response.code, 404)
        await eventually(lambda: captured.lines)
        document = json.loads(captured.lines[0])
        self.assertEqual(
            {k: document[k] for k in ("method", "uri", "status", "dc", "service", "upstream", "error")},
            {"method": "GET", "uri": "/nowhere/web/", "status": 404, "dc": "nowhere", "service": "web",
             "upstream": None, "error": "unknown datacenter"},
        )
        self.assertEqual(set(document) - {"time"}, set(FIELDS))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


class FileTests(TestCase):
    async def test_file_and_reopen_on_sigusr1(self) -> None:
        """
        Lines go to the file; after the file is moved away and SIGUSR1
        arrives, new lines go to a new file at the path.
        """
        path = os.path.abspath(self.mktemp())
        rig = GatewayRig(self, access_log=path)
        rig.register(rig.backend())
        await rig.get("/dc1/web/before")
        await eventually(lambda: "/before" in _read(path))
        os.rename(path, path + ".1")
        os.kill(os.getpid(), signal.SIGUSR1)
        await eventually(lambda: os.path.exists(path))
        await rig.get("/dc1/web/after")
        await eventually(lambda: "/after" in _read(path))
        self.assertNotIn("/before", _read(path))
        self.assertNotIn("/after", _read(path + ".1"))
        self.assertEqual(len(_read(path + ".1").splitlines()), 1)

    def test_signal_handler_only_for_a_file(self) -> None:
        """
        The SIGUSR1 handler is installed only with a file, chains to the one
        it replaced, and is put back on stop.
        """
        seen: List[int] = []
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        before = signal.getsignal(signal.SIGUSR1)
        to_twisted_log = AccessLog(build([]), reactor)
        to_twisted_log.startService()
        self.assertIs(signal.getsignal(signal.SIGUSR1), before)
        to_twisted_log.stopService()

        to_file = AccessLog(build([{"access-log": self.mktemp()}]), reactor)
        to_file.startService()
        self.assertIsNot(signal.getsignal(signal.SIGUSR1), before)
        handler: Any = signal.getsignal(signal.SIGUSR1)
        handler(signal.SIGUSR1, None)
        self.assertEqual(seen, [signal.SIGUSR1])
        to_file.stopService()
        self.assertIs(signal.getsignal(signal.SIGUSR1), before)

    async def test_failed_write_is_logged(self) -> None:
        """
        Lines that cannot be written (here: a full device) are counted in
        one error line per turn, not raised into the reactor.
        """
        if not os.path.exists("/dev/full"):
            raise SkipTest("no /dev/full to fail writes with")
        lines = captured_log(self)
        log = AccessLog(build([{"access-log": "/dev/full"}]), reactor)
        log.startService()
        self.addCleanup(log.stopService)
        log(_record(uri="/one"))
        log(_record(uri="/two"))
        await eventually(lambda: any("lost 2 access log line(s)" in line for line in lines))
        self.assertIn("cannot write /dev/full", "\n".join(lines))

    def test_unwritable_file_at_start(self) -> None:
        """
        An access log that cannot be opened ends the start with one line.
        """
        log = AccessLog(build([{"access-log": os.path.join(self.mktemp(), "missing", "access.log")}]), reactor)
        error = self.assertRaises(SystemExit, log.startService)
        self.assertIn("cannot open access log", str(error))


class ReconfigureTests(TestCase):
    def _config(self, **keys: str) -> Config:
        return build([{k.replace("_", "-"): v for k, v in keys.items()}])

    async def test_swap_format_and_destination(self) -> None:
        """
        L{AccessLog.reconfigure} switches format and destination while
        running, installing and removing the SIGUSR1 handler with the file.
        """
        captured = _Captured(self)
        original = signal.getsignal(signal.SIGUSR1)
        log = AccessLog(self._config(), reactor)
        log.startService()
        self.addCleanup(log.stopService)
        log(_record(uri="/one"))
        self.assertEqual(len(captured.lines), 1)
        self.assertTrue(COMBINED.match(captured.lines[0]))

        path = self.mktemp()
        log.reconfigure(self._config(access_log=path, access_log_format="json"))
        self.assertIsNot(signal.getsignal(signal.SIGUSR1), original)
        log(_record(uri="/two"))
        await eventually(lambda: "/two" in _read(path))
        self.assertEqual(json.loads(_read(path))["uri"], "/two")

        log.reconfigure(self._config(access_log="-"))
        self.assertIs(signal.getsignal(signal.SIGUSR1), original)
        log(_record(uri="/three"))
        self.assertEqual(len(captured.lines), 2)
        self.assertTrue(COMBINED.match(captured.lines[1]))
        self.assertEqual(len(_read(path).splitlines()), 1)

    async def test_unopenable_file_keeps_the_current_one(self) -> None:
        path = self.mktemp()
        log = AccessLog(self._config(access_log=path), reactor)
        log.startService()
        self.addCleanup(log.stopService)
        log.reconfigure(self._config(access_log=os.path.join(self.mktemp(), "missing", "x.log")))
        log(_record(uri="/still-here"))
        await eventually(lambda: "/still-here" in _read(path))
