"""
Child processes for bench/soak: started each in a session of its own,
remembered, and stopped by PID (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def say(line: str) -> None:
    """
    One line of the soak's output, whole: the client, chaos and main threads
    all print.
    """
    with _print_lock:
        print(line, flush=True)


_print_lock = threading.Lock()


class Children:
    """
    Every process the soak started.  New ones start in their own session, so
    a Ctrl-C at the terminal reaches only the soak, which then stops them in
    order; a SIGKILLed and restarted backend is a new entry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: List[Tuple[str, "subprocess.Popen[bytes]"]] = []

    def spawn(self, name: str, argv: Sequence[str], log_path: str, cwd: str) -> "subprocess.Popen[bytes]":
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=cwd, start_new_session=True,
            )
        with self._lock:
            self._procs.append((name, proc))
        return proc

    def running(self) -> List[Tuple[str, "subprocess.Popen[bytes]"]]:
        with self._lock:
            return [(n, p) for n, p in self._procs if p.poll() is None]

    def stop_all(self, grace: float) -> List[str]:
        """
        Stop every child still running, the latest started first (restygate
        before its backends and Consul); returns one line per child that
        needed SIGKILL or exited badly.
        """
        notes = []
        for name, proc in reversed(self.running()):
            code = stop(proc, grace)
            if code is None:
                notes.append(f"{name} (pid {proc.pid}) did not exit even after SIGKILL")
            elif code not in (0, -signal.SIGTERM):
                notes.append(f"{name} (pid {proc.pid}) exited with {code} on SIGTERM")
        return notes


def stop(proc: "subprocess.Popen[bytes]", grace: float) -> Optional[int]:
    """
    SIGTERM C{proc} by its PID and wait up to C{grace} seconds, then
    SIGKILL it; its exit status (None if it outlived even that).
    """
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return proc.poll()
    try:
        proc.kill()
        return proc.wait(5)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        return proc.poll()


def free_ports(count: int) -> List[int]:
    """
    C{count} distinct ports free on 127.0.0.1 right now (the kernel's pick,
    so that two soaks, or a soak and bench/run, do not collide).
    """
    ports: Set[int] = set()
    held = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind(("127.0.0.1", 0))
            ports.add(s.getsockname()[1])
    finally:
        for s in held:
            s.close()
    return sorted(ports)


def wait_listening(port: int, proc: "subprocess.Popen[bytes]", timeout: float) -> bool:
    """
    Whether C{proc} accepts connections on 127.0.0.1:C{port} within
    C{timeout} seconds (False at once if it exits).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def proc_memory(pid: int) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """
    (VmRSS, VmHWM) in KiB and the open fd count of C{pid}, None where
    unreadable (the process is gone).
    """
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    try:
        fds: Optional[int] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return rss, hwm, fds


def cpu_seconds(pid: int) -> Optional[float]:
    """
    User plus system CPU seconds C{pid} has used.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces and parentheses: fields count
            # from the last ')'.
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def ensure_installed() -> str:
    """
    Make C{twistd restygate} work as a user's would: the project installed
    (C{pip install -e .} when C{restygate} cannot be imported from outside
    the checkout) and a C{twistd}; returns the path of that C{twistd}.
    """
    probe = subprocess.run(
        [sys.executable, "-c", "import restygate"], cwd="/",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    if probe.returncode != 0:
        say("soak: installing the project (python3 -m pip install -e .)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-e", ROOT], check=True)
    # The twistd next to this interpreter is the one pip installed for it;
    # a pyenv shim on PATH would work too but adds a process exec chain.
    sibling = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(sibling, os.X_OK):
        return sibling
    found = shutil.which("twistd")
    if found is None:
        raise SystemExit("soak: no twistd on PATH even after installing the project")
    return found
