"""The tall layout's writes (one row per value): COPY on PostgreSQL, LOAD DATA on MySQL/MariaDB, executemany elsewhere.

Every write is one transaction and idempotent per execution (tables.py): the batch's executions
go into the table's ledger first, those already there are skipped, and only the values of the new
ones are written. The per-value work is kept to building one text line (or one tuple) straight from
the hub's value objects: at 100,000 values a second each microsecond here is a tenth of a core.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import logging
import os
import re
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import orjson
import sqlalchemy as sa

from .offsets import Checkpoint, checkpoint_connection, checkpoint_raw, offsets_ensure
from .tables import serving_hub
from .values import ExecutionValues, parse_ts, value_json, value_num

logger = logging.getLogger(__name__)

# the order in which the writers send columns: what an execution's values share comes first
WRITE_COLUMNS = ("tick", "project", "hub", "group_id", "group_name", "entity", "ts", "key", "value_num", "value_json", "quality")

# hub protocol v1: ts is RFC 3339 UTC with milliseconds; PostgreSQL reads that text as it is
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")
# PostgreSQL COPY text format and MySQL LOAD DATA's defaults escape alike
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # ints a double column takes as text without overflow
SQLITE_ROWS_PER_INSERT = 500  # rows per multi-row INSERT on SQLite (write_sqlite)


def _text_field(value: Any) -> str:
    return NULL if value is None else str(value).translate(_ESCAPES)


# --- timestamps as each database reads them ---------------------------------------------------------


def _iso_field(ts: Any) -> str:
    """PostgreSQL: RFC 3339 text as it came (the common case costs one regex match), else re-encoded."""
    if isinstance(ts, str) and _RFC3339.fullmatch(ts):
        return ts
    parsed = parse_ts(ts)
    return NULL if parsed is None else parsed.isoformat()


def _sql_value(ts: Any) -> str | None:
    """MySQL/MariaDB DATETIME(6) and SQLAlchemy's SQLite text: ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC."""
    parsed = parse_ts(ts)
    return None if parsed is None else parsed.strftime("%Y-%m-%d %H:%M:%S.%f")


def _sql_field(ts: Any) -> str:
    stamp = _sql_value(ts)
    return NULL if stamp is None else stamp


_MISSING = object()


# --- one batch to text lines (COPY, LOAD DATA) -------------------------------------------------------


def _number_and_json(value: Any) -> tuple[str, str]:
    """``(value_num, value_json)`` fields of a value that is not a finite float or an int: strings and
    booleans (one value in ten in a typical tree) the quick way, the rest through ``value_json``."""
    kind = type(value)
    if kind is str:
        text = _json_str(value)
        return NULL, (text.translate(_ESCAPES) if "\\" in text else text)
    if kind is bool:
        return ("1.0", "true") if value else ("0.0", "false")
    if value is None:
        return NULL, "null"
    number = value_num(value)
    return (NULL if number is None else repr(number)), value_json(value).translate(_ESCAPES)


