"""Replay of the log's streams over HTTP as Server-Sent Events (issue 12, item 5): the replay itself, served by
``GET /api/v1/streams/{name}`` (streams/api.py: the request, its checks and errors; ``/api/streams/<name>`` is
its alias for one release).

Once the 200 is sent, a log failure ends the stream (logged); the client reconnects after ``retry`` with
its ``Last-Event-ID``. docs/streams.md, "Replay over HTTP", is the user's side.

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

from django.http import StreamingHttpResponse

from streams.log import EXECUTIONS, Log, LogError, Reader, Record, Start, consumer_name_check, log

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


def last_event_id_parse(value: str | None) -> int | None:
    """The ``Last-Event-ID`` header as an offset (None when absent or empty, as EventSource sends it).
    Raises LogError (permanent) for anything else than an offset."""
    value = (value or "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise LogError(f"Last-Event-ID {value[:50]!r}: expected the id of an event of this stream (an offset)",
                       permanent=True)
    return int(value)


def consumer_check(value: str | None) -> str | None:
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


async def replay_respond(*, name: str, requested: Start, last_event_id: int | None, consumer: str | None,
                         user: str) -> StreamingHttpResponse:
    """Open a replay of stream ``name`` (where: ``replay_start``) for ``user`` (a user name, for monitoring)
    and answer it as ``text/event-stream``; the answer's iterator owns the reader. Raises LogError when the log
    cannot be opened (nothing is left open then). Call it holding no database connection: a replay may run
    for hours."""

    def open_() -> _Replay:
        source = log()
        start = replay_start(source=source, stream=name, requested=requested, last_event_id=last_event_id,
                             consumer=consumer)
        return _Replay(source=source, reader=source.reader(name, start), stream=name, start=start,
                       consumer=consumer, user=user)

    replay = await _in_thread_closing(open_, _Replay.close)
    response = StreamingHttpResponse(replay, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a reverse proxy (nginx) passes each event on at once
    return response
