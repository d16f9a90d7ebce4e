"""
The kinds of value a configuration key takes, each a parser with the TOML
types a file may give it.

A parser gets the key's name (for its one-line error) and the raw value
from any layer: the command line gives strings, a TOML file gives its own
types.  The TOML types are checked first, so C{pool-size = "64"} in a file
is refused (quoted by mistake, it would otherwise be read as a number)
while C{--pool-size 64} on the command line is the same setting.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

from OpenSSL import crypto
from twisted.internet import endpoints

from restygate.config.model import ConfigError, ConsulAddress
from restygate.tls import CABundle, openssl_reason, read_ca_bundle

__all__ = [
    "Kind",
    "networks",
    "ca_bundle",
    "catalog",
    "access_log",
    "choice",
    "consul",
    "count",
    "endpoint",
    "endpoints_list",
    "flag",
    "optional",
    "optional_string",
    "parse_consul_address",
    "seconds",
    "server_names",
    "size",
    "tags",
    "workers",
    "hash_on",
    "host_routes",
    "failover",
    "BALANCERS",
]


@dataclass(frozen=True)
class Kind:
    """
    How one key's value is read: C{parse(key, raw)} returns the value the
    L{Config} holds or raises L{ConfigError}; C{toml} are the TOML types a
    config file may use for it.
    """

    parse: Callable[[str, Any], Any]
    toml: Tuple[type, ...]
    # How a file's value of the wrong type is described in the error.
    expected: str

    def from_file(self, key: str, value: Any) -> Any:
        """
        Check a TOML value's type, leaving its parsing to L{build}.
        """
        # bool is an int to Python, never to an operator.
        if not isinstance(value, self.toml) or (isinstance(value, bool) and bool not in self.toml):
            raise ConfigError(f"{key}: expected {self.expected}, got {value!r}")
        return value


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]+))(?::(?P<port>[^:]*))?$")
_SERVER_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\.?$")
_TAG = re.compile(r"^[^\x00-\x20\x7f]+$")
# str.isdigit() also accepts '²' or fullwidth digits, which int() rejects or
# reads as something the operator did not type.
_DIGITS = re.compile(r"[0-9]+")
_SIZE = re.compile(r"([0-9]+)\s*([kmg]?)i?b?", re.IGNORECASE)
# Endpoint kinds whose description names a port in its first field.
_PORTED = ("tcp", "tcp6", "ssl")


def parse_consul_address(value: str) -> ConsulAddress:
    """
    Parse C{HOST:PORT}, C{HOST}, C{[v6]:PORT} or C{http(s)://HOST:PORT}.
    """
    text = value.strip()
    scheme = "http"
    match = re.match(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$", text)
    if match is not None:
        scheme = match.group("scheme").lower()
        text = match.group("rest").rstrip("/")
        if scheme not in ("http", "https"):
            raise ConfigError(f"consul: scheme must be http or https, not {scheme!r}")
    hp = _HOST_PORT.match(text)
    if hp is None:
        raise ConfigError(f"consul: expected HOST:PORT or http(s)://HOST:PORT, got {value!r}")
    host = hp.group("v6") or hp.group("host")
    return ConsulAddress(scheme, host, _port("consul", hp.group("port"), 8500))


def _port(key: str, text: Optional[str], default: int) -> int:
    if text is None or text == "":
        return default
    if not _DIGITS.fullmatch(text) or not 0 < int(text) < 65536:
        raise ConfigError(f"{key}: port must be a number from 1 to 65535, got {text!r}")
    return int(text)


def _strings(key: str, value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key}: expected a string or a list of strings, got {value!r}")


def _parse_endpoint(key: str, description: Any) -> str:
    if not isinstance(description, str):
        raise ConfigError(f"{key}: expected an endpoint description, got {description!r}")
    # Twisted's description parser also fails with IndexError ("=") or
    # RuntimeError (a trailing backslash): any failure is a bad value.
    try:
        # Parsed to be checked, never listened on: no reactor needed, and
        # importing the global one here would install Twisted's default
        # before the daemon chooses its own (restygate.daemon.tap).
        endpoints.serverFromString(None, description)
    except crypto.Error as e:
        # An ssl: key or certificate file that is not PEM; OpenSSL's own
        # message is a list of tuples.
        raise ConfigError(
            f"{key}: bad endpoint {description!r}: unreadable TLS key or certificate "
            f"({openssl_reason(e)})"
        ) from None
    except Exception as e:
        # Twisted's message may quote the raw description, newlines and all.
        reason = " ".join(str(e).split())
        raise ConfigError(f"{key}: bad endpoint {description!r}: {reason}") from None
    # Twisted takes any integer as a port and fails only when it binds.
    kind, _, rest = description.partition(":")
    if kind.strip().lower() in _PORTED:
        port = rest.split(":", 1)[0].strip()
        if not _DIGITS.fullmatch(port) or not 0 <= int(port) < 65536:
            raise ConfigError(f"{key}: bad endpoint {description!r}: port must be 0 to 65535, got {port!r}")
    return description


def _parse_endpoints(key: str, value: Any) -> Tuple[str, ...]:
    descriptions = _strings(key, value)
    if not descriptions:
        raise ConfigError(f"{key}: at least one listener is needed")
    for description in descriptions:
        _parse_endpoint(key, description)
    return descriptions


def _parse_server_names(key: str, value: Any) -> Tuple[str, ...]:
    names = _strings(key, value)
    for name in names:
        # fullmatch: '$' alone would let a trailing newline through.
        if not _SERVER_NAME.fullmatch(name):
            raise ConfigError(f"{key}: {name!r} is not a host name (a leading '*.' is allowed)")
    return tuple(name.lower().rstrip(".") for name in names)


def _parse_tags(key: str, value: Any) -> Tuple[str, ...]:
    found = _strings(key, value)
    for tag in found:
        if not _TAG.fullmatch(tag):
            raise ConfigError(f"{key}: {tag!r} must be non-empty, without spaces or control characters")
    return found


def _parse_networks(key: str, value: Any) -> Tuple[Any, ...]:
    found = []
    for text in _strings(key, value):
        try:
            found.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{key}: {text!r} is not an address or a CIDR block (10.0.0.0/8, ::1)") from None
    return tuple(found)


def _parse_optional_string(key: str, value: Any) -> Optional[str]:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _parse_flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _parse_size(key: str, value: Any) -> int:
    match = _SIZE.fullmatch(str(value).strip())
    if isinstance(value, bool) or match is None:
        raise ConfigError(f"{key}: expected a size like 1048576, 512k, 10m or 1g, got {value!r}")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * scale


def _parse_access_log(key: str, value: Any) -> Optional[str]:
    # "-" is the daemon's own log (Config.access_log None); anything else a file.
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"{key}: expected '-' or a file path, got {value!r}")
    return None if value == "-" else value


def _parse_workers(key: str, value: Any) -> int:
    # "auto": one worker per CPU this process may run on (a container's or
    # systemd's CPU affinity counts, not the host's core count).
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    text = str(value).strip()
    if isinstance(value, bool) or not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 256:
        raise ConfigError(f"{key}: expected 'auto' or a whole number from 1 to 256, got {value!r}")
    return int(text)


def _parse_catalog(key: str, value: Any) -> Optional[str]:
    path = _parse_optional_string(key, value)
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"{key}: no such file {path!r}")
    return path


def _parse_ca_bundle(key: str, value: Any) -> Optional[CABundle]:
    path = _parse_optional_string(key, value)
    if path is None:
        return None
    try:
        return read_ca_bundle(path)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _parse_consul(key: str, value: Any) -> ConsulAddress:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return parse_consul_address(value)


# The strategies of restygate.upstream.pickers (a test keeps the two alike).
BALANCERS = ("round-robin", "least-request", "random", "hash")
# header:<field name> | cookie:<cookie name> | client-ip
_HASH_ON = re.compile(r"(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z\-]+|client-ip")


def _parse_hash_on(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _HASH_ON.fullmatch(value):
        raise ConfigError(f"{key}: expected 'header:<name>', 'cookie:<name>' or 'client-ip', got {value!r}")
    return value


# A host name whose labels may be {service} or {dc}, each exactly once.
_HOST_LABEL = re.compile(r"\{service\}|\{dc\}|[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _parse_host_routes(key: str, value: Any) -> Tuple[str, ...]:
    templates = _strings(key, value)
    for template in templates:
        labels = template.lower().rstrip(".").split(".")
        if (
            not all(_HOST_LABEL.fullmatch(label) for label in labels)
            or labels.count("{service}") != 1
            or labels.count("{dc}") != 1
        ):
            raise ConfigError(
                f"{key}: {template!r} must be a host name with the labels {{service}} and {{dc}} once each, "
                "like '{service}.{dc}.gw.example.com'"
            )
    return tuple(template.lower().rstrip(".") for template in templates)


_DATACENTER = re.compile(r"[A-Za-z0-9_.\-]{1,255}")


def _parse_failover(key: str, value: Any) -> Union[str, Tuple[str, ...]]:
    # "nearest" (by Consul's coordinates) or datacenters in order; [] is off.
    if value == "nearest" or value == ["nearest"] or value == ("nearest",):
        return "nearest"
    names = _strings(key, value)
    for name in names:
        if not _DATACENTER.fullmatch(name) or ".." in name:
            raise ConfigError(f"{key}: expected \"nearest\" or a list of datacenter names, got {name!r}")
    return names


_STRING = ((str,), "a string")
_STRINGS = ((str, list), "a string or a list of strings")

endpoint = Kind(_parse_endpoint, *_STRING)
endpoints_list = Kind(_parse_endpoints, *_STRINGS)
server_names = Kind(_parse_server_names, *_STRINGS)
tags = Kind(_parse_tags, *_STRINGS)
networks = Kind(_parse_networks, *_STRINGS)
optional_string = Kind(_parse_optional_string, *_STRING)
flag = Kind(_parse_flag, (bool,), "true or false")
size = Kind(_parse_size, (int, str), "a size like 1048576 or \"10m\"")
access_log = Kind(_parse_access_log, *_STRING)
workers = Kind(_parse_workers, (int, str), "\"auto\" or a whole number")
catalog = Kind(_parse_catalog, *_STRING)
ca_bundle = Kind(_parse_ca_bundle, *_STRING)
consul = Kind(_parse_consul, *_STRING)
hash_on = Kind(_parse_hash_on, *_STRING)
host_routes = Kind(_parse_host_routes, *_STRINGS)
failover = Kind(_parse_failover, (str, list), "\"nearest\" or a list of datacenter names")


def seconds(minimum: float, maximum: float = float("inf")) -> Kind:
    """
    A number of seconds, more than C{minimum} and at most C{maximum}.
    """

    def parse(key: str, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number of seconds, got {value!r}") from None
        # Not finite ('inf', 'nan') is refused: an infinite timer overflows
        # the reactor's poll timeout.
        if isinstance(value, bool) or not math.isfinite(number) or not minimum < number <= maximum:
            at_most = f" and at most {maximum:g}" if math.isfinite(maximum) else ""
            raise ConfigError(f"{key}: must be a number more than {minimum:g}{at_most}, got {value!r}")
        return number

    return Kind(parse, (int, float), "a number of seconds")


def count(minimum: int) -> Kind:
    """
    A whole number of at least C{minimum}.
    """

    def parse(key: str, value: Any) -> int:
        text = str(value).strip()
        if isinstance(value, bool) or not _DIGITS.fullmatch(text) or int(text) < minimum:
            raise ConfigError(f"{key}: expected a whole number of at least {minimum}, got {value!r}")
        return int(text)

    return Kind(parse, (int,), "a whole number")


def choice(*choices: str) -> Kind:
    """
    One of C{choices}, spelled exactly.
    """

    def parse(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return Kind(parse, (str,), f"one of {', '.join(choices)}")


def optional(kind: Kind) -> Kind:
    """
    C{kind}, or nothing: C{"none"} or C{""} (TOML has no null).
    """

    def parse(key: str, value: Any) -> Any:
        if value is None or value == "" or value == "none":
            return None
        return kind.parse(key, value)

    toml = kind.toml if str in kind.toml else (*kind.toml, str)
    return Kind(parse, toml, f"{kind.expected} or \"none\"")
