"""A live tail of a job run's output as Server-Sent Events (``GET /api/v1/jobs/{id}/runs/{run_id}/tail``).

The worker writes the run's ``stdout``/``stderr`` (the LAST ``output_limit_kib`` KiB of each; an HTTP job keeps
the FIRST ones of its body) and the byte counts ``stdout_bytes``/``stderr_bytes`` (everything written) to the
row about once a second while it runs (jobs/execution.py). The tail reads the row every ``POLL_S`` and sends
what is new, computed from the byte counts; when more was written between two reads than the row keeps, an
event says how many bytes were skipped. Events::

    event: stdout            data: {"text": "...", "offset": 1024}    # offset: the text's first byte in the output
    event: stderr            data: {"text": "...", "offset": 0}
    event: skipped           data: {"stream": "stdout", "bytes": 70000}
    event: end               data: {"status": "ok", "exit_code": 0, "http_status": null, "error": "",
                                    "stdout_bytes": 1234, "stderr_bytes": 0}
    : keep-alive             (a comment after HEARTBEAT_S of silence)

``data`` is one line of JSON, so a CR or LF in the output never breaks an event. The stream ends after ``end``
(sent at once for a run that has already finished) or when the run row is gone (``end`` with status
``deleted``).

Served two ways, the same events: under ASGI (uvicorn) the iterator is asynchronous (Django's ASGI handler would
read a synchronous one whole before sending anything) and reads the row in a worker thread; under WSGI and
Django's test client it is a plain generator.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse

POLL_S = 0.5  # how often the row is read (the worker writes it about once a second)
HEARTBEAT_S = 15.0  # a comment line after this much silence: proxies and clients keep the connection open
RETRY_MS = 5000  # SSE ``retry:``: how long a browser's EventSource waits before it reconnects

_FIELDS = ("status", "stdout", "stderr", "stdout_bytes", "stderr_bytes", "exit_code", "http_status", "error")


def run_row_read(run_id: int) -> dict[str, Any] | None:
    """The fields of run ``run_id`` the tail needs, or None when it no longer exists."""
    from .models import JobRun

    return JobRun.objects.filter(pk=run_id).values(*_FIELDS).first()


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _from_boundary(data: bytes, start: int) -> bytes:
    """``data[start:]`` moved on past UTF-8 continuation bytes, so that it decodes from a character's start."""
    while start < len(data) and 0x80 <= data[start] <= 0xBF:
        start += 1
    return data[start:]


class Tail:
    """What has been sent of one run's two streams; ``step(row)`` answers the events a new read of the row makes,
    and whether the stream is over. ``head``: the row keeps the FIRST bytes of the output (an HTTP job's body),
    not the last."""

    def __init__(self, *, head: bool = False) -> None:
        self.head = head
        self.sent = {"stdout": 0, "stderr": 0}

    def _stream(self, name: str, text: str, total: int) -> bytes:
        stored = (text or "").encode("utf-8")
        sent = self.sent[name]
        if total <= sent:
            return b""
        out = b""
        if self.head:
            # the row keeps bytes [0, len(stored)); what lies past it is never stored
            new = _from_boundary(stored, sent) if sent < len(stored) else b""
            skipped = total - max(sent, len(stored))
            if new:
                out += event(name, {"text": new.decode("utf-8", "replace"), "offset": sent})
            if skipped > 0:
                out += event("skipped", {"stream": name, "bytes": skipped})
        else:
            first = max(0, total - len(stored))  # the row keeps bytes [first, total)
            if sent < first:
                out += event("skipped", {"stream": name, "bytes": first - sent})
                sent = first
            new = _from_boundary(stored, sent - first)
            if new:
                out += event(name, {"text": new.decode("utf-8", "replace"), "offset": total - len(new)})
        self.sent[name] = total
        return out

    def step(self, row: dict[str, Any] | None) -> tuple[bytes, bool]:
        from .models import JobRunStatus

        if row is None:
            return event("end", {"status": "deleted", "exit_code": None, "http_status": None,
                                 "error": "the run was deleted", "stdout_bytes": self.sent["stdout"],
                                 "stderr_bytes": self.sent["stderr"]}), True
        out = self._stream("stdout", row["stdout"], row["stdout_bytes"])
        out += self._stream("stderr", row["stderr"], row["stderr_bytes"])
        if row["status"] == JobRunStatus.RUNNING:
            return out, False
        return out + event("end", {"status": row["status"], "exit_code": row["exit_code"],
                                   "http_status": row["http_status"], "error": row["error"],
                                   "stdout_bytes": row["stdout_bytes"], "stderr_bytes": row["stderr_bytes"]}), True


def tail_events(run_id: int, *, head: bool = False, read: Callable[[int], dict | None] = run_row_read,
                sleep: Callable[[float], None] = time.sleep) -> Iterator[bytes]:
    """The tail of run ``run_id`` as SSE bytes, synchronously (WSGI, the test client)."""
    tail = Tail(head=head)
    yield b"retry: %d\n\n" % RETRY_MS
    quiet_since = time.monotonic()
    while True:
        out, done = tail.step(read(run_id))
        if out:
            yield out
            quiet_since = time.monotonic()
        if done:
            return
        if time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        sleep(POLL_S)


async def tail_events_async(run_id: int, *, head: bool = False) -> AsyncIterator[bytes]:
    """The same events for ASGI: the row is read in a thread (``sync_to_async``), the waits are asyncio's, so an
    idle tail holds no thread. A client that goes away cancels it (Django 5.2 cancels the response task)."""
    import asyncio

    from asgiref.sync import sync_to_async

    read = sync_to_async(run_row_read)
    tail = Tail(head=head)
    yield b"retry: %d\n\n" % RETRY_MS
    quiet_since = time.monotonic()
    while True:
        out, done = tail.step(await read(run_id))
        if out:
            yield out
            quiet_since = time.monotonic()
        if done:
            return
        if time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)


def tail_respond(request: HttpRequest, *, run_id: int, head: bool = False) -> StreamingHttpResponse:
    """``text/event-stream`` of run ``run_id``'s tail: an async iterator under ASGI, a generator otherwise.
    The caller has checked the permission and that the run exists."""
    from django.core.handlers.asgi import ASGIRequest

    if isinstance(request, ASGIRequest):
        content = tail_events_async(run_id, head=head)
    else:
        content = tail_events(run_id, head=head)
    response = StreamingHttpResponse(content, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a reverse proxy (nginx) passes each event on at once
    return response
