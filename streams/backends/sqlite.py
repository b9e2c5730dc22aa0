"""The embedded log: one SQLite file in WAL mode (``var/log.sqlite3`` by default), for `make run` with no server.

Durability: each ``append`` is one transaction, committed before it returns, with
``PRAGMA synchronous=FULL`` (the default here): in WAL mode SQLite then syncs the WAL to the disk at
every commit, so a committed append survives the writer's crash (SIGKILL), the operating system's
crash and power loss (as far as the disk honours fsync). ``?synchronous=normal`` on the URL skips that
sync: a commit then survives a crash of the process but the last ones may be lost on power loss or an
OS crash (SQLite, "WAL mode" and "PRAGMA synchronous"). Several processes may write at once: SQLite
serialises writers (``BEGIN IMMEDIATE``; they wait up to ``busy_timeout``), and offsets are assigned
inside that transaction, so they are contiguous and never reused.

Layout: a table ``streams`` (per stream: next offset, bytes appended so far, last timestamp, the
last append's first offset), a table ``consumer_offsets``, and per stream a table ``log:<stream>``
with ``offset`` as its rowid, ``ts_ms``, ``pos`` (the bodies' bytes appended before this record) and
``body``. Timestamps are the commit's clock, never less than the stream's previous one.

Retention: ``retention_apply()`` deletes, per stream, the records older than ``max_age_s`` and the
oldest records until the bodies kept are at most ``max_bytes``; writers call it after an append at most
every ``RETENTION_CHECK_S`` seconds per process. Deleted pages are reused by SQLite; the file does not
shrink (no VACUUM).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from streams.log import (Log, LogError, Reader, Record, Retention, Start, Stats, consumer_name_check,
                         fill_percent, ms_time, stream_name_check)

RETENTION_CHECK_S = 10.0
POLL_S = 0.05  # how often a waiting reader looks for new records (SQLite has no notification)
BUSY_TIMEOUT_S = 30.0


def _table(stream: str) -> str:
    return f'"log:{stream}"'  # names are checked by stream_name_check: no quote can occur


def _error(action: str, exc: Exception) -> LogError:
    text = str(exc)
    # locked/busy and disk I/O may pass; a malformed file, a read-only file or a full disk need a person
    permanent = isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)
    return LogError(f"SQLite log: {action}: {text}", permanent=permanent)



@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection):
    """``BEGIN IMMEDIATE`` (take the write lock up front, waiting up to the busy timeout), COMMIT at the end,
    ROLLBACK on any exception (KeyboardInterrupt too): the one way this backend writes."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise

