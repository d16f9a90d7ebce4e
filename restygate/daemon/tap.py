"""
The C{twistd restygate} command: options and the service maker.

C{Options} reads the command line, one option per configuration key;
L{Options.postOptions} layers it over the config file, the environment and
the defaults (L{restygate.daemon.load}) and validates once.  A bad value ends the start with one line naming the key, not
a usage dump or a traceback.  C{--check-config} does all of that and stops
there, for deployment scripts and C{ExecReload} guards.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional

from twisted.application.service import IService
from twisted.python import usage

from restygate import __version__
from restygate._compat import install as install_lean_reactor
from restygate.config import KEYS, Config, ConfigError, Key
from restygate.daemon.assembly import make_gateway
from restygate.daemon.gcpolicy import CollectionPolicy
from restygate.daemon.load import load, run_check
from restygate.daemon.workers.pool import make_workers

__all__ = ["Options", "makeService"]


def _help(key: Key) -> str:
    return f"{key.help} [{key.default_text()}]"


def _append(key: Key) -> Callable[["Options", str], None]:
    def opt(self: "Options", value: str) -> None:
        self[key.name].append(value)

    opt.__doc__ = _help(key)
    return opt


def _switch_on(key: Key) -> Callable[["Options"], None]:
    def opt(self: "Options") -> None:
        self[key.name] = True

    opt.__doc__ = _help(key)
    return opt


class Options(usage.Options):
    """
    C{twistd restygate}'s options: one per configuration key
    (L{restygate.config.keys.KEYS}), plus C{--config}, C{--check-config}
    and C{--version}.  An option not given is L{None} (or an empty list),
    so that it does not hide the config file's value.
    """

    synopsis = "[options]"
    longdesc = (
        "Route /<datacenter>/<service>/<path> to the passing instances Consul "
        "knows for <service> in <datacenter>."
    )

    optParameters = [
        *([key.name, None, None, _help(key)] for key in KEYS.values() if key.form == "value"),
        ["config", "c", None, "TOML config file; its keys are these option names."],
    ]

    def __init__(self) -> None:
        super().__init__()
        for key in KEYS.values():
            if key.form != "value":
                self[key.name] = [] if key.form == "list" else None
        self["check-config"] = False
        self.config: Optional[Config] = None
        # As given, for worker processes to parse the same way.
        self.argv: List[str] = []

    def opt_check_config(self) -> None:
        """
        Validate the configuration (file, values, catalog, listeners and their interfaces, TLS files), print the verdict and exit 0 or 1.
        """
        self["check-config"] = True

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"restygate {__version__}")  # noqa: T201 - the one place stdout is the interface
        raise SystemExit(0)

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except ConfigError as e:
            raise SystemExit(f"restygate: {e}") from None

    def postOptions(self) -> None:
        if self["check-config"]:
            raise SystemExit(run_check(self, os.environ))
        self.config = load(self, os.environ)


# Repeatable options and switches need a method each: usage.Options knows
# only single-valued parameters and 0/1 flags without "not given".
for _key in KEYS.values():
    _method = "opt_" + _key.name.replace("-", "_")
    if _key.form == "list":
        setattr(Options, _method, _append(_key))
    elif _key.form == "switch":
        setattr(Options, _method, _switch_on(_key))


def makeService(options: Options) -> IService:
    assert options.config is not None
    config = options.config
    if "twisted.internet.reactor" not in sys.modules:
        # Nothing asked for a reactor yet (twistd --reactor would have
        # installed one): the gateway's own, as its workers run.
        install_lean_reactor()
    from twisted.internet import reactor

    def reload() -> Config:
        return load(options, os.environ)

    # twistd's own options: -n with the log on stdout (systemd, Docker).
    twistd = getattr(options, "parent", None)
    log_on_stdout = twistd is not None and twistd.get("nodaemon") and twistd.get("logfile") in (None, "-")
    if config.workers > 1:
        pool = make_workers(config, options.argv, reload)
        if log_on_stdout:
            pool.log_fd = sys.stdout.fileno()
        CollectionPolicy(reactor).setServiceParent(pool)
        return pool
    gateway = make_gateway(config, load=reload)
    CollectionPolicy(reactor).setServiceParent(gateway)
    if log_on_stdout:
        # The default access log, written as whole lines straight to the
        # log's stdout rather than through twisted.logger's observers, which
        # cost a single-process gateway 15-25 % of its requests a second.
        gateway.access_log.write_to(sys.stdout.fileno(), "restygate.access#info")
    return gateway
