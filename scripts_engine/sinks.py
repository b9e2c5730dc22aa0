"""SQL sinks through SQLAlchemy: where every polled value is stored (the one adapter for sink databases).

Tall layout (default), table ``hubsched_values``, created on first use:

=========== ======================= ===================================================================
column      type                    meaning
=========== ======================= ===================================================================
id          integer, primary key    row number
tick        timestamp (UTC)         the scheduled tick of the execution that read the value
ts          timestamp (UTC), null   the hub's timestamp of the value (hub protocol v1: ``ts``)
project     varchar(200)            project name
hub         varchar(200)            hub name
group_id    integer                 hubsched group id
group_name  varchar(200)            group name
entity      varchar(500)            entity id on the hub; "" for a value the script computed
key         varchar(200)            parameter key (or the script's binding name)
value_num   double, null            the value when it is a number or a boolean, else null
value_json  text                    the value as JSON, always (strings, arrays of objects: stored faithfully)
quality     varchar(16)             good, uncertain or bad (hub protocol v1)
=========== ======================= ===================================================================

A unique key on (group_id, tick, entity, key) makes writes idempotent: a batch delivered twice
stores each value once (``ON CONFLICT DO NOTHING`` / ``INSERT IGNORE``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from django.conf import settings
from sqlalchemy.dialects import mysql

DEFAULT_TABLE = "hubsched_values"


class SinkError(Exception):
    """A sink could not be reached or written; the message names the sink (never its password)."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass(frozen=True)
class SinkTarget:
    name: str
    url: str
    table: str = DEFAULT_TABLE
    layout: str = "tall"


@dataclass(frozen=True)
class ValueRow:
    tick: datetime
    ts: str | datetime | None
    project: str
    hub: str
    group_id: int
    group: str
    entity: str
    key: str
    value: Any
    quality: str = "good"


def sink_targets_for_project(*, project_id: int) -> list[SinkTarget]:
    """The project's enabled sinks; the settings' default sink (HUBSCHED_SINK_URL) when it has none."""
    from .models import Sink

    targets = [
        SinkTarget(name=s.name, url=s.url, table=s.table or DEFAULT_TABLE, layout=s.layout)
        for s in Sink.objects.enabled().filter(project_id=project_id)
    ]
    return targets or [SinkTarget(name="default", url=settings.HUBSCHED_SINK_URL)]


_engines: dict[str, sa.Engine] = {}
_tables: dict[tuple[str, str], sa.Table] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def sink_engine(url: str) -> sa.Engine:
    """One engine (and so one connection pool) per URL per process."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            try:
                engine = sa.create_engine(url, pool_pre_ping=True)
            except Exception as exc:  # a bad URL, a missing driver
                raise SinkError(f"sink URL {_safe(url)!r}: {exc}", permanent=True) from None
            if engine.dialect.name == "sqlite":
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            _engines[url] = engine
        return engine


def sinks_dispose() -> None:
    """Close every pooled sink connection (after fork, and in tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _tables.clear()


# MySQL/MariaDB DATETIME keeps whole seconds unless told otherwise; hub timestamps carry milliseconds.
# Times are stored as UTC everywhere (MySQL's DATETIME has no zone).
Timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def tall_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("tick", Timestamp, nullable=False),
        sa.Column("ts", Timestamp, nullable=True),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("hub", sa.String(200), nullable=False),
        sa.Column("group_id", sa.Integer, nullable=False),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("entity", sa.String(500), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("value_num", sa.Float(precision=53), nullable=True),
        sa.Column("value_json", sa.Text, nullable=False),
        sa.Column("quality", sa.String(16), nullable=False),
        # serves idempotent writes, and "values of a group over time"
        sa.UniqueConstraint("group_id", "tick", "entity", "key", name=f"uq_{name}_value"),
    )


def _table(engine: sa.Engine, url: str, name: str) -> sa.Table:
    cache_key = (url, name)
    table = _tables.get(cache_key)
    if table is not None:
        return table
    with _lock:  # worker threads of one process create it once
        table = _tables.get(cache_key)
        if table is None:
            metadata = sa.MetaData()
            table = tall_table(metadata, name)
            try:
                metadata.create_all(engine, checkfirst=True)
            except sa.exc.DatabaseError:
                # another process created it between the check and the CREATE: fine if it is there now
                if not sa.inspect(engine).has_table(name):
                    raise
            _tables[cache_key] = table
    return table


def parse_ts(ts: str | datetime | None) -> datetime | None:
    """RFC 3339 (hub protocol v1: UTC with milliseconds) to an aware datetime; None when absent or unreadable."""
    if ts is None:
        return None
    if isinstance(ts, datetime):
        parsed = ts
    else:
        try:
            parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except (AttributeError, TypeError, ValueError):
            return None
    return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        number = float(value)
        return number if number == number and abs(number) != float("inf") else None
    return None


def value_json(value: Any) -> str:
    """Any hub value as JSON text; NaN and infinities (not JSON) become their names as strings."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(str(value))


def row_dict(row: ValueRow) -> dict[str, Any]:
    return {
        "tick": parse_ts(row.tick),
        "ts": parse_ts(row.ts),
        "project": row.project,
        "hub": row.hub,
        "group_id": row.group_id,
        "group_name": row.group,
        "entity": row.entity,
        "key": row.key,
        "value_num": _num(row.value),
        "value_json": value_json(row.value),
        "quality": row.quality,
    }


def _insert_ignoring_duplicates(engine: sa.Engine, table: sa.Table):
    dialect = engine.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(table).on_conflict_do_nothing(constraint=f"uq_{table.name}_value")
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert

        return insert(table).on_conflict_do_nothing()
    if dialect in {"mysql", "mariadb"}:
        return table.insert().prefix_with("IGNORE")
    return table.insert()


def sink_write(*, target: SinkTarget, rows: Iterable[ValueRow]) -> int:
    """Store ``rows`` in one transaction on ``target``; returns how many were offered.

    Raises ``SinkError`` when the database cannot be reached or refuses the write; nothing of the
    batch is stored then (one transaction).
    """
    payload = [row_dict(r) for r in rows]
    if not payload:
        return 0
    engine = sink_engine(target.url)
    try:
        table = _table(engine, target.url, target.table)
        with engine.begin() as conn:
            conn.execute(_insert_ignoring_duplicates(engine, table), payload)
    except sa.exc.SQLAlchemyError as exc:
        raise SinkError(f"sink {target.name!r} ({_safe(target.url)}): {_short(exc)}") from exc
    return len(payload)


def sinks_write(*, targets: list[SinkTarget], rows: list[ValueRow]) -> None:
    """Write ``rows`` to every target; raises ``SinkError`` naming the first that failed after trying all."""
    errors = []
    for target in targets:
        try:
            sink_write(target=target, rows=rows)
        except SinkError as exc:
            errors.append(exc.message)
    if errors:
        raise SinkError("; ".join(errors))


def _safe(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unreadable URL>"


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:500] if text else type(exc).__name__
