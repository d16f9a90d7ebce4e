"""
Tests for L{restygate.config}: the layers (defaults, environment, TOML file,
command line), every key's parsing, and one clean line naming the key for
every value that cannot be used.
"""

from __future__ import annotations

import re

from dataclasses import fields, replace

import os
from typing import Any, Dict, Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support.defaults import CPUS, DEFAULT_CONFIG
from restygate.config import (
    DEFAULTS,
    KEYS,
    Config,
    ConfigError,
    ConsulAddress,
    build,
    from_environment,
    load_toml,
    parse_consul_address,
)

class _ConfigTestCase(SynchronousTestCase):
    def write(self, text: str) -> str:
        path: str = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def assertConfigError(self, key: str, layers: Sequence[Mapping[str, Any]]) -> str:
        """
        Building these layers fails with one line that starts with C{key}.
        """
        error = self.assertRaises(ConfigError, build, layers)
        message = str(error)
        self.assertTrue(message.startswith(f"{key}: "), message)
        self.assertNotIn("\n", message)
        return message


class DefaultsTests(_ConfigTestCase):
    def test_no_layer(self) -> None:
        """
        With no layer at all the built-in defaults make a whole config.
        """
        self.assertEqual(build([]), DEFAULT_CONFIG)

    def test_every_key_has_a_default(self) -> None:
        """
        The defaults and the key table name the same keys.
        """
        self.assertEqual(set(DEFAULTS), set(KEYS))

    def test_one_key_per_field(self) -> None:
        """
        Every field of a config but the file it came from is filled by
        exactly one key, so no setting exists that the table does not define.
        """
        keyed = [key.field for key in KEYS.values()]
        self.assertEqual(sorted(keyed), sorted(set(keyed)))
        self.assertEqual(set(keyed), {f.name for f in fields(Config)} - {"config_file"})

    def test_config_file_recorded(self) -> None:
        """
        The file a config came from is kept on it.
        """
        self.assertEqual(build([], config_file="/etc/x.toml").config_file, "/etc/x.toml")

    def test_frozen(self) -> None:
        """
        A config cannot be changed in place; a reload builds a new one.
        """
        config = build([])
        self.assertRaises(AttributeError, setattr, config, "pool_size", 1)


class EnvironmentTests(_ConfigTestCase):
    def test_empty(self) -> None:
        self.assertEqual(from_environment({}), {})

    def test_consul_addr(self) -> None:
        self.assertEqual(from_environment({"CONSUL_ADDR": "c:1"}), {"consul": "c:1"})

    def test_consul_http_addr(self) -> None:
        """
        Consul's own tools' variable works too.
        """
        self.assertEqual(
            from_environment({"CONSUL_HTTP_ADDR": "https://c:8501"}), {"consul": "https://c:8501"}
        )

    def test_consul_addr_wins(self) -> None:
        """
        Given both, C{CONSUL_ADDR} is used.
        """
        layer = from_environment({"CONSUL_ADDR": "a:1", "CONSUL_HTTP_ADDR": "b:2"})
        self.assertEqual(layer, {"consul": "a:1"})

    def test_empty_variables_ignored(self) -> None:
        """
        A variable set to the empty string counts as unset.
        """
        layer = from_environment(
            {"CONSUL_ADDR": "", "CONSUL_HTTP_ADDR": "b:2", "CONSUL_HTTP_TOKEN": ""}
        )
        self.assertEqual(layer, {"consul": "b:2"})

    def test_token(self) -> None:
        layer = from_environment({"CONSUL_HTTP_TOKEN": "s3cr3t-t0ken"})
        self.assertEqual(layer, {"consul-token": "s3cr3t-t0ken"})

    def test_unrelated_variables_ignored(self) -> None:
        self.assertEqual(from_environment({"PATH": "/bin", "CONSUL_TOKEN": "x"}), {})


