"""
Whether this process runs the data path compiled to C (setup.py builds it
with mypyc on CPython) or interpreted: the two differ in CPU per request, so
the daemon says which at startup and C{/status} shows it.
"""

from __future__ import annotations

from importlib.machinery import ExtensionFileLoader
from importlib.util import find_spec

__all__ = ["data_path"]


def data_path() -> str:
    """
    C{"compiled"} or C{"interpreted"}: how the module every request runs
    through is loaded.  setup.py compiles the data path's modules together
    or not at all, so one tells for all.
    """
    spec = find_spec("restygate.proxy.exchange")
    compiled = spec is not None and isinstance(spec.loader, ExtensionFileLoader)
    return "compiled" if compiled else "interpreted"
