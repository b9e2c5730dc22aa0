"""Replay of the log's streams over HTTP as Server-Sent Events (issue 12, item 5): ``GET /api/streams/<name>``.

JSON errors ``{"errors": [...]}`` like the rest of the API: 401 for an anonymous caller, 403 naming the
permission missing (``streams.read_stream``; the viewer role and up hold it, hubsched/roles.py), 404 for
a stream that is not replayable, 400 for a bad ``from``, ``consumer`` or ``Last-Event-ID``, 503 when the
log cannot be opened. Once the 200 is sent, a log failure ends the stream (logged); the client
reconnects after ``retry`` with its ``Last-Event-ID``. docs/streams.md, "Replay over HTTP", is the
user's side.

Served by uvicorn (ASGI): the response is an *async* iterator (Django's ASGI handler would read a sync one
whole into a list), and every blocking call on the log runs in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from hubsched.roles import permissions_missing
from streams.log import EXECUTIONS, Log, LogError, Reader, Record, Start, consumer_name_check, log, start_parse

logger = logging.getLogger(__name__)

# The streams that may be read over HTTP, with what a record of each holds. Add a stream here to serve it.
STREAMS: dict[str, str] = {
    EXECUTIONS: "one record per execution: its outcome and values (streams.codec, format version 1)",
}

READ_PERMISSION = "streams.read_stream"
# HTTP consumers' offsets live beside hubsched's own consumers in the log: the prefix keeps them apart
CONSUMER_PREFIX = "http."
CONSUMER_MAX = 200 - len(CONSUMER_PREFIX)  # streams.log.CONSUMER_NAME takes 200 characters in all
CHUNK_RECORDS = 100  # records per read and per write: about 1 MB of 100-value executions (9.4 kB each)
POLL_S = 0.1  # how often an idle replay asks the log for new records (no worker thread is held between)
KEEPALIVE_S = 15.0  # a comment line after this much silence: proxies and clients keep the connection open
RETRY_MS = 5000  # SSE ``retry:``: how long a browser's EventSource waits before it reconnects

T = TypeVar("T")


class ReplayInfo(NamedTuple):
    """An open replay of this process (``replays_open``): the ``stream``; the ``consumer`` name as the
    client gave it (None when unnamed); the ``user`` name; where it started (``start``, as in ``from=``);
    ``position``, the offset of the last record written to the client (None before the first)."""

    stream: str
    consumer: str | None
    user: str
    start: str
    position: int | None


_open: set[_Replay] = set()  # every replay of this process between its opening and its close()
_open_lock = threading.Lock()


def replays_open() -> list[ReplayInfo]:
    """The replays this process serves now (for monitoring; a forked child starts with none of its own)."""
    with _open_lock:
        return [replay.info() for replay in _open]


class _Replay:
    """One client's replay: an async iterator of SSE bytes (``__aiter__``) over a Reader it owns.

    ``close()`` (idempotent, blocking: call it from a thread) closes the Reader. Django calls it as the
    response's resource closer; the iterator also calls it when it ends, is closed or is cancelled (Django
    5.2 cancels the response task when the client disconnects). A read in progress finishes first
    (``_lock``): a Reader is for one thread at a time.
    """

    def __init__(self, *, source: Log, reader: Reader, stream: str, start: Start, consumer: str | None,
                 user: str) -> None:
        self._log, self._reader, self.stream, self.start = source, reader, stream, start
        self.consumer, self.user = consumer, user
        self.position: int | None = None
        self._lock = threading.Lock()
        self._closed = False
        with _open_lock:
            _open.add(self)

    def info(self) -> ReplayInfo:
        return ReplayInfo(self.stream, self.consumer, self.user, str(self.start), self.position)

    def _read(self) -> list[Record]:
        with self._lock:
            if self._closed:
                return []
            # timeout=0: the wait between polls is an asyncio.sleep, so an idle client holds no worker thread
            return self._reader.read(max_records=CHUNK_RECORDS, timeout=0)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._reader.close()
            finally:
                with _open_lock:
                    _open.discard(self)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        """``retry:``, then each chunk of records as SSE events; a keep-alive comment after KEEPALIVE_S of
        silence. A named consumer's offset is stored after each chunk has been written (at least once)."""
        stored_name = None if self.consumer is None else CONSUMER_PREFIX + self.consumer
        try:
            yield b"retry: %d\n\n" % RETRY_MS
            quiet_since = time.monotonic()
            while not self._closed:
                records = await asyncio.to_thread(self._read)
                if not records:
                    if time.monotonic() - quiet_since >= KEEPALIVE_S:
                        yield b": keep-alive\n\n"
                        quiet_since = time.monotonic()
                    await asyncio.sleep(POLL_S)
                    continue
                # Django's handler asks for the next part only once it has sent this one to the server:
                # what follows the yield runs after the chunk was handed to the connection
                yield sse_events(records)
                quiet_since = time.monotonic()
                self.position = records[-1].offset
                if stored_name is not None:
                    await asyncio.to_thread(self._log.consumer_offset_store, self.stream, stored_name,
                                            records[-1].offset)
        except LogError as exc:
            logger.warning("replay of %s (consumer %s, user %s) ended: %s", self.stream, self.consumer, self.user,
                           exc.message)
        finally:
            await asyncio.to_thread(self.close)


def sse_events(records: Sequence[Record]) -> bytes:
    """``records`` as Server-Sent Events (HTML Living Standard, "Server-sent events"): per record
    ``id: <offset>``, one ``data:`` line per line of the body, and a blank line.

    Bodies are one-line UTF-8 JSON (streams.codec); one holding line breaks (CR, LF or CRLF, the SSE line
    ends) is sent as several ``data:`` lines, which a client joins with LF: a CR or CRLF comes back as LF,
    a final line break is dropped (JSON reads the same). The bytes are sent as they are: an SSE client
    decodes UTF-8 and replaces what is not."""
    out = bytearray()
    for record in records:
        out += b"id: %d\n" % record.offset
        for line in record.body.splitlines() or [b""]:  # bytes.splitlines splits at exactly CR, LF and CRLF
            out += b"data: " + line + b"\n"
        out += b"\n"
    return bytes(out)