class LayeringTests(_ConfigTestCase):
    def test_environment_over_defaults(self) -> None:
        env = from_environment({"CONSUL_HTTP_ADDR": "consul.internal:8600", "CONSUL_HTTP_TOKEN": "tok"})
        config = build([env])
        self.assertEqual(config.consul, ConsulAddress("http", "consul.internal", 8600))
        self.assertEqual(config.consul_token, "tok")

    def test_file_over_environment(self) -> None:
        env = from_environment({"CONSUL_ADDR": "from-env:1", "CONSUL_HTTP_TOKEN": "env-token"})
        path = self.write('consul = "from-file:2"\nconsul-token = "file-token"\n')
        config = build([env, load_toml(path)])
        self.assertEqual(config.consul, ConsulAddress("http", "from-file", 2))
        self.assertEqual(config.consul_token, "file-token")

    def test_command_line_over_file(self) -> None:
        path = self.write('consul = "from-file:2"\npool-size = 10\nlisten = ["tcp:1"]\n')
        command_line = {"consul": "from-flag:3", "pool-size": None, "listen": None}
        config = build([{"consul": "from-env:1"}, load_toml(path), command_line])
        self.assertEqual(config.consul, ConsulAddress("http", "from-flag", 3))
        # None in a layer means "not given there": the file's values stay.
        self.assertEqual(config.pool_size, 10)
        self.assertEqual(config.listen, ("tcp:1",))

    def test_later_layer_replaces_lists(self) -> None:
        """
        A list in a later layer replaces the earlier one rather than adding.
        """
        config = build([{"tag": ["a", "b"]}, {"tag": ["c"]}])
        self.assertEqual(config.tags, ("c",))

    def test_file_clears_environment_token(self) -> None:
        """
        An empty token in the file means no token, even when the environment
        has one.
        """
        path = self.write('consul-token = ""\n')
        config = build([{"consul-token": "env-token"}, load_toml(path)])
        self.assertIsNone(config.consul_token)

    def test_whole_file(self) -> None:
        """
        Every key set in a file gives the whole expected config.
        """
        catalog = self.write("[dc1]\n")
        path = self.write(
            "\n".join(
                [
                    'listen = ["tcp:9000", "unix:/tmp/restygate.sock"]',
                    'consul = "https://consul.example.com:8501"',
                    'consul-token = "file-token"',
                    "pool-size = 8",
                    'server-name = ["Gateway.Example.COM.", "*.svc.example.com"]',
                    'tag = ["prod", "v2"]',
                    "upstream-timeout = 30.5",
                    "connect-timeout = 2",
                    f"catalog = {catalog!r}".replace("'", '"'),
                    "watch-idle-timeout = 120",
                    "consul-wait = 600",
                    "discovery-timeout = 0.25",
                    "workers = 3",
                    "",
                ]
            )
        )
        self.assertEqual(
            build([load_toml(path)], config_file=path),
            replace(
                DEFAULT_CONFIG,
                listen=("tcp:9000", "unix:/tmp/restygate.sock"),
                consul=ConsulAddress("https", "consul.example.com", 8501),
                consul_token="file-token",
                pool_size=8,
                server_names=("gateway.example.com", "*.svc.example.com"),
                tags=("prod", "v2"),
                upstream_timeout=30.5,
                connect_timeout=2.0,
                catalog=catalog,
                watch_idle_timeout=120.0,
                consul_wait=600.0,
                discovery_timeout=0.25,
                config_file=path,
                workers=3,
            ),
        )


