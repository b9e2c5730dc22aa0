"""The worker's side of the sandbox: a small pool of long-lived sandbox processes, and the pipe protocol to them.

Why processes: a script must be stoppable for real. Each sandbox process runs one script at a
time under a CPU timer, RLIMIT_CPU and RLIMIT_AS (runtime.py); the worker keeps a wall-clock
deadline too and kills a process that passes it. A killed, crashed or exhausted process is
replaced; the worker and the other scripts carry on. Thread-safe: each run checks a process out.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .errors import ScriptError

_HEADER = struct.Struct(">I")
_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = f"import sys; sys.path.insert(0, {_ROOT!r}); from scripts_engine.sandbox.child import main; main()"
# Extra wall-clock time a run gets beyond its CPU limit (SQL waits, a loaded machine) before it is killed.
WALL_GRACE_S = 1.0
MAX_REPLY_BYTES = 64 * 1024 * 1024


def pool_size_default() -> int:
    """Sandbox processes per worker process: settings.HUBSCHED_SANDBOX_PROCESSES, or the CPU count (at least 2)."""
    from django.conf import settings

    return settings.HUBSCHED_SANDBOX_PROCESSES or max(2, os.cpu_count() or 2)


def wall_deadline_s(timeout: float) -> float:
    """Wall-clock seconds a run may take before its process is killed: twice the CPU limit, and at least one more second."""
    return timeout + max(timeout, WALL_GRACE_S)


class _Gone(Exception):
    """The sandbox process ended or was killed; ``kind`` says what to report."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class SandboxProcess:
    """One sandbox child and its pipe."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "LC_ALL", "TZ", "HOME"}}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C in the worker's terminal is the worker's business, not the child's
        )
        self.rfd = self.proc.stdout.fileno()
        self.wfd = self.proc.stdin.fileno()
        self.buffer = bytearray()
        self.alive = True
        self.killed_on_request = False  # set by SandboxPool.kill (another thread) before its SIGKILL

    def send(self, message: dict) -> None:
        payload = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")
        data = memoryview(_HEADER.pack(len(payload)) + payload)
        try:
            while data:
                data = data[os.write(self.wfd, data):]
        except (BrokenPipeError, OSError):
            raise self._ended() from None

    def receive(self, deadline: float | None) -> dict:
        while True:
            if len(self.buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self.buffer)
                if size > MAX_REPLY_BYTES:
                    self.kill()
                    raise _Gone("output", "the script's result is too large to return")
                if len(self.buffer) >= _HEADER.size + size:
                    payload = bytes(self.buffer[_HEADER.size:_HEADER.size + size])
                    del self.buffer[:_HEADER.size + size]
                    return json.loads(payload)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self.kill()
                raise _Gone("timeout", "stopped: the script ran past its time limit and its sandbox process was killed")
            ready, _, _ = select.select([self.rfd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise self._ended()
            self.buffer += chunk

    def _ended(self) -> _Gone:
        self.alive = False
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        if code == -signal.SIGKILL and self.killed_on_request:
            return _Gone("killed", "stopped: the execution was killed on request (its sandbox process got SIGKILL)")
        if code == -signal.SIGXCPU:
            return _Gone("timeout", "stopped: the script used its CPU time limit (its sandbox process was ended)")
        if code == -signal.SIGKILL:
            return _Gone("memory", "stopped: the sandbox process was killed, most likely out of memory")
        return _Gone("internal", f"the sandbox process ended unexpectedly (exit status {code})")

    def kill(self) -> None:
        self.alive = False
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.close()

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def stop(self) -> None:
        """End politely (at shutdown); kill when it does not listen."""
        if self.alive:
            try:
                self.send({"op": "exit"})
                self.proc.wait(timeout=1)
            except (_Gone, subprocess.TimeoutExpired):
                pass
        self.kill()


class SandboxPool:
    """Up to ``size`` sandbox processes, started on demand, each running one script at a time."""

    def __init__(self, size: int | None = None):
        self.size = size or pool_size_default()
        self._idle: queue.LifoQueue[SandboxProcess] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._count = 0
        self._pid = os.getpid()
        self._running: dict[object, SandboxProcess] = {}  # run token -> the process running it (kill)

    def _checkout(self) -> SandboxProcess:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._count < self.size:
                self._count += 1
                try:
                    return SandboxProcess()
                except BaseException:
                    self._count -= 1
                    raise
        return self._idle.get()

    def _checkin(self, child: SandboxProcess) -> None:
        if child.alive:
            self._idle.put(child)
            return
        # The slot is free again; fill it now so that a thread waiting in _checkout wakes up.
        with self._lock:
            self._count -= 1
            if self._count >= self.size:
                return
            self._count += 1
        try:
            self._idle.put(SandboxProcess())
        except BaseException:
            with self._lock:
                self._count -= 1
            raise

    def run(self, request: dict, *, wall_s: float, on_stop: Callable[[dict], str] | None = None,
            token: object = None) -> dict:
        """Send ``request`` to a free process and return its result frame; raises ScriptError for a killed run.

        ``token`` (hashable, e.g. an execution's identity) names the run for ``kill`` while it runs."""
        child = self._checkout()
        try:
            if child.proc.poll() is not None:
                child.alive = False
                child.close()
                child = SandboxProcess()
            if token is not None:
                with self._lock:
                    self._running[token] = child
            child.send(request)
            deadline = time.monotonic() + wall_s
            while True:
                reply = child.receive(deadline)
                if reply.get("op") == "stop" and on_stop is not None:
                    action = on_stop(reply["stop"])
                    child.send({"action": action})
                    deadline = time.monotonic() + wall_s  # the time a person spent looking is not the script's
                    continue
                if reply.get("replace"):
                    child.stop()
                return reply
        except _Gone as gone:
            raise ScriptError(gone.kind, gone.message) from None
        finally:
            if token is not None:
                with self._lock:
                    self._running.pop(token, None)
            self._checkin(child)

    def kill(self, token: object) -> int | None:
        """SIGKILL the process running the run named ``token``; returns its pid, or None when no such run runs.

        Thread-safe. Only the signal is sent here: the thread in ``run`` sees the pipe end, reaps the process,
        raises ScriptError kind ``killed`` and puts a new process in its slot."""
        with self._lock:
            child = self._running.get(token)
            if child is None:
                return None
            child.killed_on_request = True
            pid = child.proc.pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # it ended meanwhile: the run thread reports what it saw
        return pid

    def close(self) -> None:
        while True:
            try:
                child = self._idle.get_nowait()
            except queue.Empty:
                break
            child.stop()
            with self._lock:
                self._count -= 1


# Not hubsched.per_process.PerProcess: the sandbox processes import this package too, and importing
# hubsched would load Celery into every one of them (143 modules -> 422, 0.1 s -> 0.24 s at start).
_pool: SandboxPool | None = None
_pool_lock = threading.Lock()


def sandbox_pool() -> SandboxPool:
    """The process-wide pool (one per worker process; a forked process starts its own)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._pid != os.getpid():
            _pool = SandboxPool()
        return _pool


def sandbox_kill(token: object) -> int | None:
    """SIGKILL the sandbox process of this process's run named ``token`` (``script_execute(token=...)``); returns
    its pid, or None when none runs."""
    with _pool_lock:
        pool = _pool if _pool is not None and _pool._pid == os.getpid() else None
    return pool.kill(token) if pool is not None else None


def sandbox_pool_close() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None and _pool._pid == os.getpid():
            _pool.close()
        _pool = None


def _forget_after_fork() -> None:
    # The parent's sandbox processes and pipes are the parent's; the child process starts its own pool.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
