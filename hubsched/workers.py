"""The Celery workers as Celery's own remote inspection sees them (the one adapter for ``app.control.inspect``).

``workers_inspect`` broadcasts ``stats``, ``active_queues`` and ``active`` at once (three threads, one
``timeout`` for all: each broadcast waits that long for replies, since it cannot know how many workers
exist) and merges the answers per worker. It works on every broker hubsched runs on: Redis, RabbitMQ, and
the embedded ``filesystem://`` broker through its control folder (``settings.CELERY_BROKER_TRANSPORT_OPTIONS``).
A worker that does not answer within the timeout is not listed; no worker answering is an empty list.

What is never shown: the broker section of ``stats`` (its URL and transport options may hold a password),
and a task's arguments other than its ``argsrepr`` (masked by ``hubsched.secrets.text_mask``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)

INSPECT_TIMEOUT_S = 1.0  # how long each broadcast waits for replies (a worker answers in milliseconds)
COMMANDS = ("stats", "active_queues", "active")


class WorkersError(Exception):
    """The broker could not be reached to broadcast the inspection (the message is masked)."""


def _iso(epoch_s: float | None) -> str | None:
    if not epoch_s:
        return None
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat().replace("+00:00", "Z")


def _broadcast(app, command: str, timeout: float, out: dict, errors: dict) -> None:
    try:
        inspect = app.control.inspect(timeout=timeout)
        out[command] = (inspect.active(safe=True) if command == "active" else getattr(inspect, command)()) or {}
        out[command + "@"] = time.time()
    except Exception as exc:  # noqa: BLE001 - any broker error ends up as one WorkersError
        errors[command] = exc


def workers_inspect(*, app=None, timeout: float = INSPECT_TIMEOUT_S) -> list[dict[str, Any]]:
    """The workers that answer within ``timeout`` seconds (0.1..5), sorted by name::

        [{"name": "celery@host", "host": "host", "pid": 123, "pool": "threads", "concurrency": 8,
          "prefetch_count": 32, "queues": ["celery"], "started_at": RFC 3339, "uptime_s": 65,
          "last_heartbeat": RFC 3339 (when it answered this inspection), "tasks_accepted": 1234,
          "active": [{"id", "name", "args" (argsrepr, masked), "started_at": RFC 3339, "worker_pid"}]}]

    ``app`` defaults to the project's Celery app. Raises WorkersError when the broker cannot be reached.
    """
    from hubsched.secrets import text_mask

    if app is None:
        from hubsched.celery import app
    timeout = min(5.0, max(0.1, float(timeout)))
    out: dict[str, Any] = {}
    errors: dict[str, Exception] = {}
    threads = [threading.Thread(target=_broadcast, args=(app, c, timeout, out, errors), daemon=True,
                                name=f"hubsched-inspect-{c}") for c in COMMANDS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5.0)  # a broker that hangs past its own timeouts: report what came
    if errors and not any(c in out for c in COMMANDS):
        first = next(iter(errors.values()))
        raise WorkersError(text_mask(f"the broker did not answer: {type(first).__name__}: {first}"))
    for command, exc in errors.items():
        log.warning("worker inspection %s failed: %s", command, text_mask(f"{type(exc).__name__}: {exc}"))
    stats, queues, active = out.get("stats", {}), out.get("active_queues", {}), out.get("active", {})
    workers = []
    for name in sorted(set(stats) | set(queues) | set(active)):
        st = stats.get(name) or {}
        pool = st.get("pool") or {}
        uptime = st.get("uptime")
        answered = out.get("stats@") if name in stats else out.get("active_queues@") or out.get("active@")
        impl = str(pool.get("implementation") or "")
        workers.append({
            "name": name,
            "host": name.split("@", 1)[1] if "@" in name else name,
            "pid": st.get("pid"),
            "pool": _pool_name(impl) if impl else None,
            "concurrency": pool.get("max-concurrency"),
            "prefetch_count": st.get("prefetch_count"),
            "queues": sorted(q.get("name", "") for q in (queues.get(name) or []) if isinstance(q, dict)),
            "started_at": _iso(answered - uptime) if answered and uptime is not None else None,
            "uptime_s": uptime,
            "last_heartbeat": _iso(answered),
            "tasks_accepted": sum((st.get("total") or {}).values()) if isinstance(st.get("total"), dict) else None,
            "active": [{"id": task.get("id"), "name": task.get("name"),
                        "args": text_mask(str(task.get("args") or ""))[:500],
                        "started_at": _iso(task.get("time_start")), "worker_pid": task.get("worker_pid")}
                       for task in (active.get(name) or []) if isinstance(task, dict)],
        })
    return workers


def _pool_name(implementation: str) -> str:
    """``celery.concurrency.thread:TaskPool`` as ``threads`` (the ``--pool`` name a person gave)."""
    module = implementation.split(":", 1)[0].rsplit(".", 1)[-1]
    return {"thread": "threads", "prefork": "prefork", "solo": "solo", "eventlet": "eventlet", "gevent": "gevent",
            "custom": "custom"}.get(module, module)