class LoadTomlTests(_ConfigTestCase):
    def assertLoadError(self, path: str, *fragments: str) -> None:
        error = self.assertRaises(ConfigError, load_toml, path)
        message = str(error)
        self.assertTrue(message.startswith("config: "), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_missing_file(self) -> None:
        path = self.mktemp()
        self.assertLoadError(path, "no such file", path)

    def test_directory(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        self.assertLoadError(path, "cannot read", path)

    def test_bad_toml(self) -> None:
        path = self.write("pool-size = = 3\n")
        self.assertLoadError(path, "invalid TOML", path)

    def test_unknown_key(self) -> None:
        """
        A typo is an error naming the key, not a silently ignored setting.
        """
        path = self.write('listen = ["tcp:1"]\npool_size = 3\n')
        self.assertLoadError(path, "unknown key 'pool_size'", path)

    def test_values_kept_as_written(self) -> None:
        """
        The file's layer is parsed later, with the other layers.
        """
        path = self.write('pool-size = 3\ntag = ["a"]\n')
        self.assertEqual(load_toml(path), {"pool-size": 3, "tag": ["a"]})

    def test_empty_file(self) -> None:
        self.assertEqual(load_toml(self.write("")), {})

    def test_quoted_number(self) -> None:
        """
        A number quoted by mistake is refused in a file (the command line
        gives every value as a string; a file has types).
        """
        for line in ['pool-size = "64"', 'upstream-timeout = "5"', 'retries = 2.5', "listen = 8080"]:
            key = line.split(" ")[0]
            error = self.assertRaises(ConfigError, load_toml, self.write(line + "\n"))
            self.assertTrue(str(error).startswith(f"{key}: expected "), str(error))

    def test_switch_takes_a_boolean(self) -> None:
        self.assertEqual(load_toml(self.write("panic-all-instances = true\n")), {"panic-all-instances": True})
        error = self.assertRaises(ConfigError, load_toml, self.write('panic-all-instances = "yes"\n'))
        self.assertEqual(str(error), "panic-all-instances: expected true or false, got 'yes'")
        error = self.assertRaises(ConfigError, load_toml, self.write("pool-size = true\n"))
        self.assertEqual(str(error), "pool-size: expected a whole number, got True")

    def test_either_type_where_both_read(self) -> None:
        """
        Sizes, worker counts and optional values take a number or a string.
        """
        path = self.write('max-body = "10m"\nworkers = 2\nmax-stale = "none"\nupstream-timeout = 2.5\n')
        config = build([load_toml(path)])
        self.assertEqual(
            (config.max_body, config.workers, config.max_stale, config.upstream_timeout),
            (10 * 1024**2, 2, None, 2.5),
        )


class ConsulAddressTests(_ConfigTestCase):
    def test_host_port(self) -> None:
        self.assertEqual(parse_consul_address("consul:8600"), ConsulAddress("http", "consul", 8600))

    def test_host_only(self) -> None:
        self.assertEqual(parse_consul_address("consul"), ConsulAddress("http", "consul", 8500))

    def test_http_url(self) -> None:
        self.assertEqual(
            parse_consul_address("http://10.0.0.1:8500/"), ConsulAddress("http", "10.0.0.1", 8500)
        )

    def test_https_url(self) -> None:
        address = parse_consul_address("https://host:8501")
        self.assertEqual(address, ConsulAddress("https", "host", 8501))
        self.assertEqual(address.base_url, "https://host:8501")

    def test_scheme_case(self) -> None:
        self.assertEqual(parse_consul_address("HTTPS://h:1").scheme, "https")

    def test_ipv6(self) -> None:
        address = parse_consul_address("[::1]:8500")
        self.assertEqual(address, ConsulAddress("http", "::1", 8500))
        self.assertEqual(address.base_url, "http://[::1]:8500")
        self.assertEqual(str(address), "http://[::1]:8500")

    def test_ipv6_url_default_port(self) -> None:
        address = parse_consul_address("https://[2001:db8::5]")
        self.assertEqual(address, ConsulAddress("https", "2001:db8::5", 8500))
        self.assertEqual(address.base_url, "https://[2001:db8::5]:8500")

    def test_surrounding_space(self) -> None:
        self.assertEqual(parse_consul_address(" consul:1 \n"), ConsulAddress("http", "consul", 1))

    def test_bad_scheme(self) -> None:
        message = self.assertConfigError("consul", [{"consul": "ftp://consul:8500"}])
        self.assertIn("http or https", message)

    def test_unix_scheme(self) -> None:
        self.assertConfigError("consul", [{"consul": "unix:///run/consul.sock"}])

    def test_unparsable_port(self) -> None:
        for value in ["consul:http", "consul:-1", "consul:0", "consul:65536", "consul:1.5", "[::1]:x"]:
            message = self.assertConfigError("consul", [{"consul": value}])
            self.assertIn("port", message)

    def test_non_ascii_digits(self) -> None:
        """
        Digits other than 0-9 (superscripts, fullwidth forms) are not a port.
        """
        for value in ["consul:\u00b2", "consul:\uff18\uff15\uff10\uff10"]:
            self.assertConfigError("consul", [{"consul": value}])

    def test_unbracketed_ipv6(self) -> None:
        self.assertConfigError("consul", [{"consul": "::1:8500"}])

    def test_junk(self) -> None:
        for value in ["", "http://", "a b:1", "host:1:2", "user@host:1", 8500, ["a:1"]]:
            self.assertConfigError("consul", [{"consul": value}])


class KeyParsingTests(_ConfigTestCase):
    def test_listen_string_or_list(self) -> None:
        self.assertEqual(build([{"listen": "tcp:1"}]).listen, ("tcp:1",))
        self.assertEqual(
            build([{"listen": ["tcp:1", "tcp6:2:interface=\\:\\:1"]}]).listen,
            ("tcp:1", "tcp6:2:interface=\\:\\:1"),
        )

    def test_listen_bad_strport(self) -> None:
        for value in ["tcp:notaport", "nosuchtype:80", "tcp:"]:
            message = self.assertConfigError("listen", [{"listen": [value]}])
            self.assertIn(repr(value), message)

    def test_listen_parser_crashes(self) -> None:
        """
        Descriptions that make Twisted's parser fail with something other
        than C{ValueError} still give one clean line.
        """
        for value in ["=", "tcp:8080\\", "unix:a\\", "\nbogus\n:1"]:
            message = self.assertConfigError("listen", [{"listen": [value]}])
            self.assertIn(repr(value), message)

    def test_listen_port_range(self) -> None:
        """
        Twisted parses any integer as a port and fails only at bind time;
        a port past 65535 is refused up front.
        """
        message = self.assertConfigError("listen", [{"listen": "tcp:99999"}])
        self.assertIn("port must be 0 to 65535, got '99999'", message)
        self.assertConfigError("admin", [{"admin": "tcp:70000:interface=127.0.0.1"}])
        self.assertEqual(build([{"listen": "tcp:0"}]).listen, ("tcp:0",))

    def test_listen_empty(self) -> None:
        self.assertConfigError("listen", [{"listen": []}])

    def test_listen_not_strings(self) -> None:
        self.assertConfigError("listen", [{"listen": [8080]}])
        self.assertConfigError("listen", [{"listen": 8080}])

    def test_pool_size(self) -> None:
        self.assertEqual(build([{"pool-size": "12"}]).pool_size, 12)
        self.assertEqual(build([{"pool-size": 1}]).pool_size, 1)

    def test_pool_size_bad(self) -> None:
        for value in [0, -1, "-3", "0", "ten", "1.5", 2.0, True, "", "\u00b2", "\uff18"]:
            self.assertConfigError("pool-size", [{"pool-size": value}])

    def test_workers(self) -> None:
        self.assertEqual(build([{"workers": "auto"}]).workers, CPUS)
        self.assertEqual(build([{"workers": "4"}]).workers, 4)
        self.assertEqual(build([{"workers": 1}]).workers, 1)

    def test_workers_bad(self) -> None:
        for value in [0, "0", -2, "257", "two", "1.5", True, "", "\u00b2", "AUTO"]:
            self.assertConfigError("workers", [{"workers": value}])

    def test_token(self) -> None:
        self.assertEqual(build([{"consul-token": "abc"}]).consul_token, "abc")
        self.assertIsNone(build([{"consul-token": ""}]).consul_token)
        self.assertConfigError("consul-token", [{"consul-token": 1234}])

    def test_timeouts(self) -> None:
        config = build(
            [
                {
                    "upstream-timeout": "1.5",
                    "connect-timeout": 0.1,
                    "watch-idle-timeout": 7,
                    "consul-wait": "600",
                    "discovery-timeout": "3",
                }
            ]
        )
        self.assertEqual(
            (
                config.upstream_timeout,
                config.connect_timeout,
                config.watch_idle_timeout,
                config.consul_wait,
                config.discovery_timeout,
            ),
            (1.5, 0.1, 7.0, 600.0, 3.0),
        )

    def test_timeouts_bad(self) -> None:
        keys = ["upstream-timeout", "connect-timeout", "watch-idle-timeout", "consul-wait", "discovery-timeout"]
        for key in keys:
            for value in [0, -1, "0", "soon", "", True, [1], "nan", "inf", "-inf", "1e400"]:
                self.assertConfigError(key, [{key: value}])

    def test_consul_wait_at_most_ten_minutes(self) -> None:
        message = self.assertConfigError("consul-wait", [{"consul-wait": 600.5}])
        self.assertIn("600", message)

    def test_catalog(self) -> None:
        path = self.write("[dc1]\n")
        self.assertEqual(build([{"catalog": path}]).catalog, path)
        self.assertIsNone(build([{"catalog": ""}]).catalog)

    def test_catalog_missing(self) -> None:
        path = self.mktemp()
        message = self.assertConfigError("catalog", [{"catalog": path}])
        self.assertIn(path, message)

    def test_catalog_directory(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        self.assertConfigError("catalog", [{"catalog": path}])

    def test_tags(self) -> None:
        self.assertEqual(build([{"tag": "prod"}]).tags, ("prod",))
        self.assertEqual(build([{"tag": ["prod", "v=2", "ünï"]}]).tags, ("prod", "v=2", "ünï"))

    def test_tags_bad(self) -> None:
        for value in ["", "two words", "tab\there", "nl\n", "\x7f", "prod\n"]:
            self.assertConfigError("tag", [{"tag": [value]}])
        self.assertConfigError("tag", [{"tag": [1]}])


class ServerNameTests(_ConfigTestCase):
    def names(self, *names: str) -> Sequence[str]:
        return build([{"server-name": list(names)}]).server_names

    def test_lowercased(self) -> None:
        self.assertEqual(self.names("Gateway.Example.COM"), ("gateway.example.com",))

    def test_trailing_dot_dropped(self) -> None:
        self.assertEqual(self.names("example.com."), ("example.com",))

    def test_wildcard(self) -> None:
        self.assertEqual(self.names("*.Example.com."), ("*.example.com",))

    def test_plain_names(self) -> None:
        self.assertEqual(
            self.names("localhost", "a-b_c.example", "127.0.0.1"),
            ("localhost", "a-b_c.example", "127.0.0.1"),
        )

    def test_single_string(self) -> None:
        self.assertEqual(build([{"server-name": "example.com"}]).server_names, ("example.com",))

    def test_bad_names(self) -> None:
        """
        Only a leading C{*.} is a wildcard; anything else not a host name is
        refused.
        """
        for name in [
            "",
            "*",
            "*.",
            "a.*.com",
            "*example.com",
            "**.example.com",
            "ex ample.com",
            "example..com",
            ".example.com",
            "exämple.com",
            "example.com:8080",
            "example.com\n",
        ]:
            message = self.assertConfigError("server-name", [{"server-name": [name]}])
            self.assertIn(repr(name), message)


class ReprTests(_ConfigTestCase):
    TOKEN = "9f0c1e2d-token-never-logged"

    def test_token_hidden(self) -> None:
        """
        Neither C{repr} nor C{str} of a config shows the token.
        """
        config = build([{"consul-token": self.TOKEN}])
        self.assertEqual(config.consul_token, self.TOKEN)
        for text in (repr(config), str(config), f"{config}", f"{config!r}"):
            self.assertNotIn(self.TOKEN, text)
            self.assertNotIn("9f0c1e2d", text)

    def test_repr_shows_the_rest(self) -> None:
        text = repr(build([{"pool-size": 7, "consul": "[::1]:8501"}]))
        self.assertIn("pool_size=7", text)
        self.assertIn("::1", text)
        self.assertIn("8501", text)

    @settings(max_examples=50, deadline=None)
    @given(st.text(min_size=1))
    def test_repr_independent_of_token(self, token: str) -> None:
        """
        Whatever the token, the repr is the same: nothing of it shows.
        """
        self.assertEqual(
            repr(build([{"consul-token": token}])),
            repr(build([{"consul-token": self.TOKEN}])),
        )


# Anything a user could type into one key.
_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.text(max_size=10), max_size=3),
)


_endpoint_descriptions = st.one_of(
    st.text(max_size=20),
    st.builds(
        lambda kind, rest: f"{kind}:{rest}",
        st.sampled_from(["tcp", "tcp6", "unix", "udp", "stdio", "systemd"]),
        st.text(max_size=15),
    ),
)


class AnyValueTests(_ConfigTestCase):
    @settings(max_examples=100, deadline=None)
    @given(_endpoint_descriptions)
    def test_listen_config_or_one_line_error(self, description: str) -> None:
        """
        Whatever the endpoint description, a config or one line naming the key.
        """
        try:
            config = build([{"listen": [description]}])
        except ConfigError as e:
            self.assertTrue(str(e).startswith("listen: "), str(e))
            self.assertNotIn("\n", str(e))
        else:
            self.assertEqual(config.listen, (description,))

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from(sorted(set(KEYS) - {"listen"})), _values)
    def test_config_or_one_line_error(self, key: str, value: Any) -> None:
        """
        Whatever the value, building gives a config or a L{ConfigError} of
        one line naming the key; never another exception.
        """
        layer: Dict[str, Any] = {key: value}
        try:
            config = build([layer])
        except ConfigError as e:
            # A table's error names the table below the key (services.web: ...).
            self.assertTrue(re.match(rf"{key}(: |\.)", str(e)), str(e))
            self.assertNotIn("\n", str(e))
        else:
            self.assertIsInstance(config, Config)

    @settings(max_examples=100, deadline=None)
    @given(st.integers(min_value=1, max_value=65535))
    def test_every_port(self, port: int) -> None:
        self.assertEqual(parse_consul_address(f"consul:{port}").port, port)
