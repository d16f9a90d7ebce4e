"""Go-compatible parsing of Consul query parameters.

Clients are written against Go's rules (``time.ParseDuration``, ``strconv.ParseBool``, ``url.Values``),
so the test server accepts and refuses exactly what Consul does.
"""

from __future__ import annotations

import re
from typing import List, Mapping, Sequence, Tuple

_GO_DURATION_UNITS: Mapping[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek small letter mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Longer units first so that "ms" is not read as "m" followed by garbage.
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
UINT = re.compile(r"[0-9]+")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string (``10s``, ``1m30s``, ``100ms``) into seconds.

    Raises ``ValueError`` for anything Go would refuse, e.g. a bare number other than ``0``.
    """
    rest = text
    sign = 1.0
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    position = 0
    while position < len(rest):
        match = _GO_DURATION_PART.match(rest, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        position = match.end()
    return sign * total


def parse_go_bool(text: str) -> bool:
    """Parse a Go ``strconv.ParseBool`` string; raise ``ValueError`` for anything else."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}")


class Query:
    """The query string of one request, in order, with Go's ``url.Values`` look-up rules."""

    def __init__(self, pairs: Sequence[Tuple[str, str]]) -> None:
        self._pairs = list(pairs)

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self._pairs)

    def get(self, key: str) -> str:
        """The first value of ``key``, or ``""`` when absent (Go's ``Values.Get``)."""
        for k, v in self._pairs:
            if k == key:
                return v
        return ""

    def get_all(self, key: str) -> List[str]:
        return [v for k, v in self._pairs if k == key]
