"""A log consumer's offset kept in the sink database, committed in the same transaction as the values it covers.

Table ``hubsched_offsets`` (made on first use, beside the values): one row per consumer (a sink's
forwarder: ``sink:<id>`` or ``sink:default``) with the stream it reads and ``last_offset``, the last
record whose values are committed. As Kafka Connect's sinks do, the offset moves only with the data, so
a forwarder that dies and restarts resumes exactly where the database says, neither losing nor
repeating a record (docs/streams.md).

Every move is a compare-and-set from the offset the writer started from (``Checkpoint.previous``):
``UPDATE ... WHERE last_offset = previous`` (an ``INSERT`` for a consumer's first). A second forwarder
of the same sink that also leads (a lease lost during a pause) finds the row moved, its transaction
is rolled back whole (``CheckpointConflict``), and it reads the offset again: the values of one record
are never committed twice by two writers.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import NamedTuple

import sqlalchemy as sa

from .tables import Timestamp, _create
from .errors import SinkError

OFFSETS_TABLE = "hubsched_offsets"


class Checkpoint(NamedTuple):
    """Move ``consumer``'s offset on ``stream`` from ``previous`` (None: it has none yet) to ``offset``."""

    consumer: str
    stream: str
    previous: int | None
    offset: int


class CheckpointConflict(SinkError):
    """The consumer's offset is no longer ``previous``: another forwarder of the sink committed meanwhile."""


def offsets_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        OFFSETS_TABLE,
        metadata,
        sa.Column("consumer", sa.String(200), primary_key=True),
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("last_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )


_made: dict[str, sa.Table] = {}
_made_lock = threading.Lock()


def offsets_ensure(engine: sa.Engine, url: str) -> sa.Table:
    """The offsets table of the database at ``url``, made if missing (once per process and URL)."""
    table = _made.get(url)
    if table is None:
        with _made_lock:
            table = _made.get(url)
            if table is None:
                table = offsets_table(sa.MetaData())
                _create(engine, table)
                _made[url] = table
    return table


def offsets_forget() -> None:
    """Forget which databases have the table (``engines_dispose``, tests)."""
    with _made_lock:
        _made.clear()


def _conflict(checkpoint: Checkpoint) -> CheckpointConflict:
    return CheckpointConflict(f"consumer {checkpoint.consumer!r}: its offset moved past {checkpoint.previous} "
                              "meanwhile (another forwarder of this sink is writing); nothing of this batch was committed")


def checkpoint_raw(cursor, dialect: sa.Dialect, checkpoint: Checkpoint) -> None:
    """Move the offset with the DBAPI ``cursor`` of the values' transaction (``dialect``: the engine's).
    Raises CheckpointConflict (roll the transaction back)."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    now = datetime.now(timezone.utc)
    if dialect.name != "postgresql":  # timestamptz takes the aware time; the others store naive UTC
        now = now.replace(tzinfo=None)
    if checkpoint.previous is None:
        try:
            cursor.execute(f"INSERT INTO {OFFSETS_TABLE} (consumer, stream, last_offset, updated_at) "
                           f"VALUES ({mark}, {mark}, {mark}, {mark})",
                           (checkpoint.consumer, checkpoint.stream, checkpoint.offset, now))
        except dialect.loaded_dbapi.IntegrityError as exc:
            raise _conflict(checkpoint) from exc
        return
    cursor.execute(f"UPDATE {OFFSETS_TABLE} SET last_offset = {mark}, updated_at = {mark} "
                   f"WHERE consumer = {mark} AND last_offset = {mark}",
                   (checkpoint.offset, now, checkpoint.consumer, checkpoint.previous))
    if cursor.rowcount != 1:
        raise _conflict(checkpoint)


def checkpoint_connection(conn: sa.Connection, table: sa.Table, checkpoint: Checkpoint) -> None:
    """Move the offset within SQLAlchemy connection ``conn``'s transaction. Raises CheckpointConflict."""
    now = datetime.now(timezone.utc)
    if checkpoint.previous is None:
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(consumer=checkpoint.consumer, stream=checkpoint.stream,
                                                   last_offset=checkpoint.offset, updated_at=now))
        except sa.exc.IntegrityError as exc:
            raise _conflict(checkpoint) from exc
        return
    moved = conn.execute(table.update()
                         .where(table.c.consumer == checkpoint.consumer, table.c.last_offset == checkpoint.previous)
                         .values(last_offset=checkpoint.offset, updated_at=now))
    if moved.rowcount != 1:
        raise _conflict(checkpoint)


def offset_read(engine: sa.Engine, url: str, consumer: str) -> int | None:
    """``consumer``'s committed offset in this database, None when it has none. Raises SQLAlchemy's errors."""
    table = offsets_ensure(engine, url)
    with engine.connect() as conn:
        return conn.execute(sa.select(table.c.last_offset).where(table.c.consumer == consumer)).scalar()


def offsets_with_prefix(engine: sa.Engine, url: str, prefix: str) -> dict[str, int]:
    """``{consumer: last_offset}`` of the consumers named ``prefix`` or ``prefix:...`` in this database (a sink's
    forwarder lanes). Raises SQLAlchemy's errors."""
    table = offsets_ensure(engine, url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.consumer, table.c.last_offset).where(
            sa.or_(table.c.consumer == prefix, table.c.consumer.startswith(prefix + ":", autoescape=True)))).all()
    return {consumer: offset for consumer, offset in rows}
