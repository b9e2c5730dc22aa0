"""A consumer of one stream of the log, and the loop that runs it: lease, prefetch, commit, report.

A consumer says where its committed offset is (``position``), where it starts without one
(``start``), how it turns a record into an item (``decode``: None to pass it by) and how it commits a
batch with its offset in one transaction (``commit``). The loop (``ConsumerLoop``) does the rest:

- **Lease.** One process leads each consumer (``streams.models.Forwarder``: owner and lease_until,
  renewed every report); the others stand by and take over once the lease has run out
  (HUBSCHED_FORWARDER_LEASE_S). Correctness does not rest on the lease: each commit compares and sets
  the offset (``CommitConflict``), so a leader that lost its lease unknowingly commits nothing twice.
- **Prefetch.** A reader thread reads from ``position + 1``, decodes, and hands on batches of at most
  HUBSCHED_SINK_BATCH_SIZE values, HUBSCHED_SINK_BATCH_BYTES record bytes, or HUBSCHED_SINK_BATCH_AGE_S
  of age, two at most waiting: memory is bounded whatever the backlog, which stays in the log. A
  batch also goes when a read finds nothing more (latency); a consumer behind fills its batches
  (throughput).
- **Commit.** A failed commit is tried again, the same batch, with backoff doubling from 0.1 s up to
  HUBSCHED_FORWARDER_BACKOFF_MAX_S, for as long as it takes (the database away); a conflict restarts
  from the committed offset.
- **Report.** Every HUBSCHED_FORWARDER_REPORT_S the leader writes its state, position, lag, rates and
  counters to its Forwarder row (``/api/status``, the admin); a backlog past
  HUBSCHED_LOG_BACKLOG_ALARM_PERCENT of retention is logged as an alarm.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone

from hubsched.metrics.histogram import Histogram
from hubsched.secrets import text_mask
from streams.log import Log, LogError, Record, Start, log

logger = logging.getLogger(__name__)


READ_RECORDS = 1000  # records a reader takes at a time


class CommitConflict(Exception):
    """The consumer's committed offset moved meanwhile (another process committed): start again from it."""


@dataclass
class Batch:
    """Records read and decoded, ready to commit: ``items`` (the consumer's, in offset order, with each
    one's record offset in ``offsets``), ``last_offset`` (the last record covered, items or not),
    ``records`` and ``bytes`` read, ``values`` in the items, ``first_time`` of the oldest record."""

    items: list = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    last_offset: int = -1
    records: int = 0
    bytes: int = 0
    values: int = 0
    first_time: datetime | None = None
    since: float = 0.0  # monotonic time of its first record


