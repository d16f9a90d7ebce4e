"""
Where configuration comes from: the environment, a TOML file and the
command line, merged over the defaults into one validated L{Config}.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Mapping, Optional, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

from restygate.config.keys import DEFAULTS, KEYS
from restygate.config.model import Config, ConfigError

__all__ = ["build", "from_environment", "load_toml"]


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
    Read a config file's layer, refusing keys we do not know (a typo is an
    error instead of a silently ignored setting) and values of the wrong
    TOML type.
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
    return {name: KEYS[name].kind.from_file(name, value) for name, value in data.items()}


def build(layers: Sequence[Mapping[str, Any]], config_file: Optional[str] = None) -> Config:
    """
    Merge layers (later ones win) over the defaults and validate the result.
    """
    merged: Dict[str, Any] = dict(DEFAULTS)
    for layer in layers:
        for name, value in layer.items():
            if value is not None:
                merged[name] = value
    fields = {key.field: key.kind.parse(name, merged[name]) for name, key in KEYS.items()}
    return Config(config_file=config_file, **fields)