def _json_str(value: str) -> str:
    """A string as JSON text, as ``value_json`` writes it (non-ASCII kept), through orjson when it can."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # lone surrogates, which orjson refuses
        return value_json(value)


def value_lines(executions: Iterable[ExecutionValues], ts_field: Callable[[Any], str]) -> list[str]:
    """The batch as text lines in WRITE_COLUMNS order (tab-separated, ``\\N`` for null, backslash escapes).

    ``ts_field`` encodes a timestamp (a tick, a value's ``ts``) as the database reads it. Fields an
    execution's values share are encoded once per execution and entity; keys, qualities and
    timestamps repeat across executions and are encoded once per batch.
    """
    lines: list[str] = []
    append = lines.append
    stamps: dict[Any, str] = {}
    keys: dict[str, str] = {}
    qualities: dict[str, str] = {"good": "good"}
    for execution in executions:
        head = "\t".join((ts_field(execution.tick), _text_field(execution.project), _text_field(serving_hub(execution)),
                          str(int(execution.group_id)), _text_field(execution.group)))
        for entity, items in execution.values:
            prefix = f"{head}\t{_text_field(entity)}\t"
            for item in items:
                value = item.get("value")
                kind = type(value)
                if (kind is float and value - value == 0.0) or (kind is int and INT_MIN <= value <= INT_MAX):
                    number = text = repr(value)
                else:
                    number, text = _number_and_json(value)
                ts = item.get("ts")
                stamp = stamps.get(ts) if type(ts) is str else None
                if stamp is None:
                    stamp = ts_field(ts)
                    if type(ts) is str:
                        stamps[ts] = stamp
                key = item["key"]
                key_field = keys.get(key)
                if key_field is None:
                    key_field = keys[key] = _text_field(key)
                quality = item.get("quality") or "good"
                quality_field = qualities.get(quality) if type(quality) is str else None
                if quality_field is None:
                    quality_field = _text_field(quality)
                    if type(quality) is str:
                        qualities[quality] = quality_field
                append(f"{prefix}{stamp}\t{key_field}\t{number}\t{text}\t{quality_field}\n")
    return lines


def value_tuples(executions: Iterable[ExecutionValues]) -> list[tuple]:
    """The batch as parameter tuples in WRITE_COLUMNS order, timestamps as SQLAlchemy's SQLite text."""
    rows: list[tuple] = []
    append = rows.append
    stamps: dict[str, str | None] = {}
    for execution in executions:
        tick = _sql_value(execution.tick)
        shared = (tick, execution.project, serving_hub(execution), int(execution.group_id), execution.group)
        for entity, items in execution.values:
            for item in items:
                value = item.get("value")
                kind = type(value)
                if kind is float and value - value == 0.0:
                    number, text = value, repr(value)
                elif kind is int and INT_MIN <= value <= INT_MAX:
                    number, text = float(value), repr(value)
                elif kind is str:
                    number, text = None, _json_str(value)
                else:
                    number, text = value_num(value), value_json(value)
                ts = item.get("ts")
                if type(ts) is str:
                    stamp = stamps.get(ts, _MISSING)
                    if stamp is _MISSING:
                        stamp = stamps[ts] = _sql_value(ts)
                else:
                    stamp = _sql_value(ts)
                append((*shared, entity, stamp, item["key"], number, text, str(item.get("quality") or "good")))
    return rows


# --- the ledger: which executions of the batch are new ----------------------------------------------


def _unique_executions(executions: list[ExecutionValues]) -> dict[tuple[int, datetime], ExecutionValues]:
    """One per (group_id, tick), the first: an execution delivered twice into one batch counts once."""
    out: dict[tuple[int, datetime], ExecutionValues] = {}
    for execution in executions:
        tick = parse_ts(execution.tick)
        out.setdefault((int(execution.group_id), tick), execution)
    return out


def _new_only(by_id: dict[tuple[int, datetime], ExecutionValues], returned: Iterable[tuple]) -> list[ExecutionValues]:
    new = set()
    for group_id, tick in returned:
        if isinstance(tick, str):  # SQLite gives its text back
            tick = datetime.fromisoformat(tick)
        if tick.tzinfo is None:  # MySQL DATETIME and SQLite keep UTC without a zone
            tick = tick.replace(tzinfo=timezone.utc)
        new.add((int(group_id), tick))
    return [execution for key, execution in by_id.items() if key in new]


def _ledger_rows(by_id: dict[tuple[int, datetime], ExecutionValues], tick: Callable[[datetime], Any]) -> list[tuple]:
    return [(gid, tick(t), ex.value_count()) for (gid, t), ex in by_id.items()]


# --- per database ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _raw_transaction(engine: sa.Engine):
    """The pool's DBAPI connection for one transaction: committed when the block ends, rolled back
    when it raises, returned to the pool either way."""
    connection = engine.raw_connection()
    try:
        yield connection
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.close()


def write_postgresql(engine: sa.Engine, table: sa.Table, ledger: sa.Table, executions: list[ExecutionValues],
                     checkpoint: Checkpoint | None = None) -> int:
    """Ledger rows with ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, then one ``COPY`` of the new
    executions' values (text format); one transaction. Returns the values written."""
    from psycopg2.extras import execute_values

    quote = engine.dialect.identifier_preparer.quote
    by_id = _unique_executions(executions)
    with _raw_transaction(engine) as connection, connection.cursor() as cursor:
        returned = execute_values(
            cursor,
            f"INSERT INTO {quote(ledger.name)} (group_id, tick, values_count) VALUES %s "
            f"ON CONFLICT DO NOTHING RETURNING group_id, tick",
            _ledger_rows(by_id, lambda t: t), page_size=max(1, len(by_id)), fetch=True,
        )
        new = _new_only(by_id, returned)
        lines = value_lines(new, _iso_field)
        if lines:
            columns = ", ".join(quote(c) for c in WRITE_COLUMNS)
            cursor.copy_expert(f"COPY {quote(table.name)} ({columns}) FROM STDIN", io.StringIO("".join(lines)))
        if checkpoint is not None:
            checkpoint_raw(cursor, engine.dialect, checkpoint)
    return len(lines)


def write_mysql(engine: sa.Engine, table: sa.Table, ledger: sa.Table, executions: list[ExecutionValues],
                checkpoint: Checkpoint | None = None) -> int:
    """The ledger claim, then one ``LOAD DATA LOCAL INFILE`` of the new executions' values from a
    temporary file; one transaction. Returns the values written.

    - Claim: where the server has ``INSERT ... RETURNING`` (MariaDB 10.5+; SQLAlchemy's
      ``dialect.insert_returning``, set on first connect) the batch's ledger rows go in one
      ``INSERT IGNORE ... RETURNING``; MySQL has none, so each execution is one ``INSERT IGNORE``
      whose row count (1 or 0) says whether it is new.
    - Values: ``LOAD DATA LOCAL`` only for a sink with ``local_infile`` on (``Sink.local_infile``,
      default off; writers.sink_engine marks the other engines ``_NO_LOAD_DATA``), through PyMySQL's
      ``local_infile`` and ``mysql.GuardedConnection`` (which sends only this batch's file), and
      where the server's ``local_infile`` allows (on by default in MariaDB, off in MySQL 8). Otherwise,
      or where either refuses, the values go in one ``executemany`` INSERT (PyMySQL sends it as
      multi-row INSERTs), and a refusing engine is remembered so later batches go there straight away.
      LOAD DATA LOCAL treats data errors as warnings (MySQL: as if IGNORE, a value too long is cut);
      INSERT in strict mode refuses them, and the forwarder isolates the execution they came in.
    """
    quote = engine.dialect.identifier_preparer.quote
    by_id = _unique_executions(executions)
    ledger_rows = _ledger_rows(by_id, lambda t: t.astimezone(timezone.utc).replace(tzinfo=None))
    claim = f"INSERT IGNORE INTO {quote(ledger.name)} (group_id, tick, values_count) VALUES "
    with _raw_transaction(engine) as connection, connection.cursor() as cursor:
        if engine.dialect.insert_returning:  # SQLAlchemy's reading of the server: MariaDB 10.5+, not MySQL
            placeholders = ", ".join(["(%s, %s, %s)"] * len(ledger_rows))
            cursor.execute(f"{claim}{placeholders} RETURNING group_id, tick", [f for row in ledger_rows for f in row])
            returned = cursor.fetchall()
        else:
            returned = [row[:2] for row in ledger_rows if cursor.execute(f"{claim}(%s, %s, %s)", row) == 1]
        new = _new_only(by_id, returned)
        written = 0
        lines = value_lines(new, _sql_field) if new and engine not in _NO_LOAD_DATA else []
        if lines:
            if _load_data(cursor, quote(table.name), lines):
                written = len(lines)
            else:
                _NO_LOAD_DATA.add(engine)
        if new and engine in _NO_LOAD_DATA:  # refused now or before: the same values as INSERTs
            rows = value_tuples(new)
            columns = ", ".join(quote(c) for c in WRITE_COLUMNS)
            cursor.executemany(
                f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({', '.join(['%s'] * len(WRITE_COLUMNS))})", rows,
            )
            written = len(rows)
        if checkpoint is not None:
            checkpoint_raw(cursor, engine.dialect, checkpoint)
    return written


# MySQL error codes for "this connection may not LOAD DATA LOCAL": the client did not ask for it
# (1148 ER_NOT_ALLOWED_COMMAND), the server has local_infile off (3948 ER_CLIENT_LOCAL_FILES_DISABLED),
# the client refused the server's file request (2068 CR_LOAD_DATA_LOCAL_INFILE_REJECTED), MariaDB's
# "server or client has disabled the local infile capability" (4166 ER_LOAD_INFILE_CAPABILITY_DISABLED)
_LOAD_DATA_REFUSED = {1148, 2068, 3948, 4166}
_NO_LOAD_DATA: weakref.WeakSet[sa.Engine] = weakref.WeakSet()  # engines whose connections may not


def _load_data(cursor, table: str, lines: list[str]) -> bool:
    """LOAD DATA LOCAL the lines into ``table``; False (nothing loaded) when the connection may not."""
    columns = ", ".join(f"`{c}`" for c in WRITE_COLUMNS)
    directory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".tsv", dir=directory, delete=True) as spool:
        spool.writelines(lines)
        spool.flush()
        path = spool.name.replace("\\", "\\\\").replace("'", "\\'")
        # the defaults of LOAD DATA are COPY's text format: tab, newline, backslash escapes, \N for null
        connection = getattr(cursor, "connection", None)
        guarded = hasattr(connection, "expected_infile")  # mysql.GuardedConnection: sends this file and no other
        if guarded:
            connection.expected_infile = spool.name
        try:
            cursor.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {table} CHARACTER SET utf8mb4 ({columns})")
        except Exception as exc:
            if exc.args and exc.args[0] in _LOAD_DATA_REFUSED:
                logger.warning("sink %s: LOAD DATA LOCAL refused (%s); values go in multi-row INSERTs", table, exc)
                return False
            raise
        finally:
            if guarded:
                connection.expected_infile = None
    return True