class Consumer(ABC):
    """One consumer of ``stream`` named ``name`` (``Forwarder.name``)."""

    name: str
    stream: str
    kind: str  # streams.models.ForwarderKind
    sink_id: int | None = None

    @abstractmethod
    def position(self) -> int | None:
        """The last offset committed, None when none was. Raises on a database error (the loop retries)."""

    @abstractmethod
    def start(self) -> Start:
        """Where to read without a committed offset."""

    @abstractmethod
    def decode(self, record: Record):
        """``(item, values)`` for a record this consumer commits, or None to pass it by (still covered by
        the offset). Must not raise for a record it cannot read: return None and log it."""

    @abstractmethod
    def commit(self, batch: Batch, previous: int | None) -> None:
        """Commit ``batch.items`` and move the offset from ``previous`` to ``batch.last_offset``, in one
        transaction. Raises CommitConflict, or any error to be tried again after a pause."""

    def refresh(self) -> None:
        """Called between batches every few seconds (a sink forwarder reads which projects it serves)."""


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Prefetch(threading.Thread):
    """Reads from ``start``, decodes and queues batches (two at most waiting) until stopped."""

    def __init__(self, loop: ConsumerLoop, start: Start, expected: int | None) -> None:
        super().__init__(name=f"read-{loop.consumer.name}", daemon=True)
        self.loop, self.start_at, self.expected = loop, start, expected
        self.batches: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=2)
        self.stopping = threading.Event()

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.batches.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        consumer, limits = self.loop.consumer, self.loop.limits
        try:
            with self.loop.log.reader(consumer.stream, self.start_at) as reader:
                batch = Batch()
                while not self.stopping.is_set():
                    wait = 0.2 if not batch.records else max(0.0, batch.since + limits.age - time.monotonic())
                    records = reader.read(max_records=READ_RECORDS, timeout=wait)
                    for record in records:
                        if self.expected is not None and record.offset > self.expected and self.loop.log_gapless:
                            self.loop.dropped += record.offset - self.expected  # retention went past us
                        self.expected = record.offset + 1
                        if not batch.records:
                            batch.since, batch.first_time = time.monotonic(), record.timestamp
                        batch.records += 1
                        batch.bytes += len(record.body)
                        batch.last_offset = record.offset
                        decoded = consumer.decode(record)
                        if decoded is not None:
                            item, values = decoded
                            batch.items.append(item)
                            batch.offsets.append(record.offset)
                            batch.bodies.append(record.body)
                            batch.values += values
                        if batch.values >= limits.values or batch.bytes >= limits.bytes:
                            if not self._put(batch):
                                return
                            batch = Batch()
                    # a read that found nothing: commit what there is now (latency); behind, batches grow to their
                    # limits (throughput). Committing after every short read instead (each append alone) made more,
                    # smaller commits and fell behind at 100,000 values/s on PostgreSQL (docs/benchmarks.md).
                    if batch.records and (time.monotonic() - batch.since >= limits.age or not records):
                        if not self._put(batch):
                            return
                        batch = Batch()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which starts a new reader
            self._put(exc)


@dataclass(frozen=True)
class Limits:
    values: int
    bytes: int
    age: float


