"""
C{restygate-check-config FILE}: validate a config file the way a start
would (the file, every value, the catalog, the listener descriptions and the
TLS files they name) and exit 0 or 1 with one line, starting nothing.

The same as C{twistd restygate --check-config --config FILE}, for deploy
scripts and for C{ExecReload=} guards that should refuse a broken file
before SIGHUP.  The environment (C{CONSUL_HTTP_ADDR}...) is read as at
start.  Also runs as C{python3 -m restygate.daemon.checkconfig FILE}.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from twisted.python import usage

from restygate.daemon.load import run_check

__all__ = ["main"]


class _Arguments(usage.Options):
    synopsis = "Usage: restygate-check-config FILE"
    longdesc = "Validate a restygate config file; exit 0 if a start would accept it, 1 if not."

    def parseArgs(self, *paths: str) -> None:
        if len(paths) != 1:
            raise usage.UsageError("expected one FILE")
        self["path"] = paths[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Check the file named in C{argv} (default: C{sys.argv[1:]}); the exit status.
    """
    arguments = _Arguments()
    try:
        arguments.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        print(f"{arguments}\nrestygate-check-config: {e}", file=sys.stderr)  # noqa: T201 - the interface
        return 2
    return run_check({"config": arguments["path"]}, os.environ)


if __name__ == "__main__":
    sys.exit(main())