def write_sqlite(engine: sa.Engine, table: sa.Table, ledger: sa.Table, executions: list[ExecutionValues],
                 checkpoint: Checkpoint | None = None) -> int:
    """Ledger rows with ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (SQLite 3.35+), then the new
    executions' values in multi-row INSERTs of up to 500 rows; one transaction.

    - Multi-row, not ``executemany``: sqlite3 releases the GIL around each statement step, so
      ``executemany`` gives it up and waits for it again once per row, and in a busy worker each
      wait is another thread's turn. 10,000 rows took 85–101 ms that way and 36–42 ms in statements
      of 500 rows, with four other threads busy (38 and 32–37 ms with none).
    - The value tuples are made before the write starts, and the write holds ``_sqlite_writer_lock``:
      SQLite lets one writer in at a time, and its own busy handler makes the others poll with
      sleeps of up to 100 ms, which at full load left worker threads waiting past their ticks' expiry.
    """
    quote = engine.dialect.identifier_preparer.quote
    by_id = _unique_executions(executions)
    prepared = {key: value_tuples([execution]) for key, execution in by_id.items()}
    insert = f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in WRITE_COLUMNS)}) VALUES "
    row_marks = f"({', '.join('?' * len(WRITE_COLUMNS))})"
    claim = (f"INSERT INTO {quote(ledger.name)} (group_id, tick, values_count) VALUES (?, ?, ?) "
             f"ON CONFLICT DO NOTHING RETURNING group_id, tick")
    with _sqlite_writer_lock(engine.url.database), _raw_transaction(engine) as connection:
        cursor = connection.cursor()  # sqlite3's cursor is no context manager
        try:
            returned = []
            for row in _ledger_rows(by_id, _sql_value):
                cursor.execute(claim, row)
                returned.extend(cursor.fetchall())
            new = {id(execution) for execution in _new_only(by_id, returned)}
            rows = [row for key, execution in by_id.items() if id(execution) in new for row in prepared[key]]
            per = max(1, min(SQLITE_ROWS_PER_INSERT,
                             connection.driver_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(WRITE_COLUMNS)))
            for start in range(0, len(rows), per):
                chunk = rows[start : start + per]
                cursor.execute(insert + ", ".join([row_marks] * len(chunk)), list(itertools.chain.from_iterable(chunk)))
            if checkpoint is not None:
                checkpoint_raw(cursor, engine.dialect, checkpoint)
        finally:
            cursor.close()
    return len(rows)


