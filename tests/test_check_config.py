"""
Tests for checking a configuration without starting anything:
C{twistd restygate --check-config}, the C{restygate-check-config FILE}
console script, and the function both stand on.  Every problem a start
would meet -- the file, a value, the catalog, a listener description, a TLS
file -- is one line and exit status 1.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from typing import Any, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from restygate.daemon.checkconfig import main
from restygate.daemon.load import check_config
from restygate.daemon.tap import Options
from tests.support.certificates import endpoint_files, issue, make_ca

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _CheckCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def check(self, text: str) -> Tuple[int, str]:
        return check_config({"config": self.write("restygate.toml", text)}, {})

    def assertRefused(self, text: str, start: str) -> str:
        """
        The file is refused with one line that starts C{restygate: <start>}.
        """
        status, message = self.check(text)
        self.assertEqual(status, 1, message)
        self.assertTrue(message.startswith(f"restygate: {start}"), message)
        self.assertNotIn("\n", message)
        return message


class CheckConfigTests(_CheckCase):
    def test_ok(self) -> None:
        status, message = self.check('pool-size = 8\ntag = ["prod"]\nlisten = ["tcp:8081"]\n')
        path = os.path.join(self.directory, "restygate.toml")
        self.assertEqual((status, message), (0, f"restygate: configuration OK ({path})"))

    def test_no_file(self) -> None:
        self.assertEqual(check_config({}, {}), (0, "restygate: configuration OK (no config file)"))

    def test_nothing_started(self) -> None:
        """
        A listener on a port something else holds is no error: checking
        describes the endpoint, it does not bind it.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            status, message = self.check(f'listen = ["tcp:{port}:interface=127.0.0.1"]\n')
        self.assertEqual(status, 0, message)

    def test_interface_not_on_this_host(self) -> None:
        """
        A listener or admin interface the host does not have parses, but a
        start could never listen on it: the check says so.
        """
        # TEST-NET-1 (RFC 5737): never assigned to a host.
        message = self.assertRefused('listen = ["tcp:8081:interface=192.0.2.1"]\n', "listen: bad endpoint")
        self.assertIn("192.0.2.1 is not an address of this host", message)
        self.assertRefused('admin = "tcp:9901:interface=192.0.2.1"\n', "admin: bad endpoint")
        self.assertEqual(self.check('admin = "tcp:9901:interface=127.0.0.1"\n')[0], 0)

    def test_unix_socket_directory(self) -> None:
        missing = os.path.join(self.directory, "nowhere", "rg.sock")
        message = self.assertRefused(f'listen = ["unix:{missing}"]\n', "listen: bad endpoint")
        self.assertIn("no such directory", message)
        here = os.path.join(self.directory, "rg.sock")
        self.assertEqual(self.check(f'listen = ["unix:{here}"]\n')[0], 0)

    def test_environment_below_file(self) -> None:
        path = self.write("c.toml", 'consul = "10.0.0.1:8500"\n')
        self.assertEqual(check_config({"config": path}, {"CONSUL_HTTP_ADDR": "nonsense::"})[0], 0)
        status, message = check_config({}, {"CONSUL_HTTP_ADDR": "ftp://x"})
        self.assertEqual(status, 1)
        self.assertIn("consul: scheme must be http or https", message)

    def test_missing_file(self) -> None:
        status, message = check_config({"config": "/nonexistent/restygate.toml"}, {})
        self.assertEqual((status, message), (1, "restygate: config: no such file '/nonexistent/restygate.toml'"))

    def test_bad_toml(self) -> None:
        self.assertRefused("pool-size = \n", "config: ")

    def test_not_utf8(self) -> None:
        path = os.path.join(self.directory, "latin1.toml")
        with open(path, "wb") as f:
            f.write(b'tag = ["caf\xe9"]\n')
        status, message = check_config({"config": path}, {})
        self.assertEqual(status, 1)
        self.assertIn("not UTF-8", message)

    def test_unknown_key(self) -> None:
        self.assertIn("'poolsize'", self.assertRefused("poolsize = 8\n", "config: "))

    def test_bad_value(self) -> None:
        self.assertRefused("pool-size = 0\n", "pool-size: ")

    def test_catalog_missing(self) -> None:
        self.assertRefused('catalog = "/nonexistent/catalog.toml"\n', "catalog: no such file")

    def test_catalog_broken(self) -> None:
        catalog = self.write("catalog.toml", '[dc1]\nweb = [ { address = "10.0.0.1" } ]\n')
        self.assertRefused(f'catalog = "{catalog}"\n', "catalog: ")

    def test_bad_listen(self) -> None:
        self.assertRefused('listen = ["tcp:eighty"]\n', "listen: bad endpoint")

    def test_tls_listener(self) -> None:
        files = endpoint_files(issue(None), self.directory)
        status, message = self.check(f'listen = ["ssl:8443:{files}"]\n')
        self.assertEqual(status, 0, message)

    def test_tls_listener_missing_key(self) -> None:
        self.assertRefused(
            'listen = ["ssl:8443:privateKey=/nonexistent/key.pem"]\n', "listen: bad endpoint"
        )

    def test_tls_listener_junk_certificate(self) -> None:
        junk = self.write("junk.pem", "not a certificate\n")
        self.assertRefused(f'listen = ["ssl:8443:privateKey={junk}:certKey={junk}"]\n', "listen: bad endpoint")

    def test_ca_files(self) -> None:
        ca = make_ca().write(self.directory, "ca")
        self.assertEqual(self.check(f'upstream-ca = "{ca}"\nconsul-ca = "{ca}"\n')[0], 0)
        junk = self.write("junk.pem", "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
        self.assertRefused(f'upstream-ca = "{junk}"\n', "upstream-ca: ")
        self.assertRefused('consul-ca = "/nonexistent/ca.pem"\n', "consul-ca: no such file")


class OptionTests(_CheckCase):
    """
    C{twistd restygate --check-config}.
    """

    def run_options(self, arguments: List[str]) -> Tuple[Any, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(os, "environ", {})
        options = Options()
        exit = self.assertRaises(SystemExit, options.parseOptions, arguments)
        self.assertIsNone(options.config)
        return exit.code, out.getvalue(), err.getvalue()

    def test_ok(self) -> None:
        path = self.write("good.toml", "pool-size = 3\n")
        code, out, err = self.run_options(["--check-config", "--config", path])
        self.assertEqual((code, out, err), (0, f"restygate: configuration OK ({path})\n", ""))

    def test_command_line_checked_too(self) -> None:
        path = self.write("good.toml", "pool-size = 3\n")
        code, out, err = self.run_options(["--check-config", "--config", path, "--upstream-timeout", "never"])
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertTrue(err.startswith("restygate: upstream-timeout: "), err)

    def test_refused(self) -> None:
        path = self.write("bad.toml", 'upstream-tls-insecure = "perhaps"\n')
        code, out, err = self.run_options(["--check-config", "-c", path])
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertTrue(err.startswith("restygate: upstream-tls-insecure: "), err)

    def test_tls_options_parsed(self) -> None:
        """
        The TLS options reach the config like any other (no exit without
        C{--check-config}).
        """
        ca = make_ca().write(self.directory, "ca")
        self.patch(os, "environ", {})
        options = Options()
        options.parseOptions(["--upstream-ca", ca, "--consul-ca", ca, "--upstream-tls-insecure"])
        assert options.config is not None
        self.assertEqual(options.config.upstream_ca.path if options.config.upstream_ca else None, ca)
        self.assertEqual(options.config.consul_ca.path if options.config.consul_ca else None, ca)
        self.assertTrue(options.config.upstream_tls_insecure)

    def test_insecure_flag_not_given_leaves_file_value(self) -> None:
        path = self.write("insecure.toml", "upstream-tls-insecure = true\n")
        self.patch(os, "environ", {})
        options = Options()
        options.parseOptions(["--config", path])
        assert options.config is not None
        self.assertTrue(options.config.upstream_tls_insecure)


class ConsoleScriptTests(_CheckCase):
    """
    C{restygate-check-config FILE}.
    """

    def run_main(self, arguments: List[str]) -> Tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(os, "environ", {})
        return main(arguments), out.getvalue(), err.getvalue()

    def test_ok(self) -> None:
        path = self.write("good.toml", "pool-size = 3\n")
        self.assertEqual(self.run_main([path]), (0, f"restygate: configuration OK ({path})\n", ""))

    def test_refused(self) -> None:
        path = self.write("bad.toml", "pool-size = -1\n")
        status, out, err = self.run_main([path])
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("restygate: pool-size: "), err)

    def test_usage(self) -> None:
        for arguments in ([], ["a.toml", "b.toml"]):
            status, out, err = self.run_main(arguments)
            self.assertEqual((status, out), (2, ""), arguments)
            self.assertIn("FILE", err)

    def test_installed_command(self) -> None:
        """
        The console script (or, where this checkout is not installed with
        it, the module run with -m) as a real process.
        """
        # Beside this interpreter: another one's script on PATH (a CPython
        # one while the suite runs under PyPy) would be handed this one's
        # PYTHONPATH, standard library included.
        installed = os.path.join(os.path.dirname(sys.executable), "restygate-check-config")
        command = [installed] if os.path.exists(installed) else [sys.executable, "-m", "restygate.daemon.checkconfig"]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, environ.get("PYTHONPATH")]))
        good = self.write("good.toml", "pool-size = 3\n")
        bad = self.write("bad.toml", "pool-size = 3\nbogus = 1\n")
        ok = subprocess.run(command + [good], env=environ, capture_output=True, text=True, timeout=60)
        self.assertEqual((ok.returncode, ok.stdout, ok.stderr), (0, f"restygate: configuration OK ({good})\n", ""))
        refused = subprocess.run(command + [bad], env=environ, capture_output=True, text=True, timeout=60)
        self.assertEqual((refused.returncode, refused.stdout), (1, ""))
        self.assertEqual(refused.stderr, f"restygate: config: {bad}: unknown key 'bogus'\n")
