"""One attempt of a job's command (shell, HTTP or sandboxed script): run it, keep its output bounded, stop it on
request or past its timeout, and say what happened as an ``Attempt``.

No model access here but ``Command.from_job`` (which reads a Job and its script once): ``command_run`` takes plain
data, so jobs/execution.py (misfire, overlap, JobRun rows, retries) and the tests call it without rows.

Shell commands run as ``Popen(argv, shell=False)`` in a process group of their own (``start_new_session``), with an
environment of PATH, LANG, HOME and the job's variables only: never the worker's own (it holds SECRET_KEY and
database URLs). A stop (kill, replace, timeout) sends SIGTERM to the whole group, SIGKILL after the grace time;
when the program exits (by itself or from the SIGTERM), whatever it left running in its group is SIGKILLed at once,
so nothing of an attempt outlives it (a process that made a session of its own, ``setsid``, escapes this).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from .validators import SUCCESS_CODES_DEFAULT, success_codes_parse

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
SHELL_OFF = "shell jobs are turned off on this worker (HUBSCHED_JOBS_SHELL)"
STOP_POLL_S = 0.25  # how often should_stop() is asked
READ_CHUNK = 64 * 1024
DRAIN_S = 1.0  # after the program exited: how long its pipes may still be read (a leftover that holds them is killed)


@dataclass(frozen=True)
class Command:
    """What one attempt runs, as plain data (``from_job`` builds it from a ``jobs.models.Job``).

    shell: ``argv`` (the program first, looked up on the job's PATH), ``working_directory`` (absolute, or relative
    to ``HUBSCHED_JOBS_DIR``; empty: that directory; made when missing), ``environment`` (name -> string, on top of
    PATH, LANG and HOME). http: ``method``, ``url``, ``headers``, ``body`` (None: no body; else sent as JSON),
    ``success_codes`` (``"200-299,304"``). script: ``code``, ``script_timeout`` (CPU s), ``memory_limit_mb``,
    ``data_sources`` (``script_execute``'s shape: name -> ``{"url", "writable", "allow_ddl"}``).
    """

    kind: str
    argv: tuple[str, ...] = ()
    working_directory: str = ""
    environment: dict = field(default_factory=dict)
    method: str = "POST"
    url: str = ""
    headers: dict = field(default_factory=dict)
    body: Any = None
    success_codes: str = SUCCESS_CODES_DEFAULT
    code: str = ""
    script_timeout: float = 2.0
    memory_limit_mb: int = 256
    data_sources: dict = field(default_factory=dict)

    @classmethod
    def from_job(cls, job) -> Command:
        """The command of ``job`` (a ``jobs.models.Job``); a script job reads its script and its project's data
        sources (one query) now, so the attempt itself touches no rows."""
        common = {"kind": job.kind}
        if job.kind == "shell":
            return cls(**common, argv=tuple(job.argv or ()), working_directory=job.working_directory or "",
                       environment=dict(job.environment or {}))
        if job.kind == "http":
            return cls(**common, method=job.method or "POST", url=job.url or "", headers=dict(job.headers or {}),
                       body=job.body, success_codes=job.success_codes or SUCCESS_CODES_DEFAULT)
        if job.kind == "script":
            from scripts_engine.services import script_data_sources

            script = job.script
            if script is None:
                return cls(**common)
            return cls(**common, code=script.code, script_timeout=float(script.timeout),
                       memory_limit_mb=int(script.memory_limit_mb),
                       data_sources=script_data_sources(project_id=job.project_id))
        return cls(**common)


@dataclass
class Progress:
    """A running attempt's state for a live tail and a heartbeat: ``stdout``/``stderr`` are the tails kept so far
    (the last ``output_limit`` bytes, decoded), ``*_bytes`` everything written. ``pid``: shell only."""

    pid: int | None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0


@dataclass
class Attempt:
    """How one attempt ended.

    ``status``: ``ok``, ``failed``, ``timeout`` or ``killed``. ``exit_code``: shell, Popen's returncode (negative:
    the signal). ``http_status``: http. ``error``: for a person (``exit code 3``, ``HTTP 503 Service Unavailable``,
    the script's error, ``timed out after 2.0 s``, the kill reason). ``stdout``/``stderr``: shell, the LAST
    ``output_limit`` bytes of each; http, the FIRST ``output_limit`` bytes of the response body; script, the last
    ``output_limit`` bytes of what it printed; decoded UTF-8 with ``errors="replace"``. ``*_bytes``: the full sizes.
    """

    status: str
    exit_code: int | None = None
    http_status: int | None = None
    error: str = ""
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    pid: int | None = None


class _Tail:
    """The last ``limit`` bytes written, and how many were written in all (thread-safe)."""

    def __init__(self, limit: int):
        self.limit = max(0, int(limit))
        self.data = bytearray()
        self.total = 0
        self._lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            self.total += len(chunk)
            if len(chunk) >= self.limit:
                self.data[:] = chunk[len(chunk) - self.limit:] if self.limit else b""
            else:
                self.data += chunk
                if len(self.data) > self.limit:
                    del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        with self._lock:
            return bytes(self.data).decode("utf-8", errors="replace")


class _Clock:
    """The attempt's deadline, and when to ask ``should_stop`` and report progress next."""

    def __init__(self, timeout: float | None, progress_every: float):
        self.start = time.monotonic()
        self.deadline = None if timeout is None else self.start + float(timeout)
        self.progress_every = max(0.05, float(progress_every))
        self.next_stop_check = self.start
        self.next_progress = self.start + self.progress_every

    def timed_out(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def stop_check_due(self, now: float) -> bool:
        if now >= self.next_stop_check:
            self.next_stop_check = now + STOP_POLL_S
            return True
        return False

    def progress_due(self, now: float) -> bool:
        if now >= self.next_progress:
            self.next_progress = now + self.progress_every
            return True
        return False


def _timed_out(timeout: float | None) -> str:
    return f"timed out after {float(timeout)} s"


def command_run(
    command: Command,
    *,
    timeout: float | None,
    output_limit: int,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    progress_every: float = 1.0,
    kill_grace: float | None = None,
) -> Attempt:
    """Run one attempt of ``command``; returns its ``Attempt``. Never raises for the command's own failures (a
    program not found, a refused connection, a script error are ``failed`` attempts).

    ``timeout``: wall-clock seconds at most (None: none); past it the attempt is stopped and ``timeout``.
    ``output_limit``: bytes kept of each of stdout and stderr (memory stays bounded whatever the command prints).
    ``on_progress(Progress)``: called once at the start (with the pid) and about every ``progress_every`` s.
    ``should_stop()``: asked about every 0.25 s; a reason string (``"killed by alice"``) stops the attempt, which is
    ``killed`` with that reason as ``error``. ``kill_grace``: seconds between SIGTERM and SIGKILL of a stopped shell
    command's process group (default ``settings.HUBSCHED_JOBS_KILL_GRACE_S``).
    An exception raised by ``on_progress`` or ``should_stop`` stops the command (SIGKILL for shell) and propagates.
    """
    if kill_grace is None:
        kill_grace = float(getattr(settings, "HUBSCHED_JOBS_KILL_GRACE_S", 5.0))
    clock = _Clock(timeout, progress_every)
    if command.kind == "shell":
        return _shell_run(command, timeout=timeout, output_limit=output_limit, on_progress=on_progress,
                          should_stop=should_stop, clock=clock, kill_grace=kill_grace)
    if command.kind == "http":
        return _http_run(command, timeout=timeout, output_limit=output_limit, on_progress=on_progress,
                         should_stop=should_stop, clock=clock)
    if command.kind == "script":
        return _script_run(command, timeout=timeout, output_limit=output_limit, on_progress=on_progress,
                           should_stop=should_stop, clock=clock)
    return Attempt(status="failed", error=f"unknown command kind {command.kind!r}: expected shell, http or script")


# --- shell ------------------------------------------------------------------------------------------------------

def shell_working_directory(working_directory: str) -> Path:
    """The directory a shell job runs in: ``working_directory`` when absolute, else below ``HUBSCHED_JOBS_DIR``
    (empty: that directory itself); made when missing. Raises OSError when it cannot be made."""
    base = Path(settings.HUBSCHED_JOBS_DIR)
    path = Path(working_directory) if working_directory else base
    if not path.is_absolute():
        path = base / path
    path.mkdir(parents=True, exist_ok=True)
    return path


def shell_environment(*, cwd: Path, environment: dict) -> dict[str, str]:
    """PATH (``/usr/local/bin:/usr/bin:/bin`` unless the job sets it), LANG=C.UTF-8, HOME=the working directory,
    then the job's variables: nothing of the worker's own environment."""
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": str(cwd)}
    env.update({str(k): str(v) for k, v in (environment or {}).items()})
    return env


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _leader_exited(pid: int) -> bool:
    """Whether the group leader has exited, WITHOUT reaping it: while it is an unreaped zombie its pid (= the
    group id) cannot be reused, so a killpg() sent now cannot reach someone else's processes."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _shell_run(command: Command, *, timeout, output_limit, on_progress, should_stop, clock, kill_grace) -> Attempt:
    if not getattr(settings, "HUBSCHED_JOBS_SHELL", True):
        return Attempt(status="failed", error=SHELL_OFF)
    argv = list(command.argv)
    if not argv or not argv[0]:
        return Attempt(status="failed", error="no program to run: the argument vector is empty")
    try:
        cwd = shell_working_directory(command.working_directory)
    except OSError as exc:
        return Attempt(status="failed", error=f"cannot use the working directory {command.working_directory!r}: "
                                               f"{exc.strerror or exc}")
    env = shell_environment(cwd=cwd, environment=command.environment)
    try:
        proc = subprocess.Popen(argv, shell=False, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        return Attempt(status="failed", error=f"program not found: {argv[0]!r} (PATH={env['PATH']})")
    except PermissionError:
        return Attempt(status="failed", error=f"program not executable: {argv[0]!r}")
    except OSError as exc:
        return Attempt(status="failed", error=f"cannot start {argv[0]!r}: {exc.strerror or exc}")

    pgid = proc.pid  # start_new_session: the program leads a new session and process group of its own
    out, err = _Tail(output_limit), _Tail(output_limit)
    tails = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    sel = selectors.DefaultSelector()
    for fd in tails:
        sel.register(fd, selectors.EVENT_READ)

    def progress() -> Progress:
        return Progress(pid=proc.pid, stdout=out.text(), stderr=err.text(), stdout_bytes=out.total,
                        stderr_bytes=err.total)

    stop: tuple[str, str] | None = None  # (status, error) once a stop began
    term_at = 0.0
    sigkilled = False
    exited_at: float | None = None
    try:
        if on_progress:
            on_progress(progress())
        while True:
            for key, _ in sel.select(timeout=0.05):
                chunk = os.read(key.fd, READ_CHUNK)
                if chunk:
                    tails[key.fd].write(chunk)
                else:
                    sel.unregister(key.fd)
            now = time.monotonic()
            if exited_at is None and _leader_exited(proc.pid):
                # the program is done: whatever it left in its group goes too (as systemd's KillMode=control-group)
                _killpg(pgid, signal.SIGKILL)
                exited_at = now
            if exited_at is not None:
                if not sel.get_map() or now - exited_at >= DRAIN_S:
                    break
                continue
            if stop is None:
                if clock.timed_out(now):
                    stop = ("timeout", _timed_out(timeout))
                elif should_stop and clock.stop_check_due(now):
                    reason = should_stop()
                    if reason:
                        stop = ("killed", str(reason))
                if stop is not None:
                    _killpg(pgid, signal.SIGTERM)
                    term_at = now
            elif not sigkilled and now - term_at >= kill_grace:
                _killpg(pgid, signal.SIGKILL)
                sigkilled = True
            if on_progress and clock.progress_due(now):
                on_progress(progress())
    except BaseException:
        if not _leader_exited(proc.pid):
            _killpg(pgid, signal.SIGKILL)
        raise
    finally:
        sel.close()
        returncode = proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    attempt = Attempt(status="ok", exit_code=returncode, stdout=out.text(), stderr=err.text(),
                      stdout_bytes=out.total, stderr_bytes=err.total, pid=proc.pid)
    if stop is not None:
        attempt.status, attempt.error = stop
    elif returncode < 0:
        attempt.status, attempt.error = "failed", f"killed by signal {_signal_name(-returncode)}"
    elif returncode > 0:
        attempt.status, attempt.error = "failed", f"exit code {returncode}"
    return attempt


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


# --- http -------------------------------------------------------------------------------------------------------

def url_masked(url: str) -> str:
    """``url`` with its user information (``user:password@``) replaced by ``***@``: safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an invalid URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def _text_masked(text: str, url: str) -> str:
    text = text.replace(url, url_masked(url))
    try:
        parts = urlsplit(url)
        secrets = [s for s in (parts.password, parts.username) if s]
    except ValueError:
        secrets = []
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _status_text(status: int, reason: str) -> str:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    return f"HTTP {status} {reason}".rstrip()


def _session_tracking(connections: list):
    """A ``requests.Session`` whose HTTP(S) connections are appended to ``connections`` as they connect, so that a
    stop can shut their sockets from another thread (urllib3's documented ``ConnectionCls`` and
    ``PoolManager.pool_classes_by_scheme`` hooks; a proxied request uses another manager and is not tracked)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Connection(HTTPConnection):
        def connect(self) -> None:
            connections.append(self)
            super().connect()

    class SecureConnection(HTTPSConnection):
        def connect(self) -> None:
            connections.append(self)
            super().connect()

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class SecurePool(HTTPSConnectionPool):
        ConnectionCls = SecureConnection

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": SecurePool}

    session = requests.Session()
    session.mount("http://", Adapter())
    session.mount("https://", Adapter())
    return session


def _sockets_shut(connections: list) -> None:
    import socket

    for connection in list(connections):
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile


def _request_error(exc: BaseException) -> str:
    """The words of a requests error: urllib3's innermost reason (``Failed to establish a new connection: [Errno
    111] Connection refused``) without the pool's repr around it."""
    inner = exc.args[0] if getattr(exc, "args", None) else None
    reason = getattr(inner, "reason", None)
    text = str(reason if reason is not None else exc) or type(exc).__name__
    return re.sub(r"^\S*HTTPS?Connection(Pool)?\([^)]*\): ", "", text)


