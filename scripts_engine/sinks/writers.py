"""Writing one batch of executions' values to one sink, in the sink's layout.

Tall (one row per value, tall.py): COPY on PostgreSQL, LOAD DATA on MySQL/MariaDB, executemany on
SQLite, SQLAlchemy's insertmanyvalues elsewhere; idempotent per execution through the table's
ledger. Wide (one row per execution): one multi-row INSERT per table, idempotent through its unique
tick (``ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite, ``INSERT IGNORE`` on MySQL/MariaDB).
Every write is one transaction per table.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

import sqlalchemy as sa

from .tables import JSON_TEXT, NUMBER, TableCache, column_kind, identifier, wide_table_name
from .tall import write_tall
from .values import ExecutionValues, parse_ts, value_json, value_num

QUALITY_RANK = {"good": 0, "uncertain": 1, "bad": 2}


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
    table: str = "hubsched_values"
    layout: str = "tall"

_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()
tables = TableCache()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def sink_engine(url: str) -> sa.Engine:
    """One engine (and so one connection pool) per URL per process. Raises SinkError for a bad URL."""
    engine = _engines.get(url)
    if engine is not None:
        return engine
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            try:
                # tall.write_mysql sends LOAD DATA LOCAL INFILE, which PyMySQL refuses unless asked
                extra = {"connect_args": {"local_infile": True}} if _is_pymysql(url) else {}
                engine = sa.create_engine(url, pool_pre_ping=True, **extra)
            except Exception as exc:  # a bad URL, a missing driver
                raise SinkError(f"sink URL {safe_url(url)!r}: {exc}", permanent=True) from None
            if engine.dialect.name == "sqlite":
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            _engines[url] = engine
    return engine


def _is_pymysql(url: str) -> bool:
    try:
        parsed = sa.engine.make_url(url)
    except Exception:
        return False
    return parsed.get_backend_name() in {"mysql", "mariadb"} and parsed.get_driver_name() == "pymysql"


def engines_dispose() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
    tables.clear()


def _insert_ignoring_duplicates(engine: sa.Engine, table: sa.Table):
    dialect = engine.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert

        return insert(table).on_conflict_do_nothing()
    if dialect in {"mysql", "mariadb"}:
        return table.insert().prefix_with("IGNORE")
    return table.insert()


# --- layouts --------------------------------------------------------------------------------------


def _write_wide(engine: sa.Engine, target: SinkTarget, executions: list[ExecutionValues]) -> int:
    by_table: dict[str, dict[datetime, ExecutionValues]] = defaultdict(dict)
    for execution in executions:  # an execution delivered twice into one batch counts once
        by_table[wide_table_name(target.table, execution.hub, execution.group)].setdefault(parse_ts(execution.tick), execution)
    column_of: dict[str, str] = {}  # key -> column name: identifier() is a regex, and keys repeat in every execution
    written = 0
    for name, by_tick in by_table.items():
        columns: dict[str, str] = {}
        for execution in by_tick.values():
            for _, items in execution.values:
                for item in items:
                    key, value = item["key"], item.get("value")
                    col = column_of.get(key)
                    if col is None:
                        col = column_of[key] = identifier(key)
                    if col not in columns:
                        columns[col] = NUMBER if value is None or value_num(value) is not None else JSON_TEXT
        table = tables.wide(engine, target.url, name, columns)
        kinds = {col: column_kind(table, col) for col in columns}  # the table's, which may differ from this batch's
        records = []
        for tick, execution in by_tick.items():
            record: dict[str, Any] = {c: None for c in columns}
            stamps = [parse_ts(item.get("ts")) for _, items in execution.values for item in items]
            record.update(tick=tick, ts=max((t for t in stamps if t is not None), default=None))
            qualities = [str(item.get("quality") or "good") for _, items in execution.values for item in items]
            record["quality"] = max(qualities, key=lambda q: QUALITY_RANK.get(q, 2), default="good")
            for entity, items in execution.values:
                for item in items:
                    col, value = column_of[item["key"]], item.get("value")
                    if kinds[col] == NUMBER:
                        number = value_num(value)
                        if number is None and value is not None:
                            raise SinkError(
                                f"sink {target.name!r}: table {name}, column {col} holds numbers; "
                                f"{entity}.{item['key']} sent {value_json(value)[:80]}",
                                permanent=True,
                            )
                        record[col] = number
                    else:
                        record[col] = value_json(value)
            records.append(record)
            written += execution.value_count()
        with engine.begin() as conn:
            conn.execute(_insert_ignoring_duplicates(engine, table), records)
    return written


def sink_write(*, target: SinkTarget, executions: Iterable[ExecutionValues]) -> int:
    """Store ``executions`` on ``target`` in one transaction per table; returns how many values were offered.

    Raises ``SinkError`` when the database cannot be reached or refuses the write; nothing of the
    batch is stored in that table then. An execution (group_id, tick) stored before is not stored
    again (tall: its ledger; wide: the unique tick).
    """
    executions = list(executions)
    offered = sum(execution.value_count() for execution in executions)
    if not offered:
        return 0
    engine = sink_engine(target.url)
    try:
        if target.layout == "wide":
            _write_wide(engine, target, executions)
        else:
            table, ledger = tables.tall(engine, target.url, target.table)
            write_tall(engine, table, ledger, executions)
    except SinkError:
        raise
    except (sa.exc.SQLAlchemyError, OSError, engine.dialect.loaded_dbapi.Error) as exc:
        raise SinkError(f"sink {target.name!r} ({safe_url(target.url)}): {_short(exc)}") from exc
    return offered


def safe_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unreadable URL>"


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:500] if text else type(exc).__name__
