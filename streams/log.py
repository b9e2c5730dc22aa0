"""The durable log between acquisition and storage (issue 12): the contract every backend keeps.

A log holds named *streams*; a stream is an append-only sequence of *records* (opaque bytes; an
execution's values encoded by ``streams.codec``), each with an *offset* and a *timestamp*:

- ``append`` returns only once the records are durable (each backend says what that means:
  ``streams.backends.sqlite``, ``streams.backends.rabbitmq``, docs/streams.md). It is at least once:
  an append that fails or times out may still have been stored, so a retry can store a record twice
  (the sink's ledger stores an execution once, issue 6).
- Offsets increase along a stream and are never reused; they may have gaps (RabbitMQ Streams gives an
  offset to each stored consumer offset too). Timestamps are the log's write time, in milliseconds.
- A *reader* reads a stream in offset order from a ``Start`` (first, last, next, offset:N, time:T).
- Consumer offsets: a named consumer stores the offset of the last record it has processed and, made
  anew after a restart, reads it back and resumes at that offset + 1.
- Retention drops the oldest records once they are older than ``Retention.max_age_s`` or the stream
  holds more than ``Retention.max_bytes``; each backend says how exactly.

Every failure is a ``LogError``; ``permanent`` says whether retrying can help.
"""

from __future__ import annotations

import re
import threading
import time as _time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal, NamedTuple

from hubsched.per_process import PerProcess

# The stream every tick outcome goes to (docs/streams.md): each record one execution's outcome and values.
EXECUTIONS = "executions"

# RabbitMQ Streams takes names up to 255 bytes; the SQLite backend names a table after the stream.
STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")
CONSUMER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-:]{0,199}")


