"""Servers a fault benchmark or test runs and stops itself: a PostgreSQL instance of its own (never the shared one), a RabbitMQ virtual host of its own."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time


def postgres_program(name: str) -> str | None:
    """The path of a PostgreSQL server program (``initdb``, ``pg_ctl``): on the PATH, else in Debian's
    ``/usr/lib/postgresql/<version>/bin``; None where there is none."""
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


class OwnPostgres:
    """A PostgreSQL cluster of our own in a temporary directory on ``port``, run as the postgres user when we
    are root; ``start()`` (again after ``kill()``), ``kill()`` (SIGKILL of its postmaster, by pid), ``close()``
    (kill and remove). ``url`` is its SQLAlchemy URL. Raises RuntimeError when the programs are missing.

    ``host`` is the address it listens on; ``trust`` a network (``10.77.3.0/24``) whose clients it lets in without a
    password, besides this machine; ``wrap`` a command prefix ``pg_ctl start`` runs under (``ip netns exec NS``: the
    server then lives in that network namespace)."""

    def __init__(self, *, port: int, fsync: bool = False, host: str = "127.0.0.1", trust: str | None = None,
                 wrap: list[str] | None = None) -> None:
        self.initdb, self.pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("the PostgreSQL programs initdb and pg_ctl are not installed")
        self.port, self.fsync = port, fsync
        self.as_postgres = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        self.data = tempfile.mkdtemp(prefix="hubsched-pg-")
        if self.as_postgres:
            shutil.chown(self.data, "postgres")
        subprocess.run([*self.as_postgres, self.initdb, "-D", self.data, "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)
        if trust:
            with open(f"{self.data}/pg_hba.conf", "a") as hba:
                hba.write(f"host all all {trust} trust\n")
        self.host, self.wrap = host, list(wrap or [])
        self.pid: int | None = None
        self.url = f"postgresql+psycopg2://postgres@{host}:{port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses={self.host}" + ("" if self.fsync else " -c fsync=off")
        subprocess.run([*self.wrap, *self.as_postgres, self.pg_ctl, "start", "-D", self.data, "-w", "-l", f"{self.data}/log",
                        "-o", options], check=True, capture_output=True)
        with open(f"{self.data}/postmaster.pid") as pidfile:
            self.pid = int(pidfile.readline())

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend of it (as a host that loses power: no connection of the pool
        outlives it), by pid, and wait until they are gone and the port is free."""
        if self.pid is None:
            return
        pids = [self.pid, *_children(self.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.02)
        self.pid = None
        # Its lock files name a pid that may linger as a zombie (a container's init need not reap it), which the
        # next postmaster would take for a live one: they are ours to remove.
        for lock in (f"{self.data}/postmaster.pid", f"{self.data}/.s.PGSQL.{self.port}.lock"):
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.data, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (Linux's ``/proc/<pid>/task/*/children``); [] where it is gone."""
    found: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as children:
                found += [int(child) for child in children.read().split()]
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not yet reaped by its parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def rabbitmqctl_program() -> str | None:
    """The path of ``rabbitmqctl`` (on the PATH, else Debian's ``/usr/sbin``); None where there is none."""
    return shutil.which("rabbitmqctl") or ("/usr/sbin/rabbitmqctl" if os.path.exists("/usr/sbin/rabbitmqctl") else None)


class RabbitMQVhost:
    """A RabbitMQ virtual host of our own, so that a benchmark's streams are its own (``executions`` in it is
    nobody else's): made with ``rabbitmqctl add_vhost`` and ``set_permissions`` for the URL's user, deleted with
    its streams by ``close()``. ``url`` is the given ``rabbitmq-stream://`` URL with this virtual host.

    rabbitmqctl talks to the node on this machine (it needs the node's Erlang cookie: root, or the rabbitmq
    user): the URL's server must be that node. Raises RuntimeError when rabbitmqctl is missing or fails."""

    def __init__(self, url: str, *, name: str) -> None:
        from urllib.parse import quote, unquote, urlsplit, urlunsplit

        self.ctl = rabbitmqctl_program()
        if self.ctl is None:
            raise RuntimeError("rabbitmqctl is not installed: give the log URL a virtual host of the benchmark's own "
                               "(rabbitmq-stream://user:password@host:5552/<vhost>); its stream 'executions' is "
                               "deleted before and after the run")
        parts = urlsplit(url)
        self.name = name
        self._ctl("add_vhost", name)
        try:
            self._ctl("set_permissions", "-p", name, unquote(parts.username or "guest"), ".*", ".*", ".*")
        except RuntimeError:
            self.close()
            raise
        self.url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(name, safe=""), parts.query, ""))

    def _ctl(self, *args: str) -> None:
        done = subprocess.run([self.ctl, "-q", *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args[:1])} {self.name} failed: {done.stderr.strip()[-500:]}")

    def close(self) -> None:
        """Delete the virtual host and its streams; no error when it is gone already."""
        try:
            self._ctl("delete_vhost", self.name)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
