"""
setup.cfg holds restygate's metadata and options.  This file adds one
thing: on CPython, the modules every proxied request runs through are
compiled to C with mypyc, from the type hints they already carry.

CPython spends most of a proxied request interpreting restygate's own
small methods (parsing, routing, headers, the access-log line, metrics);
compiled, the same code takes about 40 % less time in an in-process driver
of the data path, and a single process about a fifth less CPU per request
under bench/run (README, Benchmark).  PyPy's JIT does that by itself, so
PyPy installs stay pure Python, and so do editable installs (C{pip install
-e}): a checkout being worked on must run what it says, and a compiled
module would shadow its edited source.

C{RESTYGATE_COMPILE} overrides: C{1} compiles (editable installs too, and
a failure stops the build), C{0} never does.  Unset, a failure to compile
(no C compiler, no Python headers) leaves a pure-Python install and says
so; the daemon logs which one it runs at startup.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import sysconfig
from typing import Any, List

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "build_backend"))

from restygate_backend import FORCED, compiles  # noqa: E402 -- found through the line above

# mypyc's runtime shared by the compiled modules: one top-level module,
# restygate__mypyc.
GROUP = "restygate"

# Only modules whose classes mypyc can compile as native classes: no class
# decorators (zope's implementer is declared after the class), no classes
# defined conditionally, no zope Interface defined (mypyc generates C that
# does not build for one: upstream/balancer.py).
COMPILED = [
    "restygate/front/server.py",
    "restygate/front/request.py",
    "restygate/front/parser.py",
    "restygate/front/body.py",
    "restygate/proxy/deadlines.py",
    "restygate/proxy/engine.py",
    "restygate/proxy/exchange.py",
    "restygate/proxy/failover.py",
    "restygate/proxy/headers.py",
    "restygate/proxy/observe.py",
    "restygate/proxy/parts.py",
    "restygate/proxy/policy.py",
    "restygate/proxy/rewrite.py",
    "restygate/proxy/routing.py",
    "restygate/upstream/choice.py",
    "restygate/upstream/client.py",
    "restygate/upstream/handler.py",
    "restygate/upstream/outliers.py",
    "restygate/upstream/pickers.py",
    "restygate/upstream/pool.py",
    "restygate/upstream/retry.py",
    "restygate/discovery/remote.py",
    "restygate/ops/accesslog.py",
    "restygate/ops/metrics.py",
    "restygate/ops/series.py",
]


# setuptools runs this script once per step of an install; only these
# build anything (metadata steps need no extensions, and mypyc takes a
# minute).  pip's editable install is the editable_wheel command.
_BUILDS = {"bdist_wheel", "build", "build_ext", "install", "editable_wheel"}


def _wanted() -> bool:
    return bool(_BUILDS & set(sys.argv)) and compiles(editable="editable_wheel" in sys.argv)


def _drop_stale_builds() -> None:
    # An editable install that compiled left the modules' builds beside
    # their sources, where they would go on shadowing every later edit.
    stems = [source[: -len(".py")] for source in COMPILED] + [f"{GROUP}__mypyc"]
    for stem in stems:
        for built in glob.glob(os.path.join(HERE, stem + ".*.so")):
            os.remove(built)


def _can_compile() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    return shutil.which(compiler) is not None and os.path.exists(headers)


def _ext_modules() -> List[Any]:
    if not _wanted():
        if "editable_wheel" in sys.argv:
            _drop_stale_builds()
        return []
    if not FORCED and not _can_compile():
        sys.stderr.write("restygate: no C compiler or Python headers; installing the data path as pure Python\n")
        return []
    try:
        from mypyc.build import mypycify

        return list(mypycify(COMPILED, opt_level="3", group_name=GROUP))
    except Exception as e:
        if FORCED:
            raise
        sys.stderr.write(f"restygate: not compiling the data path ({e!r}); installing it as pure Python\n")
        return []


setup(ext_modules=_ext_modules())
