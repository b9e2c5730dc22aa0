"""The whole stack on one machine (`make run`): reference hubs, Celery worker and beat, the log's forwarder, Flower, web server.

Each part is a child process in its own process group with its output in ``var/log/<part>.log``;
the supervisor prints a status line (``groups.selectors.status_summary``, read in this process) every
few seconds and stops every part on Ctrl-C (SIGTERM, then SIGKILL after a grace period).

No secret is on a command line (``ps`` shows them to every user): a hub's key goes to its reference hub
in ``$HUBSIM_KEY``, Flower's basic-auth credentials in ``$FLOWER_BASIC_AUTH`` (made once in
``var/flower-credentials``, mode 0600, unless the environment has them).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Part:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's environment
    process: subprocess.Popen | None = None


def worker_argv() -> list[str]:
    """The worker command line: also the `worker` service of docker-compose.yml."""
    return [sys.executable, "-m", "celery", "-A", "hubsched", "worker", "--pool", "threads", "--concurrency", "8", "-l", "INFO"]


def jobs_worker_argv() -> list[str]:
    """The jobs' worker (their own queue, so a long job never holds a worker that polls hubs; its own node name beside
    the first worker's): also the `jobs-worker` service of docker-compose.yml."""
    return [sys.executable, "-m", "celery", "-A", "hubsched", "worker", "-Q", settings.HUBSCHED_JOBS_QUEUE, "-n", "jobs@%h",
            "--pool", "threads", "--concurrency", "4", "-l", "INFO"]


def beat_argv() -> list[str]:
    """The beat command line: also the `beat` service of docker-compose.yml."""
    return [sys.executable, "-m", "celery", "-A", "hubsched", "beat", "-S", settings.CELERY_BEAT_SCHEDULER, "-l", "INFO"]


def forwarder_argv() -> list[str]:
    """The log's consumers (each sink's forwarder, the run recorder): also the `forwarder` service of docker-compose.yml."""
    return [sys.executable, "manage.py", "forward"]


def alarms_argv() -> list[str]:
    """The alarms' process (system checks, notifications: docs/alarms.md): also the `alarms` service of docker-compose.yml."""
    return [sys.executable, "manage.py", "alarms"]


def web_argv(*, host: str, port: int) -> list[str]:
    """The ASGI server (uvicorn, static files by whitenoise): also the `web` service of docker-compose.yml.

    Django's ASGI handler has no lifespan protocol: ``--lifespan off`` saves uvicorn's probe and its log line.
    """
    return [sys.executable, "-m", "uvicorn", "hubsched.asgi:application", "--host", host, "--port", str(port),
            "--lifespan", "off"]


def flower_argv(*, address: str, port: int) -> list[str]:
    """Flower, its basic-auth credentials in ``$FLOWER_BASIC_AUTH``: also the `flower` service of docker-compose.yml."""
    return [sys.executable, "-m", "celery", "-A", "hubsched", "flower", f"--port={port}", f"--address={address}"]


def hubsim_argv(*, host: str, port: int, name: str) -> list[str]:
    """A reference hub, its key in ``$HUBSIM_KEY``: also the `hub-a`/`hub-b` services of docker-compose.yml.

    ``python -m hubs.hubsim`` needs no Django settings, so a hub is given no Django secret.
    """
    return [sys.executable, "-m", "hubs.hubsim", "--host", host, "--port", str(port), "--name", name]


def flower_credentials() -> tuple[str, str]:
    """Flower's ``user:password`` and where it comes from: ``$FLOWER_BASIC_AUTH``, else ``var/flower-credentials``.

    The file is made once (mode 0600) with user ``admin`` and a random password, like ``var/admin-password``.
    """
    configured = os.environ.get("FLOWER_BASIC_AUTH", "").strip()
    if configured:
        return configured, "$FLOWER_BASIC_AUTH"
    path = Path(settings.VAR_DIR) / "flower-credentials"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"admin:{secrets.token_urlsafe(12)}\n")
    return path.read_text().strip(), str(path)


