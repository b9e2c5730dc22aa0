"""The whole stack on one machine (`make run`): reference hubs, Celery worker and beat, Flower, web server.

Each part is a child process in its own process group with its output in ``var/log/<part>.log``;
the supervisor prints a status line from ``/api/status`` every few seconds and stops every part
on Ctrl-C (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Part:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None


def worker_argv() -> list[str]:
    """The worker command line: also the `worker` service of docker-compose.yml."""
    return [sys.executable, "-m", "celery", "-A", "hubsched", "worker", "--pool", "threads", "--concurrency", "8", "-l", "INFO"]


def beat_argv() -> list[str]:
    """The beat command line: also the `beat` service of docker-compose.yml."""
    return [sys.executable, "-m", "celery", "-A", "hubsched", "beat", "-S", settings.CELERY_BEAT_SCHEDULER, "-l", "INFO"]


def local_hub_parts() -> list[Part]:
    """A reference hub for every enabled hub whose URL points at this machine (the demo's hubs)."""
    from hubs.models import Hub

    parts, ports = [], set()
    for hub in Hub.objects.enabled().order_by("pk"):
        url = urlsplit(hub.url)
        if url.hostname not in LOCAL_HOSTS or not url.port or url.port in ports:
            continue
        ports.add(url.port)
        argv = [sys.executable, "manage.py", "hubsim", "--host", url.hostname, "--port", str(url.port), "--name", hub.name]
        argv += ["--key", hub.api_key]
        parts.append(Part(name=f"hubsim-{hub.name}", argv=argv))
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
            Part("beat", beat_argv()),
            Part("web", [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]),
        ]
        if flower_port:
            self.parts.append(
                Part("flower", [sys.executable, "-m", "celery", "-A", "hubsched", "flower", f"--port={flower_port}",
                                "--address=127.0.0.1"])
            )

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for part in self.parts:
            path = self.log_dir / f"{part.name}.log"
            with open(path, "ab") as log:  # the child keeps its own descriptor
                part.process = subprocess.Popen(
                    part.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=settings.BASE_DIR, start_new_session=True
                )
            self.out(f"started {part.name:<14} pid {part.process.pid:<7} log {path}")

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
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status", timeout=2) as response:
                status = json.load(response)
        except OSError as exc:
            return f"web server not answering yet ({exc.__class__.__name__})"
        groups = ", ".join(
            f"{g['hub']}/{g['name']} {g['last_status'] or '-'} {g['runs']} runs {g['values']} values"
            for g in status["groups"]
        )
        return f"values stored: {status['values_stored']} | {groups}"

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
