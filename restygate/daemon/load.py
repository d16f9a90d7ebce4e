"""
Loading the configuration the daemon runs with, as a start, a reload and
C{--check-config} all do: command line over file over environment over
defaults, then the static catalog if one is named.

C{--check-config} goes further than a start's parsing without starting
anything: it asks the kernel whether each listener's interface address is
one of this host's (binding port 0 on it and closing at once, never the
configured port) and whether a Unix socket's directory exists, so a
description that parses but could never listen fails the check instead of
the next start.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Iterator, Mapping, Tuple

from twisted.internet.abstract import isIPv6Address

from restygate.config import Config, ConfigError, build, from_environment, load_toml
from restygate.discovery.catalog import load_catalog

__all__ = ["load", "check_config", "run_check"]

# Options that are not configuration keys.
_NOT_KEYS = ("config", "check-config")


def load(options: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """
    Build the config for these parsed options: command line over file over
    environment over defaults.
    """
    command_line = {key: value for key, value in options.items() if key not in _NOT_KEYS}
    for key, value in command_line.items():
        # An empty repeatable option was not given: the file's list stands.
        if value == []:
            command_line[key] = None
    path = options.get("config")
    layers = [from_environment(environ)]
    if path:
        layers.append(load_toml(path))
    layers.append(command_line)
    config = build(layers, config_file=path)
    if config.catalog:
        load_catalog(config.catalog, config.tags, dict(config.services))
    return config


def _fields(description: str) -> Tuple[str, str, Mapping[str, str]]:
    kind, _, rest = description.partition(":")
    parts = rest.split(":")
    named = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    return kind.strip().lower(), parts[0], named


def _listeners(config: Config) -> Iterator[Tuple[str, str]]:
    for description in config.listen:
        yield "listen", description
    if config.admin:
        yield "admin", config.admin


def probe(config: Config) -> None:
    """
    Raise L{ConfigError} for a listener this host could never listen on.
    """
    for key, description in _listeners(config):
        kind, address, named = _fields(description)
        if kind in ("tcp", "tcp6", "ssl"):
            interface = named.get("interface", "")
            if not interface:
                continue
            family = socket.AF_INET6 if kind == "tcp6" or isIPv6Address(interface) else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.bind((interface, 0))
            except OSError as e:
                raise ConfigError(
                    f"{key}: bad endpoint {description!r}: {interface} is not an address of this host "
                    f"({e.strerror or e})"
                ) from None
        elif kind == "unix":
            directory = os.path.dirname(os.path.abspath(address))
            if not os.path.isdir(directory):
                raise ConfigError(f"{key}: bad endpoint {description!r}: no such directory {directory!r}")


def check_config(options: Mapping[str, Any], environ: Mapping[str, str]) -> Tuple[int, str]:
    """
    Build the config as a start would and probe its listeners, starting
    nothing: the exit status and the one line that says why.
    """
    try:
        config = load(options, environ)
        probe(config)
    except ConfigError as e:
        return 1, f"restygate: {e}"
    return 0, f"restygate: configuration OK ({config.config_file or 'no config file'})"


def run_check(options: Mapping[str, Any], environ: Mapping[str, str]) -> int:
    """
    L{check_config}, its line printed (to stderr for an error): the
    command-line side of C{--check-config} and C{restygate-check-config}.
    """
    status, message = check_config(options, environ)
    print(message, file=sys.stderr if status else sys.stdout)  # noqa: T201 - this output is the interface
    return status
