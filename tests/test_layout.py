"""
Tests of the package's shape, read from its source with L{ast}: no import
cycle among restygate's modules (imports only type checkers see, and
imports inside functions, count too), no module over 400 lines, and
Twisted's private names only in L{restygate._compat}, no private attribute
of another module's objects read, the admin side reading other parts only
through its views, and ARCHITECTURE.md naming every module.
"""

from __future__ import annotations

import ast
import re
import os
from functools import lru_cache
from typing import Dict, Iterator, List, Optional, Set, Tuple

from twisted.trial.unittest import SynchronousTestCase

import restygate

PACKAGE = os.path.dirname(os.path.abspath(restygate.__file__))
MAX_LINES = 400
COMPAT = "restygate._compat"


def modules() -> Dict[str, str]:
    """
    Every module of the package: dotted name -> file.
    """
    found: Dict[str, str] = {}
    root = os.path.dirname(PACKAGE)
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
                found[_strip(dotted)] = path
    return found


def _strip(dotted: str) -> str:
    return dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted


@lru_cache(maxsize=None)
def parsed(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def imported(module: str, path: str) -> Iterator[Tuple[str, List[str], int]]:
    """
    Every import statement anywhere in C{path} (module level, under
    C{if TYPE_CHECKING:}, inside functions): the module it names, the names
    it takes from it, and its line.
    """
    tree = parsed(path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            yield base, [alias.name for alias in node.names], node.lineno


def dependencies(known: Dict[str, str]) -> Dict[str, Set[str]]:
    """
    The restygate modules each restygate module imports.  C{from a import b}
    depends on C{a.b} when that is a module, else on C{a}.
    """
    graph: Dict[str, Set[str]] = {}
    for module, path in known.items():
        edges: Set[str] = set()
        for base, names, _ in imported(module, path):
            targets = [f"{base}.{name}" for name in names if f"{base}.{name}" in known]
            if len(targets) < len(names) or not names:
                targets.append(base)
            edges.update(t for t in targets if t in known and t != module)
        graph[module] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """
    One cycle of C{graph} as the modules along it (the first repeated at the
    end), or L{None}.
    """
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found is not None:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found is not None:
                return found
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def twisted_private(base: str, names: List[str]) -> List[str]:
    """
    The private names an import takes from Twisted: a C{_module} along the
    path, or a C{_name} imported from it.
    """
    if base != "twisted" and not base.startswith("twisted."):
        return []
    found = [base] if any(part.startswith("_") for part in base.split(".")) else []
    return found + [f"{base}.{name}" for name in names if name.startswith("_")]


class LayoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.known = modules()

    def test_sees_the_package(self) -> None:
        """
        The walk finds the modules, and the edges they really have.
        """
        graph = dependencies(self.known)
        self.assertIn("restygate.ops.admin", graph)
        self.assertIn("restygate.discovery.model", graph["restygate.discovery.catalog"])

    def test_no_cycles(self) -> None:
        """
        No chain of imports among restygate's modules leads back to where it
        started.
        """
        cycle = find_cycle(dependencies(self.known))
        self.assertIsNone(cycle, f"import cycle: {' -> '.join(cycle or [])}")

    def test_cycle_found(self) -> None:
        """
        The cycle search names a cycle it is shown.
        """
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        self.assertEqual(find_cycle(graph), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": set()}))

    def test_ops_reads_through_views(self) -> None:
        """
        The admin side (ops/) imports from other parts only their public
        vocabulary (the config, discovery's model, a finished request, how
        the process runs its data path): what
        it shows comes through L{restygate.ops.views}, never from a concrete
        class of another part.
        """
        vocabulary = {
            "restygate", "restygate.compiled", "restygate.config", "restygate.signals",
            "restygate.discovery.model", "restygate.proxy.observe",
        }
        graph = dependencies(self.known)
        reaching = {
            module: sorted(t for t in targets if t not in vocabulary and not t.startswith("restygate.ops"))
            for module, targets in graph.items()
            if module.startswith("restygate.ops.")
        }
        self.assertEqual({m: t for m, t in reaching.items() if t}, {})

    def test_module_size(self) -> None:
        """
        No module is over 400 lines.
        """
        long = {}
        for module, path in self.known.items():
            with open(path, encoding="utf-8") as f:
                count = sum(1 for _ in f)
            if count > MAX_LINES:
                long[module] = count
        self.assertEqual(long, {}, f"modules over {MAX_LINES} lines")

    def test_twisted_private_names(self) -> None:
        """
        Twisted's private modules and names are imported by L{restygate._compat}
        alone.
        """
        used = {}
        for module, path in self.known.items():
            if module == COMPAT:
                continue
            for base, names, line in imported(module, path):
                for name in twisted_private(base, names):
                    used[f"{module}:{line}"] = name
        self.assertEqual(used, {}, "Twisted private names outside restygate._compat")

    def test_private_attributes(self) -> None:
        """
        Outside L{restygate._compat}, a module reads a private attribute
        (C{thing._name}) only of its own objects: C{self}, C{cls}, or a name
        the module itself defines.  Another part's or Twisted's private state
        is never reached into.
        """
        allowed = {"os._exit"}
        found = []
        for module, path in self.known.items():
            if module == COMPAT:
                continue
            tree = parsed(path)
            own = {
                node.attr for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            }
            own |= {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Attribute) or not _private(node.attr) or node.attr in own:
                    continue
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                text = ast.unparse(node)
                if text not in allowed:
                    found.append(f"{module}:{node.lineno}: {text}")
        self.assertEqual(found, [])

    def test_private_names_recognised(self) -> None:
        self.assertEqual(twisted_private("twisted.web._newclient", ["Request"]), ["twisted.web._newclient"])
        self.assertEqual(
            twisted_private("twisted.web.client", ["Agent", "_HTTP11ClientFactory"]),
            ["twisted.web.client._HTTP11ClientFactory"],
        )
        self.assertEqual(twisted_private("treq._utils", ["x"]), [])

    def test_architecture_map(self) -> None:
        """
        ARCHITECTURE.md has a line for every module, and names no module
        that does not exist: the map stays true as rooms change.
        """
        with open(os.path.join(os.path.dirname(PACKAGE), "ARCHITECTURE.md"), encoding="utf-8") as f:
            mapped = set(re.findall(r"^- `(restygate/[\w/]+\.py)` — ", f.read(), re.MULTILINE))
        root = os.path.dirname(PACKAGE)
        files = {os.path.relpath(path, root).replace(os.sep, "/") for path in self.known.values()}
        self.assertEqual(
            (sorted(files - mapped), sorted(mapped - files)),
            ([], []),
            "(modules ARCHITECTURE.md lacks a line for, lines for modules that are gone)",
        )
