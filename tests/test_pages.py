"""
Tests for L{restygate.ops.pages}: the workers' status page, built from its
document (the gateway's page is tested on a live gateway in C{test_admin}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from restygate.ops.pages import workers_page
from tests.support.markup import parse

HOSTILE = '<script>alert("x")</script>'


class WorkersPageTests(SynchronousTestCase):
    def test_rows_and_links(self) -> None:
        """
        A row per worker; a worker that is up links its own page, one that
        is down does not; every element closes in order and values are text.
        """
        page = workers_page({
            "version": HOSTILE,
            "uptime_seconds": 62.4,
            "workers": [
                {"index": 0, "pid": 4321, "up": True, "uptime_seconds": 60.2, "restarts": 0},
                {"index": 1, "pid": None, "up": False, "uptime_seconds": None, "restarts": 3},
            ],
        })
        self.assertTrue(page.startswith(b"<!DOCTYPE html>"))
        parsed = parse(page)
        self.assertEqual((parsed.errors, parsed.open), ([], []))
        self.assertNotIn("script", parsed.tags)
        self.assertEqual(parsed.tags.count("a"), 1)
        self.assertIn(b'<a href="?worker=0">worker 0</a>', page)
        text = "".join(parsed.text)
        self.assertIn(f"restygate {HOSTILE}", text)
        self.assertIn("2 worker processes; up 62 s.", text)
        self.assertIn("worker 04321up60 s0", text)
        self.assertIn("worker 1-down-3", text)