def _http_run(command: Command, *, timeout, output_limit, on_progress, should_stop, clock) -> Attempt:
    """The request runs in a daemon thread while this one watches the deadline and ``should_stop``. A stop shuts
    down the sockets the attempt's session connected (``_session_tracking``), which ends a request waiting for its
    response or reading its body, then closes the session. A request still connecting (or sent through a proxy)
    cannot be interrupted so: its thread is left to end by itself, at the latest after ``timeout`` seconds
    (requests' own socket timeout), its result discarded."""
    import requests

    try:
        codes = success_codes_parse(command.success_codes or SUCCESS_CODES_DEFAULT)
    except ValueError as exc:
        return Attempt(status="failed", error=f"success codes: {exc}")
    connections: list = []
    session = _session_tracking(connections)
    body = _Tail(0)
    kept = bytearray()  # the FIRST output_limit bytes of the body
    state: dict[str, Any] = {}
    done = threading.Event()

    def request() -> None:
        try:
            response = session.request(
                command.method or "POST", command.url, headers=dict(command.headers or {}),
                json=command.body if command.body is not None else None, timeout=timeout, stream=True,
            )
            state["response"] = response
            with response:
                for chunk in response.iter_content(READ_CHUNK):
                    if done.is_set():
                        return
                    room = output_limit - len(kept)
                    if room > 0:
                        kept.extend(chunk[:room])
                    body.total += len(chunk)
            state["status"] = response.status_code
            state["reason"] = response.reason or ""
        except BaseException as exc:  # noqa: BLE001 -- reported as the attempt's error
            state["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=request, name="job-http", daemon=True)
    stop: tuple[str, str] | None = None
    try:
        if on_progress:
            on_progress(Progress(pid=None))
        thread.start()
        while not done.wait(0.05):
            now = time.monotonic()
            if clock.timed_out(now):
                stop = ("timeout", _timed_out(timeout))
            elif should_stop and clock.stop_check_due(now):
                reason = should_stop()
                if reason:
                    stop = ("killed", str(reason))
            if stop is not None:
                break
            if on_progress and clock.progress_due(now):
                on_progress(Progress(pid=None, stdout=bytes(kept).decode("utf-8", "replace"), stdout_bytes=body.total))
    finally:
        if not done.is_set():
            done.set()  # the thread drops whatever it reads later
            _sockets_shut(connections)
            thread.join(1.0)
        session.close()

    attempt = Attempt(status="ok", stdout=bytes(kept).decode("utf-8", errors="replace"), stdout_bytes=body.total)
    if stop is not None:
        attempt.status, attempt.error = stop
        return attempt
    error = state.get("error")
    if error is not None:
        if isinstance(error, requests.Timeout):
            attempt.status, attempt.error = "timeout", _timed_out(timeout)
        else:
            attempt.status = "failed"
            attempt.error = _text_masked(f"request to {command.url} failed: {_request_error(error)}", command.url)
        return attempt
    status = int(state["status"])
    attempt.http_status = status
    if not any(lo <= status <= hi for lo, hi in codes):
        attempt.status, attempt.error = "failed", _status_text(status, state.get("reason", ""))
    return attempt


# --- script -----------------------------------------------------------------------------------------------------

def _script_run(command: Command, *, timeout, output_limit, on_progress, should_stop, clock) -> Attempt:
    """The script runs in a thread (``script_execute`` blocks); a stop calls ``sandbox_kill`` until the run ends
    (the run is registered under its token a moment after the thread starts, so the first call may find nothing)."""
    from scripts_engine.sandbox import ScriptError, sandbox_kill, script_execute

    token = object()
    state: dict[str, Any] = {}

    def run() -> None:
        try:
            state["result"] = script_execute(
                code=command.code, bindings={}, timeout=command.script_timeout, memory_limit_mb=command.memory_limit_mb,
                data_sources=command.data_sources or {}, wall_s=timeout, token=token,
            )
        except BaseException as exc:  # noqa: BLE001 -- reported as the attempt's error
            state["error"] = exc

    thread = threading.Thread(target=run, name="job-script", daemon=True)
    stop: tuple[str, str] | None = None
    try:
        if on_progress:
            on_progress(Progress(pid=None))
        thread.start()
        while thread.is_alive():
            thread.join(0.05)
            now = time.monotonic()
            if stop is None:
                # past the wall limit script_execute ends by itself (wall_s); this is a backstop
                if clock.deadline is not None and now >= clock.deadline + 1.0:
                    stop = ("timeout", _timed_out(timeout))
                elif should_stop and clock.stop_check_due(now):
                    reason = should_stop()
                    if reason:
                        stop = ("killed", str(reason))
            if stop is not None:
                sandbox_kill(token)
            if on_progress and clock.progress_due(now):
                on_progress(Progress(pid=None))
    except BaseException:
        while thread.is_alive():
            sandbox_kill(token)
            thread.join(0.05)
        raise

    out = _Tail(output_limit)
    error = state.get("error")
    if error is None and "result" in state:
        out.write(state["result"].output.encode("utf-8"))
        return Attempt(status="ok", stdout=out.text(), stdout_bytes=out.total)
    if isinstance(error, ScriptError):
        out.write((error.output or "").encode("utf-8"))
        attempt = Attempt(status="failed", error=str(error), stdout=out.text(), stdout_bytes=out.total)
        if stop is not None:
            attempt.status, attempt.error = stop
        elif error.kind == "timeout":
            attempt.status = "timeout"
        elif error.kind == "killed":
            attempt.status = "killed"
        return attempt
    if stop is not None:
        return Attempt(status=stop[0], error=stop[1])
    return Attempt(status="failed", error=f"the sandbox failed: {type(error).__name__}: {error}")


__all__ = ["Attempt", "Command", "Progress", "command_run", "shell_environment", "shell_working_directory", "url_masked"]
