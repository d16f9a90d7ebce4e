"""
Live reload: on SIGHUP (C{systemctl reload restygate}) the configuration is
built again from the same sources as at start -- the config file re-read,
the environment below it and the command line still above it -- and put in
force without dropping a connection.

A reload is all or nothing.  A file that cannot be read or holds a bad value
is refused with one log line and the running configuration stays whole.
Keys only a restart can change (those not C{live} in L{restygate.config.keys}: the listening sockets, the
discovery source, the number of workers) keep their running values, with a
warning naming them; every other key takes effect at once, for requests that
start after the reload.  Requests in flight finish with the settings they
started with.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from typing import Any, Callable, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from restygate.config import KEYS, RESTART_ONLY, Config, ConfigError
from restygate.signals import SignalHook

__all__ = ["Reconfigurable", "Reloadable", "Reloader"]

log = Logger()

class Reconfigurable(Protocol):
    """
    A part of the gateway that keeps values from the config and takes new
    ones on reload.  C{reconfigure} gets an already validated config and
    must not fail on one.
    """

    def reconfigure(self, config: Config) -> None: ...


class Reloadable(Reconfigurable, Protocol):
    """
    What a L{Reloader} reloads: the config in force, and a way to replace it.
    """

    @property
    def config(self) -> Config: ...


def _value(config: Config, key: str) -> Any:
    return getattr(config, KEYS[key].field)


class Reloader(Service):
    """
    Reloads C{target} from C{load} when asked: by L{reload}, or by SIGHUP
    while running in the main thread.

    @param load: builds a config from its sources again; raises
        L{ConfigError} for anything unusable.
    """

    def __init__(self, target: Reloadable, load: Callable[[], Config], reactor: Any) -> None:
        self._target = target
        self._load = load
        self.sighup = SignalHook(signal.SIGHUP, self.reload, reactor)

    def startService(self) -> None:
        super().startService()
        self.sighup.install()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.sighup.remove()
        return succeed(None)

    def reload(self) -> bool:
        """
        Build the config again and put in force what may change live.

        @return: whether the running configuration changed.
        """
        running = self._target.config
        source = running.config_file or "no config file"
        try:
            loaded = self._load()
        except ConfigError as e:
            log.error(
                "reload refused, the running configuration stays in force: {error}", error=str(e)
            )
            return False
        held = [key for key in RESTART_ONLY if _value(loaded, key) != _value(running, key)]
        if held:
            log.warn(
                "reload: changing {keys} needs a restart; the running value stays until then",
                keys=", ".join(held),
            )
        config = replace(loaded, **{KEYS[key].field: _value(running, key) for key in RESTART_ONLY})
        changed = [key for key in KEYS if _value(config, key) != _value(running, key)]
        if not changed:
            log.info("reload ({source}): nothing changed", source=source)
            return False
        self._target.reconfigure(config)
        log.info("reload ({source}): changed {keys}", source=source, keys=", ".join(changed))
        return True
