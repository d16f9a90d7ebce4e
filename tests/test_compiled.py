"""
Tests for L{restygate.compiled} and setup.py's compiled data path: the
modules setup.py compiles exist, are loaded all one way (compiled together
or not at all), and the process says which.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from importlib.machinery import ExtensionFileLoader
from typing import List

from twisted.trial.unittest import SynchronousTestCase

from restygate.compiled import data_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compiled_sources() -> List[str]:
    # setup.py's COMPILED, read without running setup().
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["COMPILED"]:
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return value
    raise AssertionError("setup.py names no COMPILED list")


class CompiledDataPathTests(SynchronousTestCase):
    def test_compiled_modules_exist(self) -> None:
        sources = _compiled_sources()
        self.assertIn("restygate/proxy/exchange.py", sources)
        # mypyc refuses a module named twice.
        self.assertEqual(len(sources), len(set(sources)))
        for source in sources:
            self.assertTrue(os.path.isfile(os.path.join(ROOT, source)), source)

    def test_all_one_way_and_said(self) -> None:
        """
        Every module setup.py compiles is loaded the same way, and
        L{data_path} names it.
        """
        kinds = set()
        for source in _compiled_sources():
            spec = importlib.util.find_spec(source[: -len(".py")].replace("/", "."))
            assert spec is not None
            kinds.add(isinstance(spec.loader, ExtensionFileLoader))
        self.assertEqual(len(kinds), 1, "some of the data path is compiled and some is not")
        self.assertEqual(data_path(), "compiled" if kinds.pop() else "interpreted")
