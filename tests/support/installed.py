"""
Installed restygate for tests: a wheel built from a clean copy of this
checkout in a fresh virtualenv (made once per test run), and the real
processes a test starts from it (the daemon, backends), talked to over
loopback.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Dict, List, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - PyPy 3.9
    pass

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN = "twisted/plugins/restygate_plugin.py"

# How long a subprocess (pip, twistd) may take before the test gives up.
PIP_TIMEOUT = 180.0
TWISTD_TIMEOUT = 30.0


def clean_env() -> Dict[str, str]:
    """
    The environment for processes run from the test virtualenv: nothing that
    would put the checkout back on their path or point them at a real Consul.
    """
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "CONSUL_ADDR", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN"):
        env.pop(name, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # These tests are about what the wheel ships and how it installs, built
    # once per run: pure Python, not the minute or more mypyc takes to
    # compile the data path (setup.py).  .ci/run runs the whole suite over
    # the compiled data path as well.
    env["RESTYGATE_COMPILE"] = "0"
    return env


def run(args: Sequence[str], timeout: float, cwd: Optional[str] = None) -> str:
    """
    Run a command to completion and return its output; a failure's message
    carries the whole output, since it is all a CI log will show.
    """
    result = subprocess.run(
        list(args),
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
    )
    output = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{output}")
    return output


def offline_build_possible() -> bool:
    """
    Whether the installed setuptools can build our wheel without pip fetching
    a build environment: it must do PEP 660 (64+) and have bdist_wheel, which
    is built in from 70.1 and came from the C{wheel} package before.
    """
    try:
        version = tuple(int(part) for part in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    if version >= (70, 1):
        return True
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return version >= (64, 0)


_IGNORED = shutil.ignore_patterns(
    ".git", "_trial_temp*", "build", "dist", "*.egg-info", "__pycache__", "*.py[cod]",
    ".mypy_cache", ".hypothesis", "dropin.cache", ".venv", "venv",
)

# Run first in every process started from a test virtualenv: take off
# sys.path each entry, but the one under test, that holds a restygate package
# or plugin.  The system site-packages a virtualenv inherits can name
# checkouts (CI's `pip install -e .` adds this one), whose plugin would let
# twistd list restygate even with a wheel that lost its own.
_ONLY_THE_COPY_UNDER_TEST = """\
import os, sys
def _other_copy(entry, keep={keep!r}):
    entry = os.path.realpath(entry or os.curdir)
    return entry != keep and (
        os.path.exists(os.path.join(entry, "restygate", "__init__.py"))
        or os.path.exists(os.path.join(entry, "twisted", "plugins", "restygate_plugin.py")))
sys.path[:] = [p for p in sys.path if not _other_copy(p)]
"""

# The launcher pip would have written for twistd, had Twisted been installed
# into the virtualenv instead of inherited from the system site-packages.
_TWISTD = """\
#!{python}
{prelude}
from twisted.scripts.twistd import run
sys.exit(run())
"""


def pip_build_options() -> List[str]:
    # Offline when the installed setuptools can build; otherwise pip fetches
    # the build-system requirements (what a user's `pip install .` does).
    return ["--no-build-isolation"] if offline_build_possible() else []


class Venv:
    """
    A virtualenv over the system site-packages (so the dependencies are
    there, offline), with a C{bin/twistd} that sees only C{keep}'s restygate:
    the venv's own site-packages unless another directory is named.
    """

    def __init__(self, path: str, keep: Optional[str] = None) -> None:
        # --without-pip: the system's pip, run by the venv's python, installs
        # into the venv, so creating it fetches nothing.
        run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path], PIP_TIMEOUT)
        self.path = path
        self.python = os.path.join(path, "bin", "python")
        self.site_packages = run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], PIP_TIMEOUT
        ).strip()
        if sys.prefix != sys.base_prefix:
            # The tests run in a virtualenv themselves: --system-site-packages
            # reaches the base interpreter's packages, not that virtualenv's
            # where the dependencies are, so name those too (after our own).
            with open(os.path.join(self.site_packages, "_outer_venv.pth"), "w") as f:
                f.write("\n".join(site.getsitepackages()) + "\n")
        self.plugins = os.path.join(self.site_packages, "twisted", "plugins")
        self.prelude = _ONLY_THE_COPY_UNDER_TEST.format(keep=os.path.realpath(keep or self.site_packages))
        self.twistd = os.path.join(path, "bin", "twistd")
        with open(self.twistd, "w") as f:
            f.write(_TWISTD.format(python=self.python, prelude=self.prelude))
        os.chmod(self.twistd, 0o755)

    def pip_install(self, *args: str) -> None:
        run([self.python, "-m", "pip", "install", "--no-deps", "--ignore-installed", *args], PIP_TIMEOUT,
             cwd=self.path)

    def twistd_help(self, *args: str) -> str:
        return run([self.twistd, *args, "--help"], TWISTD_TIMEOUT, cwd=self.path)

    def where(self) -> Tuple[str, str]:
        """
        The files the restygate package and plugin are imported from.
        """
        code = self.prelude + (
            "import restygate, twisted.plugins.restygate_plugin as p\n"
            "print(restygate.__file__)\n"
            "print(p.__file__)\n"
        )
        package, plugin = run([self.python, "-c", code], TWISTD_TIMEOUT, cwd=self.path).split()
        return package, plugin


def copy_checkout(destination: str) -> str:
    """
    Copy the checkout without build output, caches or VCS data, as a fresh
    clone would have it, so that builds never write into the checkout.
    """
    shutil.copytree(ROOT, destination, ignore=_IGNORED)
    return destination


class Installation:
    """
    The wheel built from this checkout, installed into a throw-away
    virtualenv; made once per test run and shared by the tests below.
    """

    def __init__(self, base: str) -> None:
        source = copy_checkout(os.path.join(base, "source"))
        wheels = os.path.join(base, "wheels")
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", *pip_build_options(), "-w", wheels, source],
             PIP_TIMEOUT, cwd=base)
        [name] = os.listdir(wheels)
        self.wheel = os.path.join(wheels, name)
        self.venv = Venv(os.path.join(base, "venv"))
        self.venv.pip_install("--no-index", "--no-compile", self.wheel)


_installation: Optional[Installation] = None
_installation_error: Optional[BaseException] = None


def installed() -> Installation:
    """
    Build and install once per process; a failure is remembered, so the
    other tests report it at once instead of building again.
    """
    global _installation, _installation_error
    if _installation is None and _installation_error is None:
        base = tempfile.mkdtemp(prefix="restygate-packaging-")
        atexit.register(shutil.rmtree, base, True)
        try:
            _installation = Installation(base)
        except BaseException as e:
            _installation_error = e
    if _installation_error is not None:
        raise AssertionError(f"building and installing the wheel failed: {_installation_error}")
    assert _installation is not None
    return _installation


def listed_plugins(help_text: str) -> List[str]:
    """
    The subcommand names in C{twistd --help}'s "Commands:" section.
    """
    _, _, commands = help_text.partition("Commands:")
    return re.findall(r"^ {4}(\S+) ", commands, re.MULTILINE)


def free_ports(count: int) -> List[int]:
    """
    Distinct loopback ports free right now (held together, so no two are
    the same), for processes that must be told their port up front.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def log_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-4000:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