class ConsumerLoop:
    """Runs ``consumer`` in its own thread until ``stop()`` (see the module doc)."""

    def __init__(self, consumer: Consumer, *, the_log: Log | None = None) -> None:
        self.consumer = consumer
        self.log = the_log or log()
        self.log_gapless = type(self.log).__name__ == "SQLiteLog"  # offsets without gaps: a gap is a drop
        self.limits = Limits(settings.HUBSCHED_SINK_BATCH_SIZE, settings.HUBSCHED_SINK_BATCH_BYTES,
                             settings.HUBSCHED_SINK_BATCH_AGE_S)
        self.owner = _owner()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.leading = False
        self.position: int | None = None
        self.state = "standby"
        self.error = ""
        self.dropped = 0
        self.executions = 0
        self.values = 0
        self.committed_records = 0
        self.committed_at: datetime | None = None
        self.write_seconds = Histogram()  # each batch's commit to the sink (write and offset, one transaction)
        self.pending: Batch | None = None  # taken from the reader, not yet committed
        self._prefetch: _Prefetch | None = None
        self._reported = 0.0
        self._rates: tuple[float, int | None, int] | None = None  # (monotonic, last offset of the stream, committed)
        self._alarm = False
        self._refreshed = 0.0

    # --- life -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"consumer-{self.consumer.name}", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)
        self._reader_stop()

    def _run(self) -> None:
        self._row_ensure()
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                if self.step():
                    backoff = 0.1
            except Exception as exc:  # the database or the log away: the same batch again after a pause
                self.state, self.error = "retrying", text_mask(f"{type(exc).__name__}: {exc}")
                logger.warning("%s: %s; trying again in %.1f s", self.consumer.name, self.error, backoff)
                self._report(force=True)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, settings.HUBSCHED_FORWARDER_BACKOFF_MAX_S)
            finally:
                close_old_connections()
        self._reader_stop()
        self._release()

    def step(self) -> bool:
        """Do one thing: take or keep the lease, read, or commit one batch; True when it made progress."""
        now = time.monotonic()
        if now - self._reported >= settings.HUBSCHED_FORWARDER_REPORT_S or not self.leading:
            self.leading = self._lease()
            self._report()
            if not self.leading:
                self._reader_stop()
                self.state = "standby"
                self.stopping.wait(min(1.0, settings.HUBSCHED_FORWARDER_LEASE_S / 4))
                return False
        if now - self._refreshed >= 5.0:
            self.consumer.refresh()
            self._refreshed = now
        if self._prefetch is None:
            self._reader_start()
        batch = self.pending
        if batch is None:
            try:
                got = self._prefetch.batches.get(timeout=0.5)
            except queue.Empty:
                return False
            if isinstance(got, BaseException):
                self._reader_stop()
                raise got
            batch = self.pending = got
        started = time.monotonic()
        try:
            self.consumer.commit(batch, self.position)
        except CommitConflict as exc:
            logger.warning("%s: %s; reading from the committed offset", self.consumer.name, exc)
            self._reader_stop()
            return False
        self.write_seconds.observe(time.monotonic() - started)
        self.position = batch.last_offset
        self.pending = None
        self.state, self.error = "running", ""
        self.executions += len(batch.items)
        self.values += batch.values
        self.committed_records += batch.records
        self.committed_at = timezone.now()
        return True

    def _reader_start(self) -> Start:
        """Start the prefetch thread from the committed offset (or the consumer's start); returns where."""
        self.position = self.consumer.position()
        self.pending = None
        if self.position is None:
            start, expected = self.consumer.start(), None
        else:
            start, expected = Start.at(self.position + 1), self.position + 1
            try:
                first = self.log.stats(self.consumer.stream).first_offset
            except LogError:
                first = None
            if first is not None and first > expected:  # retention dropped what this consumer had not read
                self.dropped += first - expected
                logger.error("%s: retention dropped offsets %d..%d before they were forwarded",
                             self.consumer.name, expected, first - 1)
                expected = first
        self._prefetch = _Prefetch(self, start, expected)
        self._prefetch.start()
        return start

    def _reader_stop(self) -> None:
        prefetch, self._prefetch = self._prefetch, None
        self.pending = None
        if prefetch is not None:
            prefetch.stopping.set()
            prefetch.join(5)

    def catch_up(self, *, timeout: float = 30.0) -> int:
        """Without a thread or lease (tests, ``forward --once``): commit everything the stream holds now;
        returns the records committed. Raises what a commit raises, and TimeoutError."""
        end = self.log.stats(self.consumer.stream).last_offset
        self.consumer.refresh()
        done = 0
        deadline = time.monotonic() + timeout
        start = self._reader_start()
        if start.kind == "offset" and end is not None and start.offset > end:
            end = None  # it starts past what the stream holds: nothing to do
        try:
            while end is not None and (self.position is None or self.position < end):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.consumer.name}: at {self.position} of {end} after {timeout} s")
                try:
                    got = self._prefetch.batches.get(timeout=0.5)
                except queue.Empty:
                    continue
                if isinstance(got, BaseException):
                    raise got
                started = time.monotonic()
                self.consumer.commit(got, self.position)
                self.write_seconds.observe(time.monotonic() - started)
                self.position = got.last_offset
                done += got.records
        finally:
            self._reader_stop()
        return done

    # --- lease and report -------------------------------------------------------------------------

    def _row_ensure(self) -> None:
        from streams.models import Forwarder

        Forwarder.objects.get_or_create(name=self.consumer.name, defaults={
            "kind": self.consumer.kind, "sink_id": self.consumer.sink_id, "stream": self.consumer.stream})

    def _lease(self) -> bool:
        from streams.models import Forwarder

        now = timezone.now()
        return Forwarder.objects.filter(name=self.consumer.name).filter(
            Q(owner=self.owner) | Q(lease_until__isnull=True) | Q(lease_until__lt=now)
        ).update(owner=self.owner, lease_until=now + timedelta(seconds=settings.HUBSCHED_FORWARDER_LEASE_S)) == 1

    def _release(self) -> None:
        from streams.models import Forwarder

        try:
            Forwarder.objects.filter(name=self.consumer.name, owner=self.owner).update(
                lease_until=timezone.now(), state="stopped")
        except Exception:  # noqa: BLE001 - stopping: a lease that runs out frees it too
            logger.exception("%s: could not release the lease", self.consumer.name)

    def _report(self, force: bool = False) -> None:
        from streams.models import Forwarder

        now = time.monotonic()
        if not force and now - self._reported < settings.HUBSCHED_FORWARDER_REPORT_S:
            return
        self._reported = now
        if not self.leading:
            return
        fields = {"state": self.state, "last_error": self.error[:2000], "reported_at": timezone.now(),
                  "dropped_records": self.dropped, "executions_total": self.executions, "values_total": self.values,
                  "write_seconds": self.write_seconds.snapshot()}
        if self.position is not None:
            fields["position"] = self.position
        if self.committed_at is not None:
            fields["committed_at"] = self.committed_at
        try:
            stats = self.log.stats(self.consumer.stream)
        except LogError as exc:
            stats = None
            fields["last_error"] = (fields["last_error"] or f"log: {exc.message}")[:2000]
        if stats is not None:
            fields.update(self._lag(stats, now))
        Forwarder.objects.filter(name=self.consumer.name, owner=self.owner).update(**fields)

    def _lag(self, stats, now: float) -> dict:
        """Lag, backlog and rates from the stream's extent (``Log.stats``) and what this consumer holds."""
        retention = stats.retention
        lag_records = 0
        if stats.last_offset is not None:
            lag_records = max(0, stats.last_offset - (self.position if self.position is not None else stats.first_offset - 1))
        per_record_values = self.values / self.committed_records if self.committed_records else 0.0
        per_record_bytes = (stats.bytes / stats.records) if stats.bytes and stats.records else 0.0
        oldest = self.pending.first_time if self.pending is not None else None
        if oldest is None and lag_records and self._prefetch is not None and not self._prefetch.batches.empty():
            try:
                head = self._prefetch.batches.queue[0]
                oldest = head.first_time if isinstance(head, Batch) else None
            except IndexError:
                oldest = None
        lag_seconds = max(0.0, (timezone.now() - oldest).total_seconds()) if oldest is not None else 0.0
        if lag_records and oldest is None and stats.last_time is not None and self.committed_at is None:
            lag_seconds = max(0.0, (timezone.now() - (stats.first_time or stats.last_time)).total_seconds())
        backlog = 0.0
        if retention.max_age_s > 0:
            backlog = lag_seconds / retention.max_age_s * 100
        if per_record_bytes and retention.max_bytes > 0:
            backlog = max(backlog, lag_records * per_record_bytes / retention.max_bytes * 100)
        fields = {"lag_records": lag_records, "lag_values": int(lag_records * per_record_values),
                  "lag_seconds": round(lag_seconds, 3), "backlog_percent": round(backlog, 2)}
        if self._rates is not None:
            then, last_then, committed_then = self._rates
            elapsed = now - then
            if elapsed > 0:
                if stats.last_offset is not None and last_then is not None:
                    fields["records_in_rate"] = round((stats.last_offset - last_then) / elapsed, 1)
                fields["records_out_rate"] = round((self.committed_records - committed_then) / elapsed, 1)
        self._rates = (now, stats.last_offset, self.committed_records)
        alarm = backlog >= settings.HUBSCHED_LOG_BACKLOG_ALARM_PERCENT
        if alarm and not self._alarm:
            logger.error("%s: ALARM backlog at %.1f %% of the log's retention (%d records, %.0f s): values are dropped "
                         "past retention", self.consumer.name, backlog, lag_records, lag_seconds)
        elif self._alarm and not alarm:
            logger.warning("%s: backlog back under %.0f %% of retention", self.consumer.name,
                           settings.HUBSCHED_LOG_BACKLOG_ALARM_PERCENT)
        self._alarm = alarm
        return fields
