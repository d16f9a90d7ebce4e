"""
restygate's build backend: setuptools' own, asking for what compiling the
data path (setup.py, mypyc) needs only when a build compiles it.

Compiling type-checks the data path first, so it needs mypy (pinned: what
mypyc generates must not change under us), the mypy-zope plugin setup.cfg's
[mypy] names, and every package restygate imports, for their types.  An
editable install or a PyPy one never compiles and should not wait for them.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Dict, List, Optional

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 -- every other hook is setuptools' own

COMPILE_REQUIRES = [
    "mypy==2.4.1",
    "mypy-zope==1.0.17",
    "Twisted[tls]>=25.5",
    "treq>=24.9.1",
    "zope.interface>=5",
    "attrs>=22.2.0",
    "prometheus-client>=0.13",
    "httptools>=0.6",
    "service_identity>=18.1.0",
    "pyOpenSSL>=21.0.0",
    "cryptography>=39.0",
    "idna>=2.4",
]


#: C{RESTYGATE_COMPILE} as this build was started with: C{"1"} compiles
#: (and a failure stops the build), C{"0"} never does.
CHOICE = os.environ.get("RESTYGATE_COMPILE", "")
FORCED = CHOICE == "1"


def compiles(editable: bool, choice: str = CHOICE, implementation: str = platform.python_implementation()) -> bool:
    """
    Whether this build compiles the data path: on CPython, unless
    C{RESTYGATE_COMPILE=0}; an editable one only with C{RESTYGATE_COMPILE=1}.
    """
    if choice == "0" or implementation != "CPython":
        return False
    return choice == "1" or not editable


def get_requires_for_build_wheel(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    extra = COMPILE_REQUIRES if compiles(editable=False) else []
    return list(_setuptools.get_requires_for_build_wheel(config_settings)) + extra


def get_requires_for_build_editable(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    extra = COMPILE_REQUIRES if compiles(editable=True) else []
    return list(_setuptools.get_requires_for_build_editable(config_settings)) + extra
