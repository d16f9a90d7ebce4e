"""
The gateway's configuration: every key defined once (L{keys}), the kinds of
value they take (L{values}), the immutable L{Config} a gateway runs with
(L{model}), and the layers it is built from (L{sources}).  The public names
are re-exported here.
"""

from __future__ import annotations

from restygate.config.keys import DEFAULTS, KEYS, RESTART_ONLY, Key
from restygate.config.model import Config, ConfigError, ConsulAddress
from restygate.config.sources import build, from_environment, load_toml
from restygate.config.values import parse_consul_address

__all__ = [
    "Config",
    "ConfigError",
    "ConsulAddress",
    "DEFAULTS",
    "KEYS",
    "Key",
    "RESTART_ONLY",
    "build",
    "from_environment",
    "load_toml",
    "parse_consul_address",
]