def _last_event_id(value: str | None) -> int | None:
    """The ``Last-Event-ID`` header as an offset (None when absent or empty, as EventSource sends it).
    Raises LogError (permanent) for anything else than an offset."""
    value = (value or "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise LogError(f"Last-Event-ID {value[:50]!r}: expected the id of an event of this stream (an offset)",
                       permanent=True)
    return int(value)


def _consumer(value: str | None) -> str | None:
    """The ``consumer`` parameter, checked (None when absent). Raises LogError (permanent)."""
    if value is None:
        return None
    consumer_name_check(value)
    if len(value) > CONSUMER_MAX:
        raise LogError(f"consumer name {value[:50]!r}...: at most {CONSUMER_MAX} characters", permanent=True)
    return value


def replay_start(*, source: Log, stream: str, requested: Start, last_event_id: int | None,
                 consumer: str | None) -> Start:
    """Where a replay starts: after ``last_event_id`` when the client sent one (it says what it has); else
    after the offset ``consumer`` stored (``http.<consumer>`` in the log's consumer offsets); else
    ``requested`` (``from=``). Blocking; raises LogError."""
    if last_event_id is not None:
        return Start.at(last_event_id + 1)
    if consumer is not None:
        stored = source.consumer_offset(stream, CONSUMER_PREFIX + consumer)
        if stored is not None:
            return Start.at(stored + 1)
    return requested


async def _in_thread_closing(open_: Callable[[], T], close: Callable[[T], None]) -> T:
    """``open_()`` in a worker thread. When the caller is cancelled meanwhile (the client went away while
    the view waited), what ``open_`` returns is closed instead of leaking (a RabbitMQ reader holds a
    connection)."""
    task = asyncio.ensure_future(asyncio.to_thread(open_))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        def close_later(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is None:
                done.get_loop().run_in_executor(None, close, done.result())

        task.add_done_callback(close_later)
        raise


async def _caller(request):
    """Who asks: the session login (Django's auth middleware), for now. API tokens (issue 15) resolve
    their header to a user here, before the session; the permission check below stays as it is."""
    return await request.auser()


async def _refused(user) -> JsonResponse | None:
    """The 401/403 answer when ``user`` may not read streams, else None (texts as hubs/views.py)."""
    if not user.is_authenticated:
        return JsonResponse({"errors": ["authentication required: log in to the admin first"]}, status=401)
    missing = await sync_to_async(permissions_missing)(user, READ_PERMISSION)
    if missing:
        return JsonResponse({"errors": [f"permission required: {perm}" for perm in missing]}, status=403)
    return None


@require_GET
async def api_stream_replay(request, name: str):
    """``GET /api/streams/<name>?from=first|last|next|offset:N|time:<ISO 8601>[&consumer=NAME]``: the
    stream's records as Server-Sent Events (``text/event-stream``), for as long as the client stays.

    Each record is one event: ``id:`` its offset, ``data:`` its body as it is (``sse_events``). The stream
    opens with ``retry: 5000``; a ``: keep-alive`` comment follows every 15 s of silence. Records are read
    and written CHUNK_RECORDS at a time, never the backlog at once.

    Where it starts (``replay_start``): after the ``Last-Event-ID`` header when sent (it overrides ``from``
    and a stored offset); else, for a named ``consumer``, after the offset it last stored; else at ``from``
    (default ``next``: only what is appended from now).

    ``consumer=NAME`` (streams.log.CONSUMER_NAME, at most 195 characters) makes the replay a durable
    consumer: after each chunk has been handed to the connection, its last offset is stored as
    ``http.NAME`` in the log's consumer offsets (never one of hubsched's own consumers). That is at least
    once: a replay that ends between the write and the store sends that chunk again next time. The server
    cannot see what the client read: records still in transit when a connection breaks count as delivered,
    so a client that must not miss one also sends ``Last-Event-ID`` (EventSource does on its reconnects).

    Needs a login with ``streams.read_stream``. 401/403/404/400/503 as the module docstring says.
    """
    user = await _caller(request)
    refused = await _refused(user)
    if refused:
        return refused
    if name not in STREAMS:
        known = ", ".join(sorted(STREAMS))
        return JsonResponse({"errors": [f"stream {name[:200]!r}: not replayable (streams: {known})"]}, status=404)
    try:
        requested = start_parse(request.GET.get("from", "next"))
        consumer = _consumer(request.GET.get("consumer"))
        last_event_id = _last_event_id(request.headers.get("Last-Event-ID"))
    except LogError as exc:
        return JsonResponse({"errors": [exc.message]}, status=400)
    # a replay may run for hours: it keeps no database connection from the login check
    await sync_to_async(connections.close_all)()

    def open_() -> _Replay:
        source = log()
        start = replay_start(source=source, stream=name, requested=requested, last_event_id=last_event_id,
                             consumer=consumer)
        return _Replay(source=source, reader=source.reader(name, start), stream=name, start=start,
                       consumer=consumer, user=user.get_username())

    try:
        replay = await _in_thread_closing(open_, _Replay.close)
    except LogError as exc:
        logger.warning("replay of %s refused: the log: %s", name, exc.message)
        return JsonResponse({"errors": [f"the log is not available: {exc.message}"]}, status=503)
    response = StreamingHttpResponse(replay, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a reverse proxy (nginx) passes each event on at once
    return response

