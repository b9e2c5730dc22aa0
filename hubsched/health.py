"""Whether this installation's systems answer: Django's database, the broker, the sinks and the leading beat (``/api/health``).

``health_check`` runs every check at once, each in a thread of its own, and waits at most ``timeout_s``
(2 s) for all of them together: a check still running then counts as failed ("timed out"). A check that
hangs (a host that drops packets holds a TCP connect for minutes) is never started a second time while it
still runs: the next call reports it timed out at once, so a load balancer polling every second piles up
no threads. Each check goes through the adapter of its system (Django's connection, the Celery app's
broker connection, ``scripts_engine.sinks.sink_engine``, ``groups.scheduler.leader.beat_leader``).

The answer is for anonymous callers (a load balancer, a container health check): it names no host, URL,
sink or user, only each check's outcome, its time and the kind of error (the exception's class name, or
"timed out"); the details go to the log, masked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT_S = 2.0  # the whole answer: every check together
CHECKS = ("database", "broker", "sinks", "beat")

_running: dict[str, threading.Thread] = {}  # a check's key -> its thread while it has not returned
_running_lock = threading.Lock()


class CheckFailed(Exception):
    """A check's own verdict (no exception of the system): its message is safe to show; ``extra`` goes with it."""

    def __init__(self, message: str, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.extra = extra or {}


def _database() -> dict[str, Any]:
    from django.db import connections

    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this thread's connection: the thread ends now
    return {}


def _broker(app) -> Callable[[], dict[str, Any]]:
    def check() -> dict[str, Any]:
        url = str(app.conf.broker_url or "")
        if url.startswith("filesystem://"):
            # kombu's filesystem transport "connects" to anything: what must hold is its folders
            options = app.conf.broker_transport_options or {}
            for key in ("data_folder_in", "processed_folder", "control_folder"):
                folder = options.get(key)
                if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                    raise CheckFailed(f"the broker's {key.replace('_', ' ')} is missing or not writable")
            return {}
        with app.connection_for_write(connect_timeout=TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=0)
            conn.default_channel  # noqa: B018 - Redis and AMQP answer only once a channel is opened
        return {}

    return check


def _sink(url: str, local_infile: bool) -> Callable[[], dict[str, Any]]:
    def check() -> dict[str, Any]:
        import sqlalchemy as sa

        from scripts_engine.sinks import sink_engine

        with sink_engine(url, local_infile=local_infile).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return {}

    return check


def _beat() -> dict[str, Any]:
    from groups.scheduler.leader import beat_leader

    if beat_leader() is None:
        raise CheckFailed("no beat leads")
    return {}


def _error_kind(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CheckFailed) else type(exc).__name__


def _start(key: str, fn: Callable[[], dict[str, Any]], result: dict, *, label: str | None = None) -> threading.Thread | None:
    """Run ``fn`` in a thread filling ``result`` (``ok``, ``ms``, ``error``); None when the last one still runs."""
    with _running_lock:
        busy = _running.get(key)
        if busy is not None and busy.is_alive():
            return None

        def run() -> None:
            started = time.perf_counter()
            try:
                extra = fn() or {}
                result.update(ok=True, **extra)
            except BaseException as exc:  # noqa: BLE001 - a check's every failure is its answer
                from hubsched.secrets import text_mask

                result.update(ok=False, error=_error_kind(exc), **getattr(exc, "extra", {}))
                log.warning("health check %s failed: %s", label or key, text_mask(f"{type(exc).__name__}: {exc}"))
            finally:
                result["ms"] = round((time.perf_counter() - started) * 1000, 1)
                with _running_lock:
                    if _running.get(key) is threading.current_thread():
                        del _running[key]

        thread = threading.Thread(target=run, name=f"hubsched-health-{key}", daemon=True)
        _running[key] = thread
        thread.start()
        return thread


def _sinks(deadline: float) -> Callable[[], dict[str, Any]]:
    """Every enabled sink, and the default sink where a project has none, each tried in a thread of its own."""

    def check() -> dict[str, Any]:
        from django.db import connection

        from hubsched.secrets import url_mask

        from hubs.models import Project
        from scripts_engine.sinks import sink_targets_for_projects

        try:
            targets = sink_targets_for_projects(project_ids=set(Project.objects.values_list("pk", flat=True)))
        finally:
            connection.close()  # this thread's connection: the thread ends now
        keys = sorted({(t.url, t.local_infile) for found in targets.values() for t in found})
        t0 = time.monotonic()
        started = []
        for url, local_infile in keys:
            result: dict = {}
            # the key and the thread's name never hold the URL (its password): a digest of it
            key = "sink-" + hashlib.sha256(f"{url}|{local_infile}".encode()).hexdigest()[:12]
            started.append((result, _start(key, _sink(url, local_infile), result, label=f"sink {url_mask(url)}")))
        for _result, thread in started:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        shown = [_settled(result, (time.monotonic() - t0) * 1000) for result, _thread in started]
        failed = [r for r in shown if not r["ok"]]
        out = {"total": len(shown), "failed": len(failed)}
        if failed:
            raise CheckFailed(", ".join(sorted({r["error"] for r in failed})), out)
        return out

    return check


def _settled(result: dict, budget_ms: float) -> dict:
    """A copy of a check's ``result`` (its thread may still write into it), or "timed out" while it has none."""
    done = dict(result)
    if "ok" not in done or "ms" not in done:
        return {"ok": False, "ms": round(budget_ms, 1), "error": "timed out"}
    return done


def health_check(*, timeout_s: float = TIMEOUT_S, app=None) -> dict[str, Any]:
    """``{"status": "ok"|"fail", "checks": {"database": {"ok": bool, "ms": float, "error"?: str}, "broker": ...,
    "sinks": {"ok", "ms", "total": N, "failed": N, "error"?}, "beat": ...}}``.

    ``status`` is ok when every check is; a check that has not returned within ``timeout_s`` (all checks
    together) is ``{"ok": false, "error": "timed out"}``. ``sinks`` counts the distinct sinks tried (every
    enabled sink, and the default sink ``HUBSCHED_SINK_URL`` where a project has none of its own). Never
    raises for a system that is down. ``app``: the Celery app whose broker to try (default the project's).
    """
    if app is None:
        from hubsched.celery import app
    started = time.monotonic()
    deadline = started + timeout_s
    # the sinks' own threads must be done a little before the whole answer is
    fns = {"database": _database, "broker": _broker(app), "sinks": _sinks(deadline - min(0.05, timeout_s / 10)),
           "beat": _beat}
    results: dict[str, dict] = {name: {} for name in CHECKS}
    threads = {name: _start(name, fns[name], results[name]) for name in CHECKS}
    for thread in threads.values():
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
    checks = {name: _settled(results[name], timeout_s * 1000) for name in CHECKS}
    return {"status": "ok" if all(c["ok"] for c in checks.values()) else "fail", "checks": checks}


def probe(url: str = "http://127.0.0.1:8000/api/health", *, timeout: float = 5.0) -> int:
    """A container health check's exit status: 0 when ``GET url`` answers 200, else 1 (503, refused, timed out).

    Sends the first name of ``ALLOWED_HOSTS`` (the environment's; a leading ``.`` dropped, ``*`` as localhost) as
    the Host, so that production's host check lets it through. Imports no Django: ``python -m hubsched.health``."""
    import urllib.error
    import urllib.request

    names = [n.strip() for n in os.environ.get("ALLOWED_HOSTS", "").split(",") if n.strip()]
    host = (names[0].lstrip(".") if names else "localhost") or "localhost"
    request = urllib.request.Request(url, headers={"Host": "localhost" if host == "*" else host})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own URL
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    import sys

    sys.exit(probe(*sys.argv[1:2]))