@contextlib.contextmanager
def _sqlite_writer_lock(database: str | None):
    """An exclusive ``fcntl`` lock on ``<database>.hubsched-writer.lock`` for the length of a write,
    so that hubsched's writers of one SQLite file (threads and processes) queue in the kernel and go
    in the moment the previous one commits. In-memory databases need none."""
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    with _SQLITE_LOCAL.setdefault(database, threading.Lock()):  # fcntl locks do not exclude a process's threads
        fd = os.open(f"{database}.hubsched-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock


_SQLITE_LOCAL: dict[str, threading.Lock] = {}  # per database file


def write_generic(engine: sa.Engine, table: sa.Table, ledger: sa.Table, executions: list[ExecutionValues],
                  checkpoint: Checkpoint | None = None) -> int:
    """Any other database SQLAlchemy speaks: the executions already in the ledger are read, the others
    inserted (a concurrent writer of the same execution makes the transaction fail, and the batch
    with it), then the values with SQLAlchemy's ``insertmanyvalues``; one transaction."""
    by_id = _unique_executions(executions)
    with engine.begin() as conn:
        present = set()
        ids = list(by_id)
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            where = sa.or_(*[sa.and_(ledger.c.group_id == gid, ledger.c.tick == tick) for gid, tick in chunk])
            present.update(conn.execute(sa.select(ledger.c.group_id, ledger.c.tick).where(where)).all())
        present = _normalized(present)
        new_ids = {key: ex for key, ex in by_id.items() if key not in present}
        if checkpoint is not None:
            checkpoint_connection(conn, offsets_ensure(engine, str(engine.url)), checkpoint)
        if not new_ids:
            return 0
        conn.execute(ledger.insert(), [{"group_id": gid, "tick": tick, "values_count": n}
                                       for gid, tick, n in _ledger_rows(new_ids, lambda t: t)])
        records = [
            {"tick": parse_ts(ex.tick), "project": ex.project, "hub": serving_hub(ex), "group_id": int(ex.group_id),
             "group_name": ex.group, "entity": entity, "ts": parse_ts(item.get("ts")), "key": item["key"],
             "value_num": value_num(item.get("value")), "value_json": value_json(item.get("value")),
             "quality": str(item.get("quality") or "good")}
            for ex in new_ids.values() for entity, items in ex.values for item in items
        ]
        conn.execute(table.insert(), records)
    return len(records)


def _normalized(present: set) -> set[tuple[int, datetime]]:
    out = set()
    for gid, tick in present:
        out.add((int(gid), tick.replace(tzinfo=timezone.utc) if tick.tzinfo is None else tick))
    return out


WRITERS: dict[str, Callable[[sa.Engine, sa.Table, sa.Table, list[ExecutionValues]], int]] = {
    "postgresql": write_postgresql,
    "mysql": write_mysql,
    "mariadb": write_mysql,
    "sqlite": write_sqlite,
}


def write_tall(engine: sa.Engine, table: sa.Table, ledger: sa.Table, executions: list[ExecutionValues],
               checkpoint: Checkpoint | None = None) -> int:
    """Store ``executions`` in ``table`` through its ``ledger``; returns the values written (those of
    executions already stored are not written again). With ``checkpoint`` the consumer's offset moves in
    the same transaction (``offsets``; the caller has made the offsets table); CheckpointConflict rolls
    everything back."""
    return WRITERS.get(engine.dialect.name, write_generic)(engine, table, ledger, executions, checkpoint)
