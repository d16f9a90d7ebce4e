"""
The places that describe the configuration keys follow the one key table:
the README's configuration table and C{twistd restygate --help}.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from restygate.config import KEYS
from restygate.config.reference import markdown_table
from restygate.daemon.tap import Options
from tests.support.installed import ROOT


class ReferenceTests(SynchronousTestCase):
    def test_readme_table(self) -> None:
        """
        The README carries the table the key table makes, row for row.
        """
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        self.assertIn(markdown_table(), readme)

    def test_table_rows(self) -> None:
        """
        One row per key, with its default and whether a reload changes it.
        """
        rows = markdown_table().splitlines()[2:]
        self.assertEqual(len(rows), len(KEYS))
        self.assertIn("| `pool-size` | 64 | live |", markdown_table())
        self.assertIn("| `listen` (repeatable) | tcp:8080 | restart |", markdown_table())

    def test_help(self) -> None:
        """
        Every key is an option whose help ends with its default, but the
        file's tables, which no option could spell.
        """
        # usage wraps the help, also at a hyphen ("round-" / "robin").
        text = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(str(Options()).split()))
        for key in KEYS.values():
            if key.form == "table":
                self.assertNotIn(f"--{key.name}", text)
                continue
            self.assertIn(f"--{key.name}", text)
            self.assertIn(" ".join(f"{key.help} [{key.default_text()}]".split()), text)
