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
from types import ModuleType
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


def _backend() -> ModuleType:
    # The build backend lives outside the package (pyproject.toml's backend-path).
    path = os.path.join(ROOT, "build_backend", "restygate_backend.py")
    spec = importlib.util.spec_from_file_location("restygate_backend", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WhenCompiledTests(SynchronousTestCase):
    """
    Which builds compile the data path (and so ask for mypy and the typed
    dependencies): a wheel on CPython; an editable install only when forced;
    never on PyPy or with C{RESTYGATE_COMPILE=0}.
    """

    def test_choices(self) -> None:
        compiles = _backend().compiles
        cases = {
            # (editable, RESTYGATE_COMPILE, implementation): compiles
            (False, "", "CPython"): True,
            (True, "", "CPython"): False,
            (True, "1", "CPython"): True,
            (False, "0", "CPython"): False,
            (True, "0", "CPython"): False,
            (False, "", "PyPy"): False,
            (False, "1", "PyPy"): False,
        }
        seen = {case: compiles(case[0], case[1], case[2]) for case in cases}
        self.assertEqual(seen, cases)

    def test_requires_follow(self) -> None:
        """
        Only a build that compiles asks for what compiling needs.
        """
        backend = _backend()
        wheel = backend.get_requires_for_build_wheel()
        editable = backend.get_requires_for_build_editable()
        mypy = [r for r in backend.COMPILE_REQUIRES if r.startswith("mypy==")]
        self.assertEqual(len(mypy), 1)
        self.assertEqual(mypy[0] in wheel, backend.compiles(editable=False))
        self.assertEqual(mypy[0] in editable, backend.compiles(editable=True))


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
