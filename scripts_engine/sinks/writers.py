"""Writing one batch of values to one sink: multi-row INSERT everywhere, COPY where the sink is PostgreSQL.

Every write is one transaction and idempotent: a batch delivered twice stores each value once
(tall: unique (group_id, tick, entity, key); wide: unique tick), through ``ON CONFLICT DO NOTHING``
(PostgreSQL, SQLite) or ``INSERT IGNORE`` (MySQL, MariaDB).
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, NamedTuple

import sqlalchemy as sa

from .tables import JSON_TEXT, NUMBER, TALL_COLUMNS, TableCache, column_kind, identifier, wide_table_name

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


class ValueRow(NamedTuple):
    """One value to store (a tuple: a thousand executions a second make a hundred thousand of these)."""

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
                engine = sa.create_engine(url, pool_pre_ping=True)
            except Exception as exc:  # a bad URL, a missing driver
                raise SinkError(f"sink URL {safe_url(url)!r}: {exc}", permanent=True) from None
            if engine.dialect.name == "sqlite":
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            _engines[url] = engine
    return engine


def engines_dispose() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
    tables.clear()


def parse_ts(ts: str | datetime | None) -> datetime | None:
    """RFC 3339 (hub protocol v1: UTC with milliseconds) to an aware UTC datetime; None when absent or unreadable."""
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


def value_num(value: Any) -> float | None:
    """The value as a double when it is a finite number or a boolean, else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def value_json(value: Any) -> str:
    """Any hub value as JSON text; NaN and infinities (not JSON) become their names as strings."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(str(value))


def tall_record(row: ValueRow) -> dict[str, Any]:
    return {
        "tick": parse_ts(row.tick),
        "ts": parse_ts(row.ts),
        "project": row.project,
        "hub": row.hub,
        "group_id": row.group_id,
        "group_name": row.group,
        "entity": row.entity,
        "key": row.key,
        "value_num": value_num(row.value),
        "value_json": value_json(row.value),
        "quality": row.quality,
    }


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


# --- PostgreSQL COPY (text format) ---------------------------------------------------------------

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value).translate(_COPY_ESCAPES)


# hub protocol v1: ts is RFC 3339 UTC with milliseconds; PostgreSQL reads that text as it is
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)\Z")


def _copy_lines(rows: list[ValueRow]) -> Iterable[str]:
    """COPY text lines of the tall layout, straight from the rows.

    Rows come in runs from one execution (same tick, project, hub, group, entity): the part of the
    line they share is encoded once per run, not once per value.
    """
    head_of = None
    plain: dict[str, str] = {}  # keys and qualities repeat in every execution: escape each once
    for row in rows:
        shared = (row.tick, row.project, row.hub, row.group_id, row.group, row.entity)
        if shared != head_of:
            head_of = shared
            tick = _copy_field(parse_ts(row.tick))
            rest = "\t".join((_copy_field(row.project), _copy_field(row.hub), str(int(row.group_id)),
                              _copy_field(row.group), _copy_field(row.entity)))
        ts = row.ts
        if not (isinstance(ts, str) and _RFC3339.match(ts)):
            ts = parse_ts(ts)
        value = row.value
        if type(value) is float and math.isfinite(value):
            number = text = repr(value)
        else:
            number = value_num(value)
            number = "\\N" if number is None else repr(number)
            text = value_json(value).translate(_COPY_ESCAPES)
        key = plain.get(row.key)
        if key is None:
            key = plain[row.key] = _copy_field(row.key)
        quality = plain.get(row.quality)
        if quality is None:
            quality = plain[row.quality] = _copy_field(row.quality)
        yield f"{tick}\t{_copy_field(ts)}\t{rest}\t{key}\t{number}\t{text}\t{quality}\n"


def _copy_tall(engine: sa.Engine, table: sa.Table, rows: list[ValueRow]) -> None:
    """COPY into a temporary staging table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING."""
    buffer = io.StringIO()
    buffer.writelines(_copy_lines(rows))
    buffer.seek(0)
    quote = engine.dialect.identifier_preparer.quote
    stage = quote(f"stage_{table.name}"[:60])
    columns = ", ".join(quote(c) for c in TALL_COLUMNS)
    connection = engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS "
                f"AS SELECT {columns} FROM {quote(table.name)} WITH NO DATA"
            )
            cursor.copy_expert(f"COPY {stage} ({columns}) FROM STDIN", buffer)
            cursor.execute(f"INSERT INTO {quote(table.name)} ({columns}) SELECT {columns} FROM {stage} ON CONFLICT DO NOTHING")
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.close()


# --- layouts --------------------------------------------------------------------------------------


def _write_tall(engine: sa.Engine, target: SinkTarget, rows: list[ValueRow]) -> None:
    table = tables.tall(engine, target.url, target.table)
    if engine.dialect.name == "postgresql":
        _copy_tall(engine, table, rows)
        return
    records = [tall_record(r) for r in rows]
    with engine.begin() as conn:
        conn.execute(_insert_ignoring_duplicates(engine, table), records)


def _write_wide(engine: sa.Engine, target: SinkTarget, rows: list[ValueRow]) -> None:
    by_table: dict[str, dict[datetime, list[ValueRow]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_table[wide_table_name(target.table, row.hub, row.group)][parse_ts(row.tick)].append(row)
    column_of: dict[str, str] = {}  # key -> column name: identifier() is a regex, and keys repeat in every execution
    for name, executions in by_table.items():
        columns: dict[str, str] = {}
        for execution in executions.values():
            for row in execution:
                col = column_of.get(row.key)
                if col is None:
                    col = column_of[row.key] = identifier(row.key)
                if col not in columns:
                    columns[col] = NUMBER if row.value is None or value_num(row.value) is not None else JSON_TEXT
        table = tables.wide(engine, target.url, name, columns)
        kinds = {col: column_kind(table, col) for col in columns}  # the table's, which may differ from this batch's
        records = []
        for tick, execution in executions.items():
            record: dict[str, Any] = {c: None for c in columns}
            record.update(tick=tick, ts=max((parse_ts(r.ts) for r in execution if r.ts), default=None))
            record["quality"] = max((r.quality for r in execution), key=lambda q: QUALITY_RANK.get(q, 2), default="good")
            for row in execution:
                col = column_of[row.key]
                if kinds[col] == NUMBER:
                    number = value_num(row.value)
                    if number is None and row.value is not None:
                        raise SinkError(
                            f"sink {target.name!r}: table {name}, column {col} holds numbers; "
                            f"{row.entity}.{row.key} sent {value_json(row.value)[:80]}",
                            permanent=True,
                        )
                    record[col] = number
                else:
                    record[col] = value_json(row.value)
            records.append(record)
        with engine.begin() as conn:
            conn.execute(_insert_ignoring_duplicates(engine, table), records)


def sink_write(*, target: SinkTarget, rows: Iterable[ValueRow]) -> int:
    """Store ``rows`` on ``target`` in one transaction per table; returns how many values were offered.

    Raises ``SinkError`` when the database cannot be reached or refuses the write; nothing of the
    batch is stored in that table then.
    """
    rows = list(rows)
    if not rows:
        return 0
    engine = sink_engine(target.url)
    try:
        if target.layout == "wide":
            _write_wide(engine, target, rows)
        else:
            _write_tall(engine, target, rows)
    except SinkError:
        raise
    except (sa.exc.SQLAlchemyError, OSError, engine.dialect.loaded_dbapi.Error) as exc:
        raise SinkError(f"sink {target.name!r} ({safe_url(target.url)}): {_short(exc)}") from exc
    return len(rows)


def safe_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unreadable URL>"


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:500] if text else type(exc).__name__