class SQLiteLog(Log):
    """The embedded log at ``sqlite:///<path>[?synchronous=full|normal]``; thread-safe (a connection per thread)."""

    def __init__(self, url: str, *, retention: Retention) -> None:
        parts = urlsplit(url)
        path = unquote(parts.path[1:] if parts.path.startswith("//") else parts.path)
        if parts.scheme != "sqlite" or not path:
            raise LogError(f"SQLite log URL {url!r}: expected sqlite:///<path>", permanent=True)
        synchronous = parse_qs(parts.query).get("synchronous", ["full"])[0].upper()
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise LogError(f"SQLite log: synchronous={synchronous.lower()}: expected full or normal", permanent=True)
        self.path = Path(path)
        self.synchronous = synchronous
        self.retention = retention
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._retention_due = 0.0
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _write_transaction(self._conn()) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS streams (name TEXT PRIMARY KEY, next_offset INTEGER NOT NULL, "
                             "next_pos INTEGER NOT NULL, last_ts_ms INTEGER NOT NULL, last_batch INTEGER NOT NULL)")
                conn.execute("CREATE TABLE IF NOT EXISTS consumer_offsets (stream TEXT NOT NULL, consumer TEXT NOT NULL, "
                             "offset INTEGER NOT NULL, updated_ms INTEGER NOT NULL, PRIMARY KEY (stream, consumer)) "
                             "WITHOUT ROWID")
        except (sqlite3.Error, OSError) as exc:
            raise _error(f"opening {self.path}", exc) from None

    # --- connections ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise LogError("SQLite log: closed", permanent=True)
            # autocommit (isolation_level=None): transactions are begun and committed explicitly below
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _ensure(self, conn: sqlite3.Connection, stream: str) -> None:
        """Create the stream's table and row once (per process; idempotent across processes)."""
        if stream in self._known:
            return
        stream_name_check(stream)
        with _write_transaction(conn):
            conn.execute(f"CREATE TABLE IF NOT EXISTS {_table(stream)} (offset INTEGER PRIMARY KEY, "
                         "ts_ms INTEGER NOT NULL, pos INTEGER NOT NULL, body BLOB NOT NULL)")
            conn.execute(f'CREATE INDEX IF NOT EXISTS "log:{stream}:ts" ON {_table(stream)} (ts_ms)')
            conn.execute("INSERT OR IGNORE INTO streams VALUES (?, 0, 0, 0, 0)", (stream,))
        self._known.add(stream)

    # --- writing -------------------------------------------------------------------------------
    def append(self, stream: str, bodies: Sequence[bytes], *, timeout: float | None = None) -> list[int]:
        if not bodies:
            return []
        try:
            conn = self._conn()
            # a writer holding the file waits this append at most ``timeout`` (SQLite's busy handler)
            conn.execute(f"PRAGMA busy_timeout = {max(1, int((BUSY_TIMEOUT_S if timeout is None else timeout) * 1000))}")
            self._ensure(conn, stream)
            with _write_transaction(conn):  # durable at its COMMIT (module docstring)
                row = conn.execute(
                    "SELECT next_offset, next_pos, last_ts_ms FROM streams WHERE name = ?", (stream,)).fetchone()
                if row is None:  # deleted by another process since we made it: made again on the next try
                    raise sqlite3.OperationalError(f"the stream {stream} was deleted")
                next_offset, next_pos, last_ts = row
                ts = max(int(time.time() * 1000), last_ts)
                rows = []
                offset, pos = next_offset, next_pos
                for body in bodies:
                    rows.append((offset, ts, pos, body))
                    offset += 1
                    pos += len(body)
                conn.executemany(f"INSERT INTO {_table(stream)} VALUES (?, ?, ?, ?)", rows)
                conn.execute("UPDATE streams SET next_offset = ?, next_pos = ?, last_ts_ms = ?, last_batch = ? "
                             "WHERE name = ?", (offset, pos, ts, next_offset, stream))
        except sqlite3.Error as exc:
            self._known.discard(stream)  # deleted by another process meanwhile: the next try creates it again
            raise _error(f"append to {stream}", exc) from None
        if time.monotonic() >= self._retention_due:
            self._retention_due = time.monotonic() + RETENTION_CHECK_S
            self.retention_apply()
        return list(range(next_offset, offset))

    def retention_apply(self) -> int:
        dropped = 0
        try:
            conn = self._conn()
            streams = [row[0] for row in conn.execute("SELECT name FROM streams")]
            for stream in streams:
                dropped += self._retention_apply(conn, stream)
        except sqlite3.Error as exc:
            raise _error("applying retention", exc) from None
        return dropped

    def _retention_apply(self, conn: sqlite3.Connection, stream: str) -> int:
        table = _table(stream)
        with _write_transaction(conn):
            next_offset, next_pos = conn.execute(
                "SELECT next_offset, next_pos FROM streams WHERE name = ?", (stream,)).fetchone()
            cutoff = 0
            if self.retention.max_age_s > 0:
                oldest_ms = int((time.time() - self.retention.max_age_s) * 1000)
                # scans from the oldest record and stops at the first one kept: proportional to what is dropped
                row = conn.execute(f"SELECT offset FROM {table} NOT INDEXED WHERE ts_ms >= ? ORDER BY offset LIMIT 1",
                                   (oldest_ms,)).fetchone()
                cutoff = max(cutoff, row[0] if row else next_offset)
            if self.retention.max_bytes > 0:
                # a record is kept when all of it lies within the last max_bytes appended
                row = conn.execute(f"SELECT offset FROM {table} WHERE pos >= ? ORDER BY offset LIMIT 1",
                                   (next_pos - self.retention.max_bytes,)).fetchone()
                cutoff = max(cutoff, row[0] if row else next_offset)
            dropped = conn.execute(f"DELETE FROM {table} WHERE offset < ?", (cutoff,)).rowcount if cutoff else 0
        return dropped

    # --- reading -------------------------------------------------------------------------------
    def reader(self, stream: str, start: Start) -> Reader:
        try:
            conn = self._conn()
            self._ensure(conn, stream)
            next_offset, last_batch = conn.execute(
                "SELECT next_offset, last_batch FROM streams WHERE name = ?", (stream,)).fetchone()
            min_ts = None
            if start.kind == "first":
                cursor = 0  # reads WHERE offset >= cursor: the oldest kept, whatever retention dropped
            elif start.kind == "last":
                cursor = last_batch
            elif start.kind == "next":
                cursor = next_offset
            elif start.kind == "offset":
                cursor = start.offset
            else:
                row = conn.execute(f"SELECT offset FROM {_table(stream)} WHERE ts_ms >= ? ORDER BY ts_ms, offset "
                                   "LIMIT 1", (start.time_ms,)).fetchone()
                cursor = row[0] if row else next_offset
                min_ts = None if row else start.time_ms  # none yet: the reader skips what is older than asked
        except sqlite3.Error as exc:
            raise _error(f"opening a reader of {stream}", exc) from None
        return _SQLiteReader(self, stream, cursor, min_ts)

    def consumer_offset_store(self, stream: str, consumer: str, offset: int) -> None:
        stream_name_check(stream)
        consumer_name_check(consumer)
        try:
            self._conn().execute(
                "INSERT INTO consumer_offsets VALUES (?, ?, ?, ?) ON CONFLICT (stream, consumer) "
                "DO UPDATE SET offset = excluded.offset, updated_ms = excluded.updated_ms",
                (stream, consumer, int(offset), int(time.time() * 1000)))  # autocommit: committed on return
        except sqlite3.Error as exc:
            raise _error(f"storing the offset of {consumer} on {stream}", exc) from None

    def consumer_offset(self, stream: str, consumer: str) -> int | None:
        stream_name_check(stream)
        consumer_name_check(consumer)
        try:
            row = self._conn().execute("SELECT offset FROM consumer_offsets WHERE stream = ? AND consumer = ?",
                                       (stream, consumer)).fetchone()
        except sqlite3.Error as exc:
            raise _error(f"reading the offset of {consumer} on {stream}", exc) from None
        return None if row is None else row[0]

    def stats(self, stream: str) -> Stats:
        try:
            conn = self._conn()
            self._ensure(conn, stream)
            conn.execute("BEGIN")  # one snapshot for the three reads
            try:
                next_pos = conn.execute("SELECT next_pos FROM streams WHERE name = ?", (stream,)).fetchone()[0]
                first = conn.execute(f"SELECT offset, ts_ms, pos FROM {_table(stream)} ORDER BY offset LIMIT 1").fetchone()
                last = conn.execute(f"SELECT offset, ts_ms FROM {_table(stream)} ORDER BY offset DESC LIMIT 1").fetchone()
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _error(f"stats of {stream}", exc) from None
        if first is None:
            return Stats(stream, None, None, 0, True, 0, None, None, self.retention, 0.0)
        first_time, kept = ms_time(first[1]), next_pos - first[2]
        return Stats(stream, first[0], last[0], last[0] - first[0] + 1, True, kept, first_time, ms_time(last[1]),
                     self.retention, fill_percent(self.retention, first_time=first_time, bytes_kept=kept))

    def stream_delete(self, stream: str) -> None:
        stream_name_check(stream)
        try:
            conn = self._conn()
            with _write_transaction(conn):
                conn.execute(f"DROP TABLE IF EXISTS {_table(stream)}")
                conn.execute("DELETE FROM streams WHERE name = ?", (stream,))
                conn.execute("DELETE FROM consumer_offsets WHERE stream = ?", (stream,))
        except sqlite3.Error as exc:
            raise _error(f"deleting {stream}", exc) from None
        self._known.discard(stream)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"<SQLiteLog {os.fspath(self.path)} synchronous={self.synchronous}>"


class _SQLiteReader(Reader):
    def __init__(self, log: SQLiteLog, stream: str, cursor: int, min_ts: int | None) -> None:
        self._log, self.stream, self._cursor, self._min_ts = log, stream, cursor, min_ts
        self._sql = f"SELECT offset, ts_ms, body FROM {_table(stream)} WHERE offset >= ? ORDER BY offset LIMIT ?"
        self._closed = False

    def read(self, *, max_records: int = 1000, timeout: float = 0.0) -> list[Record]:
        if self._closed:
            raise LogError(f"reader of {self.stream}: closed", permanent=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = self._log._conn().execute(self._sql, (self._cursor, max_records)).fetchall()
            except sqlite3.Error as exc:
                raise _error(f"reading {self.stream}", exc) from None
            if rows:
                self._cursor = rows[-1][0] + 1
                if self._min_ts is not None:
                    rows = [row for row in rows if row[1] >= self._min_ts]
                    if rows:
                        self._min_ts = None
                if rows:
                    return [Record(offset, ms_time(ts), body) for offset, ts, body in rows]
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            time.sleep(min(POLL_S, left))

    def close(self) -> None:
        self._closed = True