@dataclass
class Daemon:
    """
    An installed C{twistd restygate} a test started.
    """

    process: "subprocess.Popen[bytes]"
    port: int
    admin_port: Optional[int]
    log: str

    def tail(self) -> str:
        return log_tail(self.log)


class DaemonTestCase(TestCase):
    """
    Runs real processes (the installed daemon, backends) for a test, and
    talks to them over loopback.
    """

    # Set by a test that starts a daemon: its log, and its admin port.
    log: str
    admin_port: Optional[int]

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def waitFor(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TWISTD_TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}:\n{log_tail(self.log)}")
            time.sleep(0.05)

    def start_backend(self, base: str, command: Sequence[str]) -> int:
        """
        Start a backend listening on the free port appended to C{command};
        its port, once it listens.
        """
        [port] = free_ports(1)
        log = os.path.join(base, "backend.log")
        process = self.spawn([*command, str(port)], log)
        self.waitForPort(port, process, log)
        return port

    def serve_file(self, base: str, name: str, body: bytes) -> int:
        """
        A static file backend serving C{body} as C{/name}; its port.
        """
        docroot = os.path.join(base, "www")
        os.makedirs(docroot, exist_ok=True)
        with open(os.path.join(docroot, name), "wb") as f:
            f.write(body)
        return self.start_backend(
            base, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", docroot]
        )

    def start_gateway(
        self, base: str, service: str, backend_port: int, *options: str, admin: bool = False
    ) -> Daemon:
        """
        The installed daemon routing C{/dc1/<service>/} to the backend by a
        static catalog, with these options, once it listens.
        """
        catalog = os.path.join(base, "catalog.toml")
        with open(catalog, "w") as f:
            f.write(f'[dc1]\n{service} = [ {{ address = "127.0.0.1", port = {backend_port} }} ]\n')
        port, admin_port = free_ports(2)
        admin_option = f"tcp:{admin_port}:interface=127.0.0.1" if admin else "none"
        log = os.path.join(base, "twistd.log")
        process = self.spawn(
            [installed().venv.twistd, "-n", "--pidfile=", "--logfile=-", "restygate", "--catalog", catalog,
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--admin", admin_option, *options],
            log,
        )
        self.waitForPort(port, process, log)
        # The admin listener is another service: it may come up a moment
        # after the gateway's (seen under PyPy).
        if admin:
            self.waitForPort(admin_port, process, log)
        return Daemon(process, port, admin_port if admin else None, log)

    def spawn(self, args: Sequence[str], log: str) -> "subprocess.Popen[bytes]":
        """
        Start a process whose output goes to C{log}; it is killed and reaped
        when the test ends, however it ends.
        """
        with open(log, "wb") as out:
            process = subprocess.Popen(
                list(args), cwd=os.path.dirname(log), env=clean_env(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        self.addCleanup(self.stop, process)
        return process

    def stop(self, process: "subprocess.Popen[bytes]") -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def waitForPort(self, port: int, process: "subprocess.Popen[bytes]", log: str) -> None:
        deadline = time.monotonic() + TWISTD_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.fail(f"{process.args!r} exited {process.returncode}:\n{log_tail(log)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.fail(f"nothing listens on port {port}:\n{log_tail(log)}")

    def get(self, url: str) -> Tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
