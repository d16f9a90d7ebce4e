"""
Packaging and deployment checks: what a user installs and what an operator
deploys, rather than what the gateway does.

The wheel is built from a clean copy of this checkout and installed into a
fresh virtualenv; there C{twistd --help} must list C{restygate} -- whatever
state Twisted's plugin cache is in -- and C{twistd restygate} must proxy a
request to a real backend.  Projects have silently lost their twistd plugin
from the wheel after a packaging change; these tests are what notices.  The
sample files under C{etc/} and C{docker/} are checked against what the code
accepts, so the documentation cannot drift from it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from typing import Dict, List, Optional, Tuple
from unittest import SkipTest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - PyPy 3.9
    import tomli as tomllib

from twisted.trial.unittest import TestCase

from tests.support.installed import (
    PLUGIN,
    ROOT,
    TWISTD_TIMEOUT,
    DaemonTestCase,
    Venv,
    copy_checkout,
    installed,
    listed_plugins,
    log_tail,
    pip_build_options,
)

class WheelTests(TestCase):
    """
    The wheel ships the package and the plugin, and nothing else.
    """

    def setUp(self) -> None:
        self.wheel = installed().wheel
        with zipfile.ZipFile(self.wheel) as z:
            self.names = z.namelist()
            [metadata_name] = [n for n in self.names if n.endswith(".dist-info/METADATA")]
            self.metadata = z.read(metadata_name).decode("utf-8")

    def test_plugin_shipped_without_init(self) -> None:
        """
        The plugin module is in the wheel, and no C{__init__.py} that would
        shadow Twisted's own C{twisted} or C{twisted.plugins} packages is.
        """
        self.assertIn(PLUGIN, self.names)
        self.assertEqual([n for n in self.names if n.startswith("twisted/")], [PLUGIN])

    def test_every_module_shipped(self) -> None:
        """
        Every C{.py} file under C{restygate/} in the checkout is in the wheel,
        so a new subpackage cannot be left out by the package list.
        """
        expected = set()
        for directory, dirs, files in os.walk(os.path.join(ROOT, "restygate")):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    expected.add(os.path.relpath(os.path.join(directory, name), ROOT).replace(os.sep, "/"))
        self.assertIn("restygate/__init__.py", expected)
        self.assertEqual(expected - set(self.names), set())

    def test_no_tests_or_stray_files(self) -> None:
        """
        Nothing but C{restygate/}, the plugin and the wheel's metadata.
        """
        stray = [
            n for n in self.names
            if not (n.startswith("restygate/") or n == PLUGIN or ".dist-info/" in n)
        ]
        self.assertEqual(stray, [])
        self.assertEqual([n for n in self.names if n.startswith("tests/") or "/tests/" in n], [])
        self.assertEqual([n for n in self.names if n.endswith((".pyc", "dropin.cache"))], [])

    def test_metadata(self) -> None:
        """
        The version is the package's, and the runtime dependencies are
        declared, tomli only where C{tomllib} is missing.
        """
        import restygate

        self.assertIn(f"\nVersion: {restygate.__version__}\n", self.metadata)
        requires = re.findall(r"^Requires-Dist: (.*)$", self.metadata, re.MULTILINE)
        names = {re.split(r"[\s\[<>=!;~]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requires}
        for needed in ("twisted", "treq", "zope.interface", "attrs", "tomli", "service-identity", "pyopenssl",
                       "cryptography", "idna", "prometheus-client"):
            self.assertIn(needed, names)
        [tomli] = [r for r in requires if r.lower().startswith("tomli")]
        self.assertIn('python_version < "3.11"', tomli)
        self.assertNotIn("extra ==", tomli)


class PluginDiscoveryTests(TestCase):
    """
    C{twistd} in a virtualenv holding only the installed wheel finds the
    plugin, whatever state Twisted's C{dropin.cache} is in.
    """

    def setUp(self) -> None:
        self.venv = installed().venv
        self.cache = os.path.join(self.venv.plugins, "dropin.cache")
        self.addCleanup(self.removeCache)

    def removeCache(self) -> None:
        if os.path.isdir(self.cache):
            shutil.rmtree(self.cache)
        elif os.path.exists(self.cache):
            os.remove(self.cache)

    def assertListed(self) -> None:
        output = self.venv.twistd_help()
        self.assertIn("restygate", listed_plugins(output), output)

    def test_plugin_from_the_wheel(self) -> None:
        """
        The plugin and the package twistd loads are the wheel's copies in the
        virtualenv, not the checkout's.
        """
        package, plugin = self.venv.where()
        real = os.path.realpath
        self.assertEqual(real(os.path.dirname(plugin)), real(self.venv.plugins))
        self.assertEqual(real(os.path.dirname(os.path.dirname(package))), real(self.venv.site_packages))

    def test_no_cache(self) -> None:
        """
        Without a cache the plugin is listed, and twistd writes the cache
        when it can.
        """
        self.removeCache()
        self.assertListed()
        with open(self.cache, "rb") as f:
            self.assertIn("restygate_plugin", pickle.load(f))

    def test_corrupt_cache(self) -> None:
        """
        A cache that does not unpickle is ignored.
        """
        with open(self.cache, "wb") as f:
            f.write(b"this is not a pickle")
        self.assertListed()

    def test_stale_cache(self) -> None:
        """
        A cache written before restygate was installed, and newer than the
        plugin file (as after a later root run of twistd, or an install that
        kept the wheel's old timestamps), still does not hide the plugin.
        """
        with open(self.cache, "wb") as f:
            pickle.dump({}, f)
        future = time.time() + 3600
        os.utime(self.cache, (future, future))
        self.assertListed()

    def test_unwritable_cache(self) -> None:
        """
        A cache twistd cannot replace (a service user without write access
        to site-packages; here a directory in its place, since the tests may
        run as root) does not hide the plugin either.
        """
        self.removeCache()
        os.mkdir(self.cache)
        self.assertListed()

    def test_subcommand_help(self) -> None:
        """
        C{twistd restygate --help} loads C{restygate.daemon.tap} from the wheel and
        shows the gateway's options.
        """
        output = self.venv.twistd_help("restygate")
        for option in ("--listen", "--consul", "--catalog", "--pool-size", "--config"):
            self.assertIn(option, output)


class EditableInstallTests(TestCase):
    """
    The README's C{pip install -e .} gives a C{twistd} that lists the plugin.
    Twisted finds plugins by scanning sys.path entries for C{twisted/plugins}
    directories, which setuptools' import-hook style of editable install
    does not provide; setup.cfg's C{package_dir} root mapping makes it write
    a plain path entry instead, and this test keeps it that way.
    """

    def test_twistd_lists_plugin(self) -> None:
        base = os.path.abspath(self.mktemp())
        source = copy_checkout(os.path.join(base, "source"))
        venv = Venv(os.path.join(base, "venv"), keep=source)
        venv.pip_install(*pip_build_options(), "-e", source)
        output = venv.twistd_help()
        self.assertIn("restygate", listed_plugins(output), output)
        package, plugin = venv.where()
        self.assertEqual(os.path.realpath(plugin), os.path.join(os.path.realpath(source), PLUGIN))
        self.assertEqual(os.path.realpath(package), os.path.join(os.path.realpath(source), "restygate", "__init__.py"))


class GatewayEndToEndTests(DaemonTestCase):
    """
    The installed C{twistd restygate}, on a static catalog, proxies to a real
    backend (the README's no-Consul quick start, on free ports).
    """

    def test_get_through_gateway(self) -> None:
        """
        C{GET /dc1/demo/<file>} through the gateway returns the backend's file.
        """
        base = os.path.abspath(self.mktemp())
        body = f"restygate end-to-end {os.getpid()} {time.time()}\n".encode("ascii")
        gateway = self.start_gateway(base, "demo", self.serve_file(base, "hello.txt", body), admin=True)
        status, received = self.get(f"http://127.0.0.1:{gateway.port}/dc1/demo/hello.txt")
        self.assertEqual((status, received), (200, body), gateway.tail())
        # The path docker/Dockerfile's HEALTHCHECK asks.
        status, received = self.get(f"http://127.0.0.1:{gateway.admin_port}/healthz")
        self.assertEqual(status, 200, gateway.tail())

    def test_default_access_log_single_process(self) -> None:
        """
        One process under C{twistd -n --logfile=-} writes its default access
        log to stdout itself, each line stamped as twistd stamps its own.
        """
        base = os.path.abspath(self.mktemp())
        body = b"one process\n"
        gateway = self.start_gateway(base, "demo", self.serve_file(base, "hello.txt", body), "--workers", "1")
        self.log = gateway.log
        for _ in range(3):
            self.assertEqual(self.get(f"http://127.0.0.1:{gateway.port}/dc1/demo/hello.txt"), (200, body))
        request_line = '"GET /dc1/demo/hello.txt HTTP/1.1" 200'

        def lines() -> List[str]:
            with open(gateway.log, encoding="utf-8", errors="replace") as f:
                return [line for line in f.read().splitlines() if request_line in line]

        self.waitFor(lambda: len(lines()) == 3, "three access-log lines")
        pattern = r"\d{4}-\d\d-\d\dT\S+ \[restygate\.access#info\] 127\.0\.0\.1 - - \["
        self.assertTrue(all(re.match(pattern, line) for line in lines()), lines())

    def test_sigterm_lets_requests_in_flight_finish(self) -> None:
        """
        On SIGTERM the daemon stops accepting, lets a request already under
        way finish with its 200, then exits cleanly.
        """
        self.assertDrainsOnSigterm(workers=1)

    def test_sigterm_drains_workers(self) -> None:
        """
        With worker processes, the parent's SIGTERM reaches the worker
        serving the request, which finishes it before everything exits.
        """
        self.assertDrainsOnSigterm(workers=2)

    def assertDrainsOnSigterm(self, workers: int) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        backend_port = self.start_backend(base, [sys.executable, "-c", _SLOW_BACKEND])
        backend_log = os.path.join(base, "backend.log")
        gateway = self.start_gateway(base, "slow", backend_port, "--workers", str(workers))
        gateway_port, gateway_log = gateway.port, gateway.log
        process = gateway.process

        outcome: List[Tuple[int, bytes]] = []
        client = threading.Thread(
            target=lambda: outcome.append(self.get(f"http://127.0.0.1:{gateway_port}/dc1/slow/x"))
        )
        client.start()
        deadline = time.monotonic() + TWISTD_TIMEOUT
        while b"started" not in log_tail(backend_log).encode() and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        # Every process holding the listening socket closes it at once: a new
        # client is refused (and can go elsewhere) while the request drains.
        refused = False
        deadline = time.monotonic() + 0.8
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", gateway_port), timeout=0.5).close()
            except ConnectionRefusedError:
                refused = True
            time.sleep(0.02)
        self.assertTrue(refused, log_tail(gateway_log))
        self.assertTrue(client.is_alive())
        client.join(TWISTD_TIMEOUT)
        self.assertEqual(outcome, [(200, b"slow answer\n")], log_tail(gateway_log))
        # twistd ends by re-raising the signal that stopped it, which
        # systemd counts as a clean stop for SIGTERM.
        self.assertEqual(process.wait(TWISTD_TIMEOUT), -signal.SIGTERM, log_tail(gateway_log))
        self.assertIn("Server Shut Down", log_tail(gateway_log))
        self.assertIn("draining 1 in-flight request", log_tail(gateway_log))


# A backend whose every answer takes a second, and says when it started one.
_SLOW_BACKEND = """
import http.server, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("started", flush=True)
        time.sleep(1.0)
        body = b"slow answer\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
"""


def _read(*path: str) -> str:
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


class SampleConfigTests(TestCase):
    """
    C{etc/restygate.toml} documents every key the code knows, with its
    default, and loads as shipped.
    """

    def setUp(self) -> None:
        self.text = _read("etc", "restygate.toml")
        # "#key = value" lines (no space after '#') are the commented-out settings.
        self.settings = tomllib.loads(
            "\n".join(line[1:] for line in self.text.splitlines() if re.match(r"#[a-z][a-z-]* = ", line))
        )

    def test_every_key_documented(self) -> None:
        """
        Each key the config accepts appears exactly once, commented out, after
        a comment that explains it; and no unknown key appears.
        """
        from restygate.config import KEYS

        self.assertEqual(sorted(self.settings), sorted(KEYS))
        lines = self.text.splitlines()
        for index, line in enumerate(lines):
            if re.match(r"#[a-z][a-z-]* = ", line):
                self.assertTrue(lines[index - 1].startswith("# "), f"no explanation above {line!r}")

    def test_defaults_shown(self) -> None:
        """
        The commented-out values are the built-in defaults, except where the
        default is empty and an example is more useful.
        """
        from restygate.config import DEFAULTS

        for key, value in self.settings.items():
            if DEFAULTS[key] not in (None, [], ""):
                self.assertEqual(value, DEFAULTS[key], key)

    def test_commented_values_valid(self) -> None:
        """
        Uncommenting everything gives a valid configuration (but the example
        file paths, which would have to exist); the file as shipped loads too.
        """
        from restygate.config import build, load_toml

        settings = {k: v for k, v in self.settings.items() if not str(v).startswith("/")}
        build([settings])
        self.assertEqual(load_toml(os.path.join(ROOT, "etc", "restygate.toml")), {})

    def test_precedence_stated(self) -> None:
        """
        The file says which source wins.
        """
        order = [self.text.index(word) for word in ("the command line", "this file", "the environment", "built-in defaults")]
        self.assertEqual(order, sorted(order))

    def test_catalog_loads(self) -> None:
        """
        The sample catalog is one the gateway accepts, with the quick start's
        C{demo} service on port 8000 of C{dc1}.
        """
        from restygate.discovery.catalog import load_catalog

        catalog = load_catalog(os.path.join(ROOT, "etc", "catalog.toml"))
        [instance] = catalog["dc1"]["demo"].instances
        self.assertEqual((instance.address, instance.port), ("127.0.0.1", 8000))

    def test_catalog_gives_the_readme_quick_start(self) -> None:
        """
        The sample catalog's instructions are the README's quick start, word
        for word, and that quick start keeps both processes on loopback.
        """
        quick_start = re.search(r"(sh -c '.*')\n", _read("README.md"))
        assert quick_start is not None
        command = quick_start.group(1)
        self.assertIn(f"#   {command}\n", _read("etc", "catalog.toml"))
        self.assertIn("--bind 127.0.0.1", command)
        self.assertIn("--listen tcp:8080:interface=127.0.0.1", command)


def _unit_directives(text: str) -> Dict[str, List[Tuple[str, str]]]:
    """
    A systemd unit as {section: [(key, value), ...]}, repeated keys kept.
    """
    sections: Dict[str, List[Tuple[str, str]]] = {}
    current: Optional[List[Tuple[str, str]]] = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep:
            raise AssertionError(f"not a unit file line: {raw!r}")
        current.append((key.strip(), value.strip()))
    return sections


class SystemdUnitTests(TestCase):
    """
    C{etc/restygate.service} is a valid, hardened unit.
    """

    def setUp(self) -> None:
        self.text = _read("etc", "restygate.service")
        self.sections = _unit_directives(self.text)
        self.service = dict(self.sections["Service"])

    def test_directives(self) -> None:
        expected = {
            "ExecStart": "/usr/local/bin/twistd --nodaemon --pidfile= --logfile=- restygate"
                         " --config /etc/restygate/restygate.toml",
            "ExecReload": "/bin/kill -HUP $MAINPID",
            "Restart": "on-failure",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
            "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
            "Environment": "CONSUL_ADDR=127.0.0.1:8500",
            "EnvironmentFile": "-/etc/default/restygate",
            "LimitNOFILE": "65536",
            "KillSignal": "SIGTERM",
            "TimeoutStopSec": "40",
        }
        self.assertEqual({k: self.service.get(k) for k in expected}, expected)
        # Exactly one way of not running as root.
        self.assertEqual(("DynamicUser" in self.service) + ("User" in self.service), 1)
        self.assertNotIn(self.service.get("User"), ("root", "0"))
        self.assertIn("WantedBy", dict(self.sections["Install"]))

    def test_systemd_analyze_verify(self) -> None:
        """
        C{systemd-analyze verify} has nothing to say about the unit.  It
        checks that ExecStart's program exists, so that path is pointed at
        one that does here.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze not installed (the directive test still parses the unit)")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        unit = os.path.join(directory, "restygate.service")
        with open(unit, "w") as f:
            f.write(self.text.replace("/usr/local/bin/twistd", sys.executable))
        result = subprocess.run(
            [analyze, "verify", unit], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
        )
        output = result.stdout.decode("utf-8", "replace")
        # verify exits 0 even for unknown keys or bad values: read what it said.
        complaints = [line for line in output.splitlines() if "restygate.service" in line]
        self.assertEqual((result.returncode, complaints), (0, []), output)


class ConsulServiceDefinitionTests(TestCase):
    def test_web_definition(self) -> None:
        """
        The sample service definition has an HTTP health check on the port
        it registers.
        """
        service = json.loads(_read("etc", "consul.d", "web.json"))["service"]
        self.assertEqual(service["name"], "web")
        check = service["check"]
        self.assertTrue(check["http"].startswith(f"http://127.0.0.1:{service['port']}/"))
        self.assertIn("interval", check)


def _dockerfile_instructions(text: str) -> List[Tuple[str, str]]:
    """
    A Dockerfile as [(INSTRUCTION, arguments)], continuation lines joined.
    """
    instructions: List[Tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


class DockerTests(TestCase):
    """
    The image and the compose file are shaped as documented.  No Docker
    engine runs here, so these read the files; they do not build anything.
    """

    def setUp(self) -> None:
        self.instructions = _dockerfile_instructions(_read("docker", "Dockerfile"))

    def args(self, keyword: str) -> List[str]:
        return [a for k, a in self.instructions if k == keyword]

    def test_dockerfile(self) -> None:
        """
        A build stage compiles the wheel (setup.py's mypyc data path needs a
        C compiler); the image that runs it is the slim one.
        """
        stages = self.args("FROM")
        self.assertEqual(stages, ["python:3.11-slim AS build", "python:3.11-slim"])
        runs = self.args("RUN")
        [wheel] = [a for a in runs if "pip wheel" in a]
        self.assertIn("RESTYGATE_COMPILE=1", wheel)
        self.assertTrue(any("gcc" in a for a in runs))
        self.assertIn("--from=build /wheels/ /wheels/", self.args("COPY"))
        [cmd] = self.args("CMD")
        self.assertEqual(json.loads(cmd), ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "restygate"])
        self.assertEqual(self.args("EXPOSE"), ["8080 9901"])
        self.assertIn("CONSUL_ADDR=consul:8500", self.args("ENV"))

    def test_runs_as_non_root(self) -> None:
        """
        The last USER is not root, and comes before the CMD.
        """
        keywords = [k for k, _ in self.instructions]
        users = self.args("USER")
        self.assertTrue(users)
        self.assertNotIn(users[-1].split(":")[0], ("root", "0"))
        self.assertLess(len(keywords) - 1 - keywords[::-1].index("USER"), keywords.index("CMD"))

    def test_healthcheck(self) -> None:
        [healthcheck] = self.args("HEALTHCHECK")
        self.assertIn("http://127.0.0.1:9901/healthz", healthcheck)
        self.assertNotIn("curl", healthcheck)

    def test_plugin_cache_built(self) -> None:
        """
        The plugin cache is written at build time, before dropping root,
        by listing the IServiceMaker plugins.
        """
        runs = [(i, a) for i, (k, a) in enumerate(self.instructions) if k == "RUN"]
        [cache] = [i for i, a in runs if "getPlugins" in a and "IServiceMaker" in a]
        [install] = [i for i, a in runs if "pip install" in a]
        [user] = [i for i, (k, _) in enumerate(self.instructions) if k == "USER"]
        self.assertLess(install, cache)
        self.assertLess(cache, user)

    def test_copied_paths_exist(self) -> None:
        """
        Every COPY source exists relative to the build context (the root).
        """
        for arguments in self.args("COPY"):
            if arguments.startswith("--from="):
                # From the build stage, not the context.
                continue
            for source in arguments.split()[:-1]:
                if not source.startswith("--"):
                    self.assertTrue(os.path.exists(os.path.join(ROOT, source)), source)

    def test_compose(self) -> None:
        try:
            import yaml  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            raise SkipTest("PyYAML not installed")
        compose = yaml.safe_load(_read("docker", "docker-compose.yml"))
        services = compose["services"]
        self.assertEqual(sorted(services), ["consul", "restygate", "web"])
        self.assertTrue(services["consul"]["image"].startswith("hashicorp/consul:"))
        self.assertIn("-dev", services["consul"]["command"])

        build = services["restygate"]["build"]
        here = os.path.join(ROOT, "docker")
        context = os.path.normpath(os.path.join(here, build["context"]))
        self.assertEqual(context, os.path.normpath(ROOT))
        self.assertTrue(os.path.isfile(os.path.join(context, build["dockerfile"])))
        self.assertEqual(services["restygate"]["environment"]["CONSUL_ADDR"], "consul:8500")
        # Its command is the image's, extended: they must not drift apart.
        [cmd] = self.args("CMD")
        image_command = json.loads(cmd)
        self.assertEqual(services["restygate"]["command"][: len(image_command)], image_command)

        # The web service is registered through a definition the agent loads.
        mounts = [v.split(":") for v in services["consul"]["volumes"]]
        [definitions] = [host for host, container, *_ in mounts if container == "/consul/config"]
        self.assertTrue(os.path.isfile(os.path.join(here, definitions, "web.json")))
        self.assertEqual(services["web"]["network_mode"], "service:consul")
        for host, container, *_ in (v.split(":") for v in services["web"].get("volumes", [])):
            self.assertTrue(os.path.exists(os.path.join(here, host)), host)
