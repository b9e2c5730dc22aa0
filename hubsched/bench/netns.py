"""Hosts on one machine for multi-host tests and benchmarks: Linux network namespaces on a private bridge.

``Hosts(["services", "hubs", "worker0", "worker1"])`` makes, for this run only:

- a bridge ``hsb<tag>`` in the calling (root) namespace with the address ``10.77.<n>.1/24``, so that this
  process reaches every host directly (the bench's own analysis, migrations, the sink);
- per host a namespace ``hubsched-<tag>-<host>`` with its loopback up and one end of a veth pair
  (``hsv<tag><i>`` on the bridge, ``eth0`` inside) at ``10.77.<n>.<i + 2>/24``.

``<tag>`` is random per run and ``<n>`` a /24 no interface on this machine holds yet, so runs in parallel
do not collide. ``close()`` (also the context manager's exit, and after a failure part-way through
``__init__``) kills the processes it started that still run and any other process inside its namespaces
(daemons such as ``epmd``), and deletes the CPU cgroups ``cpu_limit`` made and every namespace, veth and the
bridge it made; deleting a namespace removes its veth end, and with it the peer.

Needs root (``CAP_NET_ADMIN``) and ``ip`` (iproute2). ``permitted()`` says whether this machine allows it, and
why not. Raises ``HostsError`` naming the ``ip`` command that failed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

SUBNET = "10.77"  # 10.77.<n>.0/24, one per run


class HostsError(RuntimeError):
    """An ``ip`` command failed (its command line and stderr are the message)."""


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise HostsError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def permitted() -> str | None:
    """None when this process may make network namespaces; else why not (for a test's skip reason)."""
    if shutil.which("ip") is None:
        return "the ip program (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CAP_NET_ADMIN)"
    name = f"hubsched-probe-{os.getpid()}-{random.randrange(1 << 30):x}"
    done = _ip("netns", "add", name, check=False)
    if done.returncode:
        return f"ip netns add is not permitted here: {done.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def _subnet_free() -> int:
    """A ``<n>`` whose 10.77.<n>.0/24 no address on this machine (root namespace) lies in."""
    used = _ip("-o", "-4", "addr", "show").stdout
    free = [n for n in range(1, 255) if f" {SUBNET}.{n}." not in used]
    if not free:
        raise HostsError(f"every {SUBNET}.<n>.0/24 is in use")
    return random.choice(free)


def _inside(ns: str) -> list[int]:
    """The pids of the processes whose network namespace is ``ns`` (``/proc/<pid>/ns/net``)."""
    try:
        inode = os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return []
    mine = f"net:[{inode}]"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.readlink(f"/proc/{entry}/ns/net") == mine:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _kill_inside(ns: str) -> None:
    """SIGKILL every process whose network namespace is ``ns`` (daemons that left their process group, such as
    the ``epmd -daemon`` a RabbitMQ node starts), and wait a moment for them to go."""
    pids = _inside(ns)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and not _zombie(pid)]
        time.sleep(0.02)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class Hosts:
    """Network namespaces on one bridge, one per name in ``names``; see the module docstring.

    ``address(host)`` is a host's IPv4 address (str), ``gateway`` the root namespace's on the bridge;
    ``spawn(host, argv, ...)`` runs a program inside a host (``ip netns exec``) and remembers it for ``close()``."""

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names) or not names or len(names) > 250:
            raise ValueError(f"host names must be 1..250 distinct names, not {list(names)!r}")
        self.tag = f"{random.randrange(1 << 24):06x}"
        self.names = list(names)
        self.bridge = f"hsb{self.tag}"
        self._made_ns: list[str] = []
        self._made_links: list[str] = []
        self._cgroups: dict[str, Path] = {}  # host -> its CPU cgroup (cpu_limit)
        self._procs: list[subprocess.Popen] = []
        try:
            self.net = _subnet_free()
            self.gateway = f"{SUBNET}.{self.net}.1"
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made_links.append(self.bridge)
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, host in enumerate(self.names):
                ns, outer = self.netns(host), f"hsv{self.tag}{i}"
                _ip("netns", "add", ns)
                self._made_ns.append(ns)
                _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._made_links.append(outer)
                _ip("link", "set", outer, "master", self.bridge, "up")
                _ip("link", "set", "lo", "up", netns=ns)
                _ip("addr", "add", f"{self.address(host)}/24", "dev", "eth0", netns=ns)
                _ip("link", "set", "eth0", "up", netns=ns)
        except BaseException:
            self.close()
            raise

    # --- names and addresses ---------------------------------------------------------------------------

    def netns(self, host: str) -> str:
        """The namespace's name (``ip netns exec <name> ...``)."""
        return f"hubsched-{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.net}.{self.names.index(host) + 2}"

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``."""
        if host not in self.names:
            raise ValueError(f"unknown host {host!r}; known: {', '.join(self.names)}")
        return ["ip", "netns", "exec", self.netns(host), *argv]

    # --- processes ---------------------------------------------------------------------------------------

    def run(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run`` of ``argv`` inside ``host``."""
        return subprocess.run(self.exec_argv(host, argv), **kwargs)

    def spawn(self, host: str, argv: Sequence[str], *, env: dict | None = None, cwd=None,
              log_path: Path | None = None) -> subprocess.Popen:
        """Start ``argv`` inside ``host``, leading its own process group (``ip netns exec`` execs the program, so
        the pid is the program's), its output appended to ``log_path`` (else discarded). ``close()`` kills it
        (its group) if it still runs."""
        out = open(log_path, "a") if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(self.exec_argv(host, argv), env=env, cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log_path:
                out.close()  # the child keeps its own descriptor
        self._procs.append(proc)
        if host in self._cgroups:  # its threads and children, started later, stay in the cgroup
            (self._cgroups[host] / "cgroup.procs").write_text(f"{proc.pid}\n")
        return proc

    def cpu_limit(self, host: str, percent: float) -> None:
        """Give ``host`` a CPU capacity: what runs there (every process inside its namespace, and what ``spawn``
        starts there afterwards) gets at most ``percent`` % of one core together (a cgroup of its own: v1
        ``cpu.cfs_quota_us``, or v2 ``cpu.max``, over 100 ms periods), so that a host on this machine stands in for
        a smaller machine. Call it once the host's programs have started: under a small limit, Python's imports
        alone take a while. Raises HostsError where cgroups are not writable."""
        quota, period = max(1000, round(percent * 1000)), 100_000
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        group = Path("/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/cpu") / self.netns(host)
        try:
            group.mkdir()
            self._cgroups[host] = group
            if v2:
                (group / "cpu.max").write_text(f"{quota} {period}\n")
            else:
                (group / "cpu.cfs_period_us").write_text(f"{period}\n")
                (group / "cpu.cfs_quota_us").write_text(f"{quota}\n")
            for pid in _inside(self.netns(host)):
                try:
                    (group / "cgroup.procs").write_text(f"{pid}\n")
                except ProcessLookupError:
                    pass
        except OSError as exc:
            raise HostsError(f"cannot limit the CPU of {host} with a cgroup at {group}: {exc}") from None

    def wait_for_port(self, host: str, port: int, *, proc: subprocess.Popen | None = None,
                      timeout: float = 30.0) -> None:
        """Wait until ``host``'s address accepts TCP connections on ``port`` (from this namespace, across the
        bridge). Raises RuntimeError after ``timeout`` s, or at once when ``proc`` exits."""
        import socket

        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((self.address(host), port), timeout=1).close()
                return
            except OSError:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{host}:{port}: the process exited with {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host}:{port} did not accept connections within {timeout} s") from None
                time.sleep(0.05)

    # --- clean-up ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill what ``spawn`` started and still runs (SIGKILL to its process group), delete the namespaces,
        veths and bridge made here. Idempotent; errors of ``ip`` are ignored (a link already gone)."""
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        self._procs.clear()
        for ns in reversed(self._made_ns):
            _kill_inside(ns)
            _ip("netns", "del", ns, check=False)
        self._made_ns.clear()
        for link in reversed(self._made_links):
            _ip("link", "del", link, check=False)
        self._made_links.clear()
        for group in self._cgroups.values():
            try:
                group.rmdir()  # empty now: its processes are gone
            except OSError:
                pass
        self._cgroups.clear()

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
