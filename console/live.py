"""A group's live values as Server-Sent Events (``GET /groups/<id>/live``), for the console's live table and trends.

Every ``POLL_S`` the stream reads which run of the group is the newest good one (one indexed query); when it is a
new one, it reads that run's values from the durable log (``groups.selectors.group_run_values``: the values as
stored, after the script) and sends them. Events::

    event: values   data: {"run": 17, "tick": "2026-12-03T12:00:01+00:00",
                           "values": [{"entity": "plant/line1/pump1", "key": "pressure", "value": 6.4,
                                       "ts": "2026-12-03T12:00:01.004Z", "quality": "good"}]}
    event: error    data: {"message": "the log cannot be read: ..."}      (then the stream goes on trying)
    : keep-alive    (a comment after HEARTBEAT_S of silence)

``data`` is one line of JSON. Served as jobs/sse.py serves a run's tail: an asynchronous iterator under ASGI
(uvicorn: the reads in a thread, the waits asyncio's, so an idle stream holds no thread), a generator under WSGI
and Django's test client. The stream lasts while the page is open; the browser's EventSource reconnects after
``RETRY_MS``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse

POLL_S = 1.0  # how often the newest run is looked up
HEARTBEAT_S = 15.0
RETRY_MS = 3000


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


def newest_values(group_id: int, seen: int | None) -> tuple[int | None, bytes]:
    """``(newest good run id, the event to send)``; no event when that run is ``seen`` or there is none."""
    from django.db import close_old_connections

    from groups.selectors import group_run_values, group_runs_list
    from streams.log import LogError

    close_old_connections()
    run = group_runs_list(group_id=group_id, status="ok").first()
    if run is None or run.pk == seen:
        return seen, b""
    try:
        stored = group_run_values(run=run)
    except LogError as exc:
        return seen, _event("error", {"message": f"the log cannot be read: {exc}"})
    values = [{"entity": entity, "key": item.get("key"), "value": item.get("value"), "ts": item.get("ts"),
               "quality": item.get("quality") or "good"}
              for entity, items in (stored or {}).get("values", []) for item in items]
    return run.pk, _event("values", {"run": run.pk, "tick": run.scheduled_for.isoformat(), "values": values})


def live_events(group_id: int, *, read: Callable = newest_values, sleep: Callable[[float], None] = time.sleep
                ) -> Iterator[bytes]:
    """The events synchronously (WSGI, the test client)."""
    yield b"retry: %d\n\n" % RETRY_MS
    seen, quiet_since = None, time.monotonic()
    while True:
        seen, out = read(group_id, seen)
        if out:
            yield out
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        sleep(POLL_S)


async def live_events_async(group_id: int) -> AsyncIterator[bytes]:
    """The same events under ASGI; a client that goes away cancels it (Django 5.2 cancels the response task)."""
    import asyncio

    from asgiref.sync import sync_to_async

    read = sync_to_async(newest_values)
    yield b"retry: %d\n\n" % RETRY_MS
    seen, quiet_since = None, time.monotonic()
    while True:
        seen, out = await read(group_id, seen)
        if out:
            yield out
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)


def live_respond(request: HttpRequest, *, group_id: int) -> StreamingHttpResponse:
    """``text/event-stream`` of the group's live values; the caller has checked the permissions."""
    from django.core.handlers.asgi import ASGIRequest

    content = live_events_async(group_id) if isinstance(request, ASGIRequest) else live_events(group_id)
    response = StreamingHttpResponse(content, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