def local_hub_parts() -> list[Part]:
    """A reference hub for every enabled hub whose URL points at this machine (the demo's hubs)."""
    from hubs.models import Hub

    parts, ports = [], set()
    for hub in Hub.objects.enabled().order_by("pk"):
        url = urlsplit(hub.url)
        if url.hostname not in LOCAL_HOSTS or not url.port or url.port in ports:
            continue
        ports.add(url.port)
        argv = hubsim_argv(host=url.hostname, port=url.port, name=hub.name)
        parts.append(Part(name=f"hubsim-{hub.name}", argv=argv, env={"HUBSIM_KEY": hub.api_key}))
    return parts


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class Stack:
    def __init__(self, *, port: int, flower_port: int | None, out=print) -> None:
        self.port = port
        self.out = out
        self.log_dir = Path(settings.VAR_DIR) / "log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.parts = local_hub_parts() + [
            Part("worker", worker_argv()),
            Part("jobs-worker", jobs_worker_argv()),
            Part("beat", beat_argv()),
            Part("forwarder", forwarder_argv()),
            Part("alarms", alarms_argv()),
            Part("web", web_argv(host="127.0.0.1", port=port)),
        ]
        self.flower_credentials_source = None
        if flower_port:
            credentials, self.flower_credentials_source = flower_credentials()
            self.parts.append(Part("flower", flower_argv(address="127.0.0.1", port=flower_port),
                                   env={"FLOWER_BASIC_AUTH": credentials}))

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for part in self.parts:
            path = self.log_dir / f"{part.name}.log"
            with open(path, "ab") as log:  # the child keeps its own descriptor
                part.process = subprocess.Popen(
                    part.argv, stdout=log, stderr=subprocess.STDOUT, env={**env, **part.env}, cwd=settings.BASE_DIR,
                    start_new_session=True,
                )
            self.out(f"started {part.name:<14} pid {part.process.pid:<7} log {path}")
            if part.name == "flower":
                user, _, password = part.env["FLOWER_BASIC_AUTH"].partition(",")[0].partition(":")
                if self.flower_credentials_source == "$FLOWER_BASIC_AUTH":
                    self.out(f"flower user: {user} (password from $FLOWER_BASIC_AUTH)")
                else:
                    self.out(f"flower user: {user} / {password} (kept in {self.flower_credentials_source})")

    def stop(self, grace: float = 8.0) -> None:
        # a second Ctrl-C (or the SIGTERM that follows it) must not cut the shutdown short and orphan parts
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for part in self.parts:
            if part.process and part.process.poll() is None:
                os.killpg(part.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for part in self.parts:
            if not part.process:
                continue
            try:
                part.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(part.process.pid, signal.SIGKILL)
                part.process.wait()
        self.out("stopped")

    def dead(self) -> list[Part]:
        return [p for p in self.parts if p.process and p.process.poll() is not None]

    def status_line(self) -> str:
        """One line of counters, read in this process (the HTTP status endpoint needs a login)."""
        from django.db import DatabaseError, close_old_connections

        from groups.selectors import status_summary
        from streams.selectors import log_status_line

        close_old_connections()  # a connection broken since the last line is not reused
        try:
            status = status_summary()
        except DatabaseError as exc:
            return f"status not readable yet ({exc.__class__.__name__})"
        groups = ", ".join(
            f"{g['hub']}/{g['name']} {g['last_status'] or '-'} {g['runs']} runs {g['values']} values"
            for g in status["groups"]
        )
        return f"values acquired: {status['values_acquired']} | {log_status_line(status['log'])} | {groups}"

    def supervise(self, every: float = 3.0) -> int:
        """Print status until Ctrl-C (or SIGTERM) or a part dies; returns the exit code."""
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while True:
                time.sleep(every)
                dead = self.dead()
                if dead:
                    for part in dead:
                        self.out(f"{part.name} exited with {part.process.returncode}: see {self.log_dir / part.name}.log")
                    return 1
                self.out(time.strftime("%H:%M:%S ") + self.status_line())
        except KeyboardInterrupt:
            self.out("\nCtrl-C: stopping")
            return 0
        finally:
            self.stop()
