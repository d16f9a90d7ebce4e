"""
Tests for L{restygate.daemon.tap.Options}: the command line, layered over the
config file, the environment and the defaults, into one L{Config}; a bad
value ends the start with one clean line.
"""

from __future__ import annotations

from dataclasses import replace

import os
from typing import List, Optional

from twisted.trial.unittest import SynchronousTestCase

from restygate.config import Config, ConsulAddress
from restygate.daemon.tap import Options
from tests.support.defaults import DEFAULT_CONFIG

_CONSUL_VARIABLES = ("CONSUL_ADDR", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN")


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Whatever the developer's shell exports must not leak in.
        self.environment()

    def environment(self, **variables: str) -> None:
        """
        Set exactly these Consul variables for the test, restoring the real
        environment afterwards.
        """
        for name in _CONSUL_VARIABLES:
            saved = os.environ.get(name)
            self.addCleanup(self._restore, name, saved)
            os.environ.pop(name, None)
        os.environ.update(variables)

    @staticmethod
    def _restore(name: str, value: Optional[str]) -> None:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def write(self, text: str) -> str:
        path: str = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def parse(self, argv: List[str]) -> Config:
        options = Options()
        options.parseOptions(argv)
        assert options.config is not None
        return options.config

    def assertExits(self, argv: List[str], key: str) -> str:
        """
        These arguments end the start with one line: C{restygate: <key>: ...}.
        """
        error = self.assertRaises(SystemExit, Options().parseOptions, argv)
        message = error.code
        self.assertIsInstance(message, str)
        assert isinstance(message, str)
        self.assertTrue(message.startswith(f"restygate: {key}: "), message)
        self.assertNotIn("\n", message)
        self.assertNotIn("Traceback", message)
        self.assertNotIn("Usage:", message)
        self.assertIsNone(error.__cause__)
        return message

    def test_defaults(self) -> None:
        self.assertEqual(self.parse([]), DEFAULT_CONFIG)

    def test_every_flag(self) -> None:
        catalog = self.write('[dc1]\nweb = [{ address = "127.0.0.1", port = 8000 }]\n')
        config = self.parse(
            [
                "--listen", "tcp:9000",
                "--listen", "unix:/tmp/rg.sock",
                "--consul", "https://consul.example.com:8501",
                "--consul-token", "flag-token",
                "--pool-size", "16",
                "--server-name", "Gateway.Example.com",
                "--server-name", "*.svc.example.com.",
                "--tag", "prod",
                "--tag", "v2",
                "--upstream-timeout", "12.5",
                "--connect-timeout", "1",
                "--catalog", catalog,
                "--watch-idle-timeout", "30",
                "--consul-wait", "120",
                "--discovery-timeout", "2",
                "--workers", "5",
            ]
        )
        self.assertEqual(
            config,
            replace(
                DEFAULT_CONFIG,
                listen=("tcp:9000", "unix:/tmp/rg.sock"),
                consul=ConsulAddress("https", "consul.example.com", 8501),
                consul_token="flag-token",
                pool_size=16,
                server_names=("gateway.example.com", "*.svc.example.com"),
                tags=("prod", "v2"),
                upstream_timeout=12.5,
                connect_timeout=1.0,
                catalog=catalog,
                watch_idle_timeout=30.0,
                consul_wait=120.0,
                discovery_timeout=2.0,
                workers=5,
                config_file=None,
            ),
        )

    def test_flag_equals_form(self) -> None:
        config = self.parse(["--pool-size=3", "--listen=tcp:1"])
        self.assertEqual((config.pool_size, config.listen), (3, ("tcp:1",)))

    def test_environment(self) -> None:
        self.environment(CONSUL_HTTP_ADDR="[::1]:8600", CONSUL_HTTP_TOKEN="env-token")
        config = self.parse([])
        self.assertEqual(config.consul, ConsulAddress("http", "::1", 8600))
        self.assertEqual(config.consul_token, "env-token")

    def test_consul_addr_over_http_addr(self) -> None:
        self.environment(CONSUL_ADDR="a:1", CONSUL_HTTP_ADDR="b:2")
        self.assertEqual(self.parse([]).consul, ConsulAddress("http", "a", 1))

    def test_flag_over_environment(self) -> None:
        self.environment(CONSUL_ADDR="env:1", CONSUL_HTTP_TOKEN="env-token")
        config = self.parse(["--consul", "flag:2", "--consul-token", "flag-token"])
        self.assertEqual((config.consul, config.consul_token), (ConsulAddress("http", "flag", 2), "flag-token"))

    def test_config_file(self) -> None:
        """
        The file's values apply; flags given win over them; lists given on
        the command line replace the file's.
        """
        self.environment(CONSUL_ADDR="env:1", CONSUL_HTTP_TOKEN="env-token")
        path = self.write(
            'listen = ["tcp:7000", "tcp:7001"]\n'
            'consul = "file:2"\n'
            "pool-size = 10\n"
            'server-name = ["file.example.com"]\n'
            'tag = ["from-file"]\n'
            "upstream-timeout = 9\n"
            "workers = 2\n"
        )
        config = self.parse(["--config", path, "--pool-size", "20", "--tag", "from-flag", "--workers", "6"])
        self.assertEqual(
            config,
            replace(
                DEFAULT_CONFIG,
                listen=("tcp:7000", "tcp:7001"),
                consul=ConsulAddress("http", "file", 2),
                consul_token="env-token",
                pool_size=20,
                server_names=("file.example.com",),
                tags=("from-flag",),
                upstream_timeout=9.0,
                connect_timeout=5.0,
                catalog=None,
                watch_idle_timeout=600.0,
                consul_wait=60.0,
                discovery_timeout=5.0,
                config_file=path,
                workers=6,
            ),
        )

    def test_short_config_flag(self) -> None:
        path = self.write("pool-size = 3\n")
        config = self.parse(["-c", path])
        self.assertEqual((config.pool_size, config.config_file), (3, path))

    def test_token_not_in_repr(self) -> None:
        self.environment(CONSUL_HTTP_TOKEN="0d1e2f3a-super-secret")
        options = Options()
        options.parseOptions([])
        self.assertNotIn("0d1e2f3a-super-secret", repr(options.config))

    def test_bad_values(self) -> None:
        for argv, key in [
            (["--pool-size", "0"], "pool-size"),
            (["--pool-size", "-4"], "pool-size"),
            (["--pool-size", "lots"], "pool-size"),
            (["--consul", "consul:port"], "consul"),
            (["--consul", "ftp://consul:8500"], "consul"),
            (["--listen", "tcp:http"], "listen"),
            (["--listen", "="], "listen"),
            (["--server-name", "a b"], "server-name"),
            (["--tag", "two words"], "tag"),
            (["--upstream-timeout", "soon"], "upstream-timeout"),
            (["--connect-timeout", "0"], "connect-timeout"),
            (["--consul-wait", "601"], "consul-wait"),
            (["--discovery-timeout", "inf"], "discovery-timeout"),
            (["--watch-idle-timeout", "-1"], "watch-idle-timeout"),
            (["--catalog", "/nonexistent/catalog.toml"], "catalog"),
        ]:
            self.assertExits(argv, key)

    def test_bad_environment(self) -> None:
        self.environment(CONSUL_HTTP_ADDR="unix:///run/consul.sock")
        self.assertExits([], "consul")

    def test_missing_config_file(self) -> None:
        path = self.mktemp()
        self.assertIn(path, self.assertExits(["--config", path], "config"))

    def test_bad_config_file(self) -> None:
        self.assertExits(["--config", self.write("pool-size = \n")], "config")
        self.assertExits(["--config", self.write("poolsize = 3\n")], "config")

    def test_bad_value_in_config_file(self) -> None:
        self.assertExits(["--config", self.write('pool-size = "many"\n')], "pool-size")

    def test_flag_fixes_bad_file_value(self) -> None:
        """
        A flag wins over the file, so the file's value is never parsed.
        """
        path = self.write("pool-size = 0\n")
        self.assertEqual(self.parse(["--config", path, "--pool-size", "5"]).pool_size, 5)

    def test_bad_catalog_file(self) -> None:
        """
        The catalog is checked at start, so a broken one stops the start.
        """
        catalog = self.write('[dc1]\nweb = [{ address = "a", port = 0 }]\n')
        message = self.assertExits(["--catalog", catalog], "catalog")
        self.assertIn("dc1.web[0]", message)

    def test_catalog_tags_checked(self) -> None:
        catalog = self.write('[dc1]\nweb = [{ address = "a", port = 1, tags = ["x"] }]\n')
        config = self.parse(["--catalog", catalog, "--tag", "x"])
        self.assertEqual((config.catalog, config.tags), (catalog, ("x",)))