class LogError(Exception):
    """The log failed; ``permanent`` is True when retrying the same call cannot help (bad name,
    refused credentials, a record too large), False for what may pass (a server away, a timeout)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class Record(NamedTuple):
    """One record as read: its ``offset`` in the stream, ``timestamp`` (aware UTC; when the log wrote
    it, millisecond resolution) and ``body`` (the bytes appended)."""

    offset: int
    timestamp: datetime
    body: bytes


class Retention(NamedTuple):
    """How long a stream keeps records: at most ``max_age_s`` seconds and ``max_bytes`` bytes of
    bodies (settings ``HUBSCHED_LOG_RETENTION_S``, ``HUBSCHED_LOG_RETENTION_BYTES``)."""

    max_age_s: float
    max_bytes: int


class Stats(NamedTuple):
    """A stream's extent now. Offsets and times are None for an empty stream.

    ``records`` is exact where ``records_exact`` (SQLite: offsets have no gaps); on RabbitMQ Streams it
    is ``last_offset - first_offset + 1``, an upper bound (stored consumer offsets take offsets too).
    ``bytes`` is the bodies' bytes kept (SQLite) or None where the backend cannot tell (RabbitMQ 3.10's
    stream protocol has no such query). ``fill_percent`` is how full retention is: the larger of age
    (oldest record's age over ``max_age_s``) and size (``bytes`` over ``max_bytes``, where known).
    """

    stream: str
    first_offset: int | None
    last_offset: int | None
    records: int
    records_exact: bool
    bytes: int | None
    first_time: datetime | None
    last_time: datetime | None
    retention: Retention
    fill_percent: float


StartKind = Literal["first", "last", "next", "offset", "time"]


@dataclass(frozen=True)
class Start:
    """Where a reader starts (the HTTP replay's ``from=first|last|next|offset:N|time:<ISO 8601>``).

    - ``first``: the oldest record kept.
    - ``last``: the last batch written: the records of the last append (SQLite) or of the last chunk
      (RabbitMQ Streams, which writes one or more appends per chunk); at least the last record.
    - ``next``: only records appended after the reader opened.
    - ``offset``: the record at ``offset``, or the oldest kept when that one is gone (retention).
    - ``time``: the first record whose timestamp is at or after ``time`` (timestamps do not go back
      along a stream on either backend), then every record after it.
    """

    kind: StartKind
    offset: int | None = None
    time: datetime | None = None

    @classmethod
    def first(cls) -> Start:
        return cls("first")

    @classmethod
    def last(cls) -> Start:
        return cls("last")

    @classmethod
    def next(cls) -> Start:
        return cls("next")

    @classmethod
    def at(cls, offset: int) -> Start:
        """Raises LogError (permanent) for a negative offset."""
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise LogError(f"offset {offset!r}: expected an integer >= 0", permanent=True)
        return cls("offset", offset=offset)

    @classmethod
    def since(cls, time: datetime) -> Start:
        """Raises LogError (permanent) for a naive datetime."""
        if not isinstance(time, datetime) or time.tzinfo is None:
            raise LogError(f"time {time!r}: expected an aware datetime", permanent=True)
        return cls("time", time=time)

    @property
    def time_ms(self) -> int | None:
        return None if self.time is None else int(self.time.timestamp() * 1000)

    def __str__(self) -> str:
        if self.kind == "offset":
            return f"offset:{self.offset}"
        if self.kind == "time":
            return f"time:{self.time.isoformat()}"
        return self.kind


def start_parse(text: str) -> Start:
    """``first``, ``last``, ``next``, ``offset:N`` or ``time:<ISO 8601 with offset or Z>`` as a Start.

    Raises LogError (permanent) saying what was expected, for the HTTP replay to answer 400 with."""
    text = (text or "").strip()
    if text in ("first", "last", "next"):
        return Start(text)
    kind, _, rest = text.partition(":")
    if kind == "offset" and rest.isascii() and rest.isdigit():
        return Start.at(int(rest))
    if kind == "time" and rest:
        try:
            when = datetime.fromisoformat(rest.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            return Start.since(when)
    raise LogError(f"from={text!r}: expected first, last, next, offset:N or time:<ISO 8601 with a UTC offset>",
                   permanent=True)


def stream_name_check(stream: str) -> str:
    """Return ``stream`` when it is a valid stream name, else raise LogError (permanent)."""
    if not isinstance(stream, str) or not STREAM_NAME.fullmatch(stream):
        raise LogError(f"stream name {stream!r}: expected 1-200 of A-Z a-z 0-9 _ . - (not starting with _ . -)",
                       permanent=True)
    return stream


def consumer_name_check(consumer: str) -> str:
    """Return ``consumer`` when it is a valid consumer name, else raise LogError (permanent)."""
    if not isinstance(consumer, str) or not CONSUMER_NAME.fullmatch(consumer):
        raise LogError(f"consumer name {consumer!r}: expected 1-200 of A-Z a-z 0-9 _ . - : (not starting with _ . - :)",
                       permanent=True)
    return consumer


def ms_time(ms: int) -> datetime:
    """Milliseconds since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def fill_percent(retention: Retention, *, first_time: datetime | None, bytes_kept: int | None) -> float:
    """How full retention is, in percent (see ``Stats.fill_percent``); 0.0 for an empty stream."""
    fill = 0.0
    if first_time is not None and retention.max_age_s > 0:
        fill = max(fill, (_time.time() - first_time.timestamp()) / retention.max_age_s * 100)
    if bytes_kept is not None and retention.max_bytes > 0:
        fill = max(fill, bytes_kept / retention.max_bytes * 100)
    return round(fill, 1)


class Reader(ABC):
    """Reads one stream in offset order from its Start; for one thread at a time. Close it (or use
    ``with``): on RabbitMQ Streams it holds a connection."""

    stream: str

    @abstractmethod
    def read(self, *, max_records: int = 1000, timeout: float = 0.0) -> list[Record]:
        """The next 1..``max_records`` records, as soon as at least one is there, waiting at most
        ``timeout`` seconds for the first; ``[]`` when none came. Raises LogError."""

    @abstractmethod
    def close(self) -> None:
        """Release the reader; idempotent."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Log(ABC):
    """A durable log of streams (module docstring); thread-safe. Get this process's one with ``log()``."""

    retention: Retention

    @abstractmethod
    def append(self, stream: str, bodies: Sequence[bytes], *, timeout: float | None = None) -> list[int] | None:
        """Append ``bodies`` (in order) to ``stream`` (created on first use, with this log's retention);
        returns once every one is durable, or raises LogError (not permanent) after ``timeout`` seconds
        (None: the backend's own limit, 30 s), however long the server or the file stays busy.

        Returns their offsets, increasing, where the backend learns them (SQLite); None where it
        does not (RabbitMQ Streams: a publish confirm names the publisher's sequence numbers, not the
        offsets the broker gave). Raises LogError; on failure or timeout some may have been stored."""

    @abstractmethod
    def reader(self, stream: str, start: Start) -> Reader:
        """A reader of ``stream`` from ``start`` (the stream is created when missing). Raises LogError."""

    def read(self, stream: str, *, offset: int | None = None, time: datetime | None = None,
             max_records: int = 1000, timeout: float = 0.0) -> list[Record]:
        """One read from ``offset`` or from ``time`` (else from the first record): as ``Reader.read``.

        For a consumer that keeps reading, open a ``reader`` once instead: each call here opens one."""
        if offset is not None and time is not None:
            raise LogError("read: give offset or time, not both", permanent=True)
        start = Start.at(offset) if offset is not None else Start.since(time) if time is not None else Start.first()
        with self.reader(stream, start) as reader:
            return reader.read(max_records=max_records, timeout=timeout)

    @abstractmethod
    def consumer_offset_store(self, stream: str, consumer: str, offset: int) -> None:
        """Store, durably, that ``consumer`` has processed ``stream`` up to and including ``offset``.
        Raises LogError."""

    @abstractmethod
    def consumer_offset(self, stream: str, consumer: str) -> int | None:
        """The offset ``consumer`` last stored for ``stream``, or None when it stored none (resume at
        that offset + 1). Raises LogError."""

    @abstractmethod
    def stats(self, stream: str) -> Stats:
        """The stream's extent now (``Stats``). Raises LogError."""

    @abstractmethod
    def retention_apply(self) -> int:
        """Drop what retention no longer keeps, where the backend does not do it itself; returns the
        records dropped (0 where the server applies retention). Raises LogError."""

    @abstractmethod
    def stream_delete(self, stream: str) -> None:
        """Delete ``stream``, its records and its consumer offsets; no error when it does not exist."""

    @abstractmethod
    def close(self) -> None:
        """Close connections and threads; idempotent. Readers still open stop working."""


def log_open(url: str, *, retention: Retention, var_dir=None) -> Log:
    """The log at ``url``: empty for the embedded SQLite log at ``<var_dir>/log.sqlite3``,
    ``sqlite:///<path>[?synchronous=normal]`` for one elsewhere, ``rabbitmq-stream://user:password@host:port/[vhost]``
    for RabbitMQ Streams. Raises LogError (permanent) for another scheme."""
    url = (url or "").strip()
    if not url or url.startswith("sqlite:"):
        from streams.backends.sqlite import SQLiteLog

        if not url:
            from django.conf import settings

            url = f"sqlite:///{(var_dir or settings.VAR_DIR) / 'log.sqlite3'}"
        return SQLiteLog(url, retention=retention)
    if url.startswith("rabbitmq-stream://"):
        from streams.backends.rabbitmq import RabbitMQLog

        return RabbitMQLog(url, retention=retention)
    from hubsched.secrets import url_mask

    raise LogError(f"HUBSCHED_LOG_URL={url_mask(url)}: expected empty, sqlite:///<path> or rabbitmq-stream://",
                   permanent=True)


def _log_from_settings() -> Log:
    from django.conf import settings

    return log_open(settings.HUBSCHED_LOG_URL, retention=Retention(
        float(settings.HUBSCHED_LOG_RETENTION_S), int(settings.HUBSCHED_LOG_RETENTION_BYTES)))


_log: PerProcess[Log] = PerProcess(_log_from_settings)
_reset_lock = threading.Lock()


def log() -> Log:
    """This process's log, made from the settings on first use (``HUBSCHED_LOG_URL``,
    ``HUBSCHED_LOG_RETENTION_S``, ``HUBSCHED_LOG_RETENTION_BYTES``).

    Invalidated by fork() (a child makes its own: the RabbitMQ backend's event loop thread and sockets
    do not cross fork), by ``log_reset()``, and by a change of any of those settings through Django's
    ``setting_changed`` signal (``override_settings`` in tests; streams/apps.py). Editing the
    environment of a running process changes nothing."""
    return _log.get()


def log_reset() -> None:
    """Close this process's log, if made; the next ``log()`` makes a new one from the settings."""
    with _reset_lock:
        made = _log.peek()
        _log.reset()
    if made is not None:
        made.close()
