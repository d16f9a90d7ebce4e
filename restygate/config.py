"""
One immutable, validated configuration for a running gateway.

Values come in layers -- built-in defaults, then the environment, then a TOML
file, then the command line -- and every layer uses the same key names as the
long command-line options (C{pool-size}, C{server-name}...).  L{build} merges
the layers and validates everything once, so the rest of the code never sees a
malformed value; a reload builds a new L{Config} the same way.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

from OpenSSL import crypto
from twisted.internet import endpoints

from restygate.tls import CABundle, openssl_reason, read_ca_bundle

__all__ = [
    "Config",
    "ConfigError",
    "ConsulAddress",
    "build",
    "load_toml",
    "DEFAULTS",
    "KEYS",
]


class ConfigError(ValueError):
    """
    A configuration value is unusable; the message names the key and says why,
    in one line fit to show an operator.
    """


@dataclass(frozen=True)
class ConsulAddress:
    """
    Where the Consul agent's HTTP API listens.
    """

    scheme: str
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.base_url


@dataclass(frozen=True)
class Config:
    """
    Everything a gateway needs to start, already validated.
    """

    listen: Tuple[str, ...]
    consul: ConsulAddress
    # Kept out of repr: the token must never reach a log line.
    consul_token: Optional[str] = field(repr=False)
    pool_size: int
    server_names: Tuple[str, ...]
    tags: Tuple[str, ...]
    upstream_timeout: float
    connect_timeout: float
    catalog: Optional[str]
    watch_idle_timeout: float
    consul_wait: float
    discovery_timeout: float
    config_file: Optional[str] = None
    retries: int = 2
    panic_all_instances: bool = False
    max_stale: Optional[float] = None
    datacenter_grace: float = 60.0
    max_connections: int = 10000
    max_body: Optional[int] = None
    header_timeout: float = 30.0
    body_idle_timeout: float = 60.0
    drain_timeout: float = 30.0
    admin: Optional[str] = "tcp:9901:interface=127.0.0.1"
    access_log: Optional[str] = None
    access_log_format: str = "combined"
    upstream_ca: Optional[CABundle] = None
    upstream_tls_insecure: bool = False
    consul_ca: Optional[CABundle] = None
    workers: int = 1
    worker_timeout: float = 30.0


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]+))(?::(?P<port>[^:]*))?$")
_SERVER_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\.?$")
_TAG = re.compile(r"^[^\x00-\x20\x7f]+$")
# str.isdigit() also accepts '²' or fullwidth digits, which int() rejects or
# reads as something the operator did not type.
_DIGITS = re.compile(r"[0-9]+")


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
    default_port = 8500
    hp = _HOST_PORT.match(text)
    if hp is None:
        raise ConfigError(f"consul: expected HOST:PORT or http(s)://HOST:PORT, got {value!r}")
    host = hp.group("v6") or hp.group("host")
    port = _port("consul", hp.group("port"), default_port)
    return ConsulAddress(scheme, host, port)


def _port(key: str, text: Optional[str], default: int) -> int:
    if text is None or text == "":
        return default
    if not _DIGITS.fullmatch(text) or not 0 < int(text) < 65536:
        raise ConfigError(f"{key}: port must be a number from 1 to 65535, got {text!r}")
    return int(text)


def _listen(value: Any) -> Tuple[str, ...]:
    ports = _strings("listen", value)
    if not ports:
        raise ConfigError("listen: at least one listener is needed")
    for description in ports:
        _endpoint("listen")(description)
    return ports


def _endpoint(key: str) -> Callable[[Any], str]:
    def parse(description: Any) -> str:
        from twisted.internet import reactor

        if not isinstance(description, str):
            raise ConfigError(f"{key}: expected an endpoint description, got {description!r}")
        # Twisted's description parser also fails with IndexError ("=") or
        # RuntimeError (a trailing backslash): any failure is a bad value.
        try:
            endpoints.serverFromString(reactor, description)
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
        return description

    return parse


def _strings(key: str, value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key}: expected a string or a list of strings, got {value!r}")


def _server_names(value: Any) -> Tuple[str, ...]:
    names = _strings("server-name", value)
    for name in names:
        # fullmatch: '$' alone would let a trailing newline through.
        if not _SERVER_NAME.fullmatch(name):
            raise ConfigError(f"server-name: {name!r} is not a host name (a leading '*.' is allowed)")
    return tuple(name.lower().rstrip(".") for name in names)


def _tags(value: Any) -> Tuple[str, ...]:
    tags = _strings("tag", value)
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise ConfigError(f"tag: {tag!r} must be non-empty, without spaces or control characters")
    return tags


def _number(key: str, minimum: float, maximum: float = float("inf")) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
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

    return parse


def _pool_size(value: Any) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not _DIGITS.fullmatch(text) or int(text) < 1:
        raise ConfigError(f"pool-size: expected a whole number of at least 1, got {value!r}")
    return int(text)


def _optional_string(key: str) -> Callable[[Any], Optional[str]]:
    def parse(value: Any) -> Optional[str]:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value

    return parse


def _count(key: str, minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        text = str(value).strip()
        if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", text) or int(text) < minimum:
            raise ConfigError(f"{key}: expected a whole number of at least {minimum}, got {value!r}")
        return int(text)

    return parse


def _flag(key: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")

    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        if value is None or value == "" or value == "none":
            return None
        return parse(value)

    return parse_optional


_SIZE = re.compile(r"([0-9]+)\s*([kmg]?)i?b?", re.IGNORECASE)


def _size(key: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        match = _SIZE.fullmatch(str(value).strip())
        if isinstance(value, bool) or match is None:
            raise ConfigError(f"{key}: expected a size like 1048576, 512k, 10m or 1g, got {value!r}")
        scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
        return int(match.group(1)) * scale

    return parse


def _choice(key: str, choices: Tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return parse


def _access_log(value: Any) -> Optional[str]:
    # "-" is the daemon's own log (Config.access_log None); anything else a file.
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"access-log: expected '-' or a file path, got {value!r}")
    return None if value == "-" else value


def _workers(value: Any) -> int:
    # "auto": one worker per CPU this process may run on (a container's or
    # systemd's CPU affinity counts, not the host's core count).
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    text = str(value).strip()
    if isinstance(value, bool) or not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 256:
        raise ConfigError(f"workers: expected 'auto' or a whole number from 1 to 256, got {value!r}")
    return int(text)


def _catalog(value: Any) -> Optional[str]:
    path = _optional_string("catalog")(value)
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"catalog: no such file {path!r}")
    return path


def _ca_bundle(key: str) -> Callable[[Any], Optional[CABundle]]:
    def parse(value: Any) -> Optional[CABundle]:
        path = _optional_string(key)(value)
        if path is None:
            return None
        try:
            return read_ca_bundle(path)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None

    return parse


def _consul(value: Any) -> ConsulAddress:
    if not isinstance(value, str):
        raise ConfigError(f"consul: expected a string, got {value!r}")
    return parse_consul_address(value)


# key -> (Config field, parser).  The keys are the long option names and the
# TOML keys alike, so one table drives the command line, the file and reload.
KEYS: Dict[str, Tuple[str, Callable[[Any], Any]]] = {
    "listen": ("listen", _listen),
    "consul": ("consul", _consul),
    "consul-token": ("consul_token", _optional_string("consul-token")),
    "pool-size": ("pool_size", _pool_size),
    "server-name": ("server_names", _server_names),
    "tag": ("tags", _tags),
    "upstream-timeout": ("upstream_timeout", _number("upstream-timeout", 0)),
    "connect-timeout": ("connect_timeout", _number("connect-timeout", 0)),
    "catalog": ("catalog", _catalog),
    "watch-idle-timeout": ("watch_idle_timeout", _number("watch-idle-timeout", 0)),
    "consul-wait": ("consul_wait", _number("consul-wait", 0, 600)),
    "discovery-timeout": ("discovery_timeout", _number("discovery-timeout", 0)),
    "retries": ("retries", _count("retries", 0)),
    "panic-all-instances": ("panic_all_instances", _flag("panic-all-instances")),
    "max-stale": ("max_stale", _optional(_number("max-stale", 0))),
    "datacenter-grace": ("datacenter_grace", _number("datacenter-grace", 0)),
    "max-connections": ("max_connections", _count("max-connections", 1)),
    "max-body": ("max_body", _optional(_size("max-body"))),
    "header-timeout": ("header_timeout", _number("header-timeout", 0)),
    "body-idle-timeout": ("body_idle_timeout", _number("body-idle-timeout", 0)),
    "drain-timeout": ("drain_timeout", _number("drain-timeout", 0)),
    "admin": ("admin", _optional(_endpoint("admin"))),
    "access-log": ("access_log", _access_log),
    "access-log-format": ("access_log_format", _choice("access-log-format", ("combined", "json"))),
    "upstream-ca": ("upstream_ca", _ca_bundle("upstream-ca")),
    "upstream-tls-insecure": ("upstream_tls_insecure", _flag("upstream-tls-insecure")),
    "consul-ca": ("consul_ca", _ca_bundle("consul-ca")),
    "workers": ("workers", _workers),
    "worker-timeout": ("worker_timeout", _number("worker-timeout", 0)),
}

DEFAULTS: Mapping[str, Any] = {
    "listen": ["tcp:8080"],
    "consul": "127.0.0.1:8500",
    "consul-token": None,
    "pool-size": 64,
    "server-name": [],
    "tag": [],
    "upstream-timeout": 60,
    "connect-timeout": 5,
    "catalog": None,
    "watch-idle-timeout": 600,
    "consul-wait": 60,
    "discovery-timeout": 5,
    "retries": 2,
    "panic-all-instances": False,
    "max-stale": None,
    "datacenter-grace": 60,
    "max-connections": 10000,
    "max-body": None,
    "header-timeout": 30,
    "body-idle-timeout": 60,
    "drain-timeout": 30,
    "admin": "tcp:9901:interface=127.0.0.1",
    "access-log": "-",
    "access-log-format": "combined",
    "upstream-ca": None,
    "upstream-tls-insecure": False,
    "consul-ca": None,
    "workers": "auto",
    "worker-timeout": 30,
}


def from_environment(environ: Mapping[str, str]) -> Dict[str, Any]:
    """
    The layer the environment gives: Consul's address and token, under our
    historical name and under the names Consul's own tools use.
    """
    layer: Dict[str, Any] = {}
    address = environ.get("CONSUL_ADDR") or environ.get("CONSUL_HTTP_ADDR")
    if address:
        layer["consul"] = address
    token = environ.get("CONSUL_HTTP_TOKEN")
    if token:
        layer["consul-token"] = token
    return layer


def load_toml(path: str) -> Dict[str, Any]:
    """
    Read a config file's layer, refusing keys we do not know so that a typo
    is an error instead of a silently ignored setting.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config: no such file {path!r}") from None
    except OSError as e:
        raise ConfigError(f"config: cannot read {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config: {path}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"config: {path}: unknown key {unknown[0]!r}")
    return data


def build(
    layers: Sequence[Mapping[str, Any]], config_file: Optional[str] = None
) -> Config:
    """
    Merge layers (later ones win) over L{DEFAULTS} and validate the result.
    """
    merged: Dict[str, Any] = dict(DEFAULTS)
    for layer in layers:
        for key, value in layer.items():
            if value is not None:
                merged[key] = value
    values = {field: parse(merged[key]) for key, (field, parse) in KEYS.items()}
    return Config(config_file=config_file, **values)
