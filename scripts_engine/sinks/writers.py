"""Writing one batch of executions' values to one sink, in the sink's layout.

Tall (one row per value, tall.py): COPY on PostgreSQL, LOAD DATA on MySQL/MariaDB, executemany on
SQLite, SQLAlchemy's insertmanyvalues elsewhere; idempotent per execution through the table's
ledger. Wide (one row per execution): one multi-row INSERT per table, idempotent through its unique
tick (``ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite, ``INSERT IGNORE`` on MySQL/MariaDB).
Every write is one transaction, with the forwarder's offset where it gives one (offsets.py).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

import sqlalchemy as sa

from hubsched.secrets import text_mask, url_mask

from .errors import SinkError
from .offsets import Checkpoint, checkpoint_connection, offsets_ensure, offsets_forget
from .tables import WIDE_HUB, JSON_TEXT, NUMBER, TableCache, column_kind, serving_hub, wide_column_name, wide_table_name
from .tall import write_tall
from .values import ExecutionValues, parse_ts, value_json, value_num

QUALITY_RANK = {"good": 0, "uncertain": 1, "bad": 2}


@dataclass(frozen=True)
class SinkTarget:
    """One sink as the data path writes to it. ``local_infile`` (MySQL/MariaDB, ``Sink.local_infile``):
    values go by ``LOAD DATA LOCAL INFILE``, and the driver may send a file, only the one hubsched
    asked to load (``mysql.py``); off (default), by multi-row INSERT and the driver sends no file."""

    name: str
    url: str
    table: str = "hubsched_values"
    layout: str = "tall"
    local_infile: bool = False

_engines: dict[tuple[str, bool], sa.Engine] = {}
_engines_lock = threading.Lock()
tables = TableCache()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def sink_engine(url: str, *, local_infile: bool = False) -> sa.Engine:
    """One engine (and so one connection pool) per URL and ``local_infile`` per process. Raises SinkError
    for a bad URL.

    MySQL/MariaDB through PyMySQL: connections are ``mysql.GuardedConnection``, which sends a file
    only in answer to hubsched's own LOAD DATA of that very file; ``local_infile`` off (the default)
    opens them without the LOCAL capability and the tall layout writes by multi-row INSERT. Other
    MySQL drivers never get ``local_infile`` and write by INSERT as well.
    """
    engine = _engines.get((url, local_infile))
    if engine is not None:
        return engine
    with _engines_lock:
        engine = _engines.get((url, local_infile))
        if engine is None:
            pymysql = _is_pymysql(url)
            try:
                extra = {"connect_args": {"local_infile": bool(local_infile)}} if pymysql else {}
                engine = sa.create_engine(url, pool_pre_ping=True, **extra)
            except Exception as exc:  # a bad URL, a missing driver
                raise SinkError(f"sink URL {url_mask(url)!r}: {_short(exc)}", permanent=True) from None
            if engine.dialect.name == "sqlite":
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            if pymysql:
                from .mysql import guard_connections

                guard_connections(engine)
            if engine.dialect.name in {"mysql", "mariadb"} and not (pymysql and local_infile):
                no_load_data(engine)
            _engines[(url, local_infile)] = engine
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
    offsets_forget()


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


def _write_wide(engine: sa.Engine, target: SinkTarget, executions: list[ExecutionValues],
                checkpoint: Checkpoint | None = None) -> int:
    by_table: dict[str, dict[datetime, ExecutionValues]] = defaultdict(dict)
    for execution in executions:  # an execution delivered twice into one batch counts once
        by_table[wide_table_name(target.table, execution.hub, execution.group)].setdefault(parse_ts(execution.tick), execution)
    column_of: dict[str, str] = {}  # key -> column name: wide_column_name() is a regex, and keys repeat in every execution
    written = 0
    inserts: list[tuple[sa.Table, list[dict]]] = []  # made (DDL) first, then written in one transaction
    for name, by_tick in by_table.items():
        columns: dict[str, str] = {}
        for execution in by_tick.values():
            for _, items in execution.values:
                for item in items:
                    key, value = item["key"], item.get("value")
                    col = column_of.get(key)
                    if col is None:
                        col = column_of[key] = wide_column_name(key)
                    if col not in columns:
                        columns[col] = NUMBER if value is None or value_num(value) is not None else JSON_TEXT
        table = tables.wide(engine, target.url, name, columns)
        kinds = {col: column_kind(table, col) for col in columns}  # the table's, which may differ from this batch's
        records = []
        for tick, execution in by_tick.items():
            record: dict[str, Any] = {c: None for c in columns}
            key_of: dict[str, str] = {}  # column -> the key that filled it in this execution
            stamps = [parse_ts(item.get("ts")) for _, items in execution.values for item in items]
            record.update(tick=tick, ts=max((t for t in stamps if t is not None), default=None))
            qualities = [str(item.get("quality") or "good") for _, items in execution.values for item in items]
            record["quality"] = max(qualities, key=lambda q: QUALITY_RANK.get(q, 2), default="good")
            record[WIDE_HUB] = serving_hub(execution)
            for entity, items in execution.values:
                for item in items:
                    col, value = column_of[item["key"]], item.get("value")
                    if key_of.setdefault(col, item["key"]) != item["key"]:
                        # a name a script made at run time can meet a key in one column; groups.validators refuses
                        # such keys at save time, but a script's names are known only now: fail, never drop one
                        raise SinkError(
                            f"sink {target.name!r}: table {name}, column {col} would hold both {key_of[col]!r} "
                            f"and {item['key']!r}; rename one of them",
                            permanent=True, refused=True,
                        )
                    if kinds[col] == NUMBER:
                        number = value_num(value)
                        if number is None and value is not None:
                            raise SinkError(
                                f"sink {target.name!r}: table {name}, column {col} holds numbers; "
                                f"{entity}.{item['key']} sent {value_json(value)[:80]}",
                                permanent=True, refused=True,
                            )
                        record[col] = number
                    else:
                        record[col] = value_json(value)
            records.append(record)
            written += execution.value_count()
        inserts.append((table, records))
    offsets = offsets_ensure(engine, target.url) if checkpoint is not None else None
    with engine.begin() as conn:
        for table, records in inserts:
            conn.execute(_insert_ignoring_duplicates(engine, table), records)
        if checkpoint is not None:
            checkpoint_connection(conn, offsets, checkpoint)
    return written


def sink_write(*, target: SinkTarget, executions: Iterable[ExecutionValues], checkpoint: Checkpoint | None = None) -> int:
    """Store ``executions`` on ``target`` in one transaction; returns how many values were offered.

    With ``checkpoint`` a log consumer's offset moves in that same transaction (``offsets``: a forwarder
    commits the records it covers with their values), also when no execution holds a value.
    Raises ``SinkError`` when the database cannot be reached or refuses the write (``refused`` says
    which, see SinkError), ``CheckpointConflict`` (a SinkError) when the offset moved meanwhile; nothing
    of the batch is stored then. An execution (group_id, tick) stored before is not stored again (tall:
    its ledger; wide: the unique tick).
    """
    executions = [execution for execution in executions if execution.values]
    offered = sum(execution.value_count() for execution in executions)
    if not offered and checkpoint is None:
        return 0
    engine = sink_engine(target.url, local_infile=target.local_infile)
    try:
        if not offered:
            offsets = offsets_ensure(engine, target.url)
            with engine.begin() as conn:
                checkpoint_connection(conn, offsets, checkpoint)
        elif target.layout == "wide":
            _write_wide(engine, target, executions, checkpoint)
        else:
            table, ledger = tables.tall(engine, target.url, target.table)
            if checkpoint is not None:
                offsets_ensure(engine, target.url)
            write_tall(engine, table, ledger, executions, checkpoint)
    except SinkError:
        raise
    except (sa.exc.SQLAlchemyError, OSError, engine.dialect.loaded_dbapi.Error) as exc:
        raise SinkError(f"sink {target.name!r} ({url_mask(target.url)}): {_short(exc)}",
                        refused=_refused(engine, exc)) from exc
    return offered


# A batch of 50 executions with one refused takes 1 + 6 to 12 writes (one per halving, two where the left
# half holds it); past this many, the executions not yet isolated fail together (a database refusing all).
ISOLATING_ATTEMPTS = 64


def sink_write_isolating(*, target: SinkTarget, executions: list[ExecutionValues]) -> tuple[int, dict[int, SinkError]]:
    """``sink_write``, and where the database refuses the batch's data, the batch split in halves, each
    written in its own transaction, down to the single executions it refuses.

    Returns ``(values offered in the stored executions, {position in executions: SinkError})``.
    Raises the SinkError of the first attempt when it is not a refusal (``SinkError.refused`` false:
    the database is down, a broken connection, a timeout): every execution of the batch fails, at
    once, without more attempts; likewise a half that fails so. A split retry is safe: each write is
    idempotent per execution (tall: the ledger; wide: the unique tick) and a refused one is rolled
    back whole. At most ``ISOLATING_ATTEMPTS`` writes; the executions not isolated by then fail with
    the last refusal.
    """
    try:
        return sink_write(target=target, executions=executions), {}
    except SinkError as exc:
        if not exc.refused or len(executions) == 1:
            raise
        first = exc
    failed: dict[int, SinkError] = {}
    stored: list[tuple[int, int]] = []
    state = {"written": 0, "attempts": 1}

    def attempt(start: int, end: int) -> SinkError | None:
        state["attempts"] += 1
        try:
            state["written"] += sink_write(target=target, executions=executions[start:end])
        except SinkError as exc:
            if not exc.refused:
                raise _Abort(exc) from exc
            return exc
        stored.append((start, end))
        return None

    def split(start: int, end: int, error: SinkError) -> None:
        """[start, end) failed with ``error``: find the executions in it that the database refuses."""
        if end - start == 1 or state["attempts"] >= ISOLATING_ATTEMPTS:
            failed.update((i, error) for i in range(start, end))
            return
        middle = (start + end) // 2
        left = attempt(start, middle)
        if left is None:  # the refused ones are all on the right: no need to try it whole
            split(middle, end, error)
            return
        split(start, middle, left)
        right = attempt(middle, end)
        if right is not None:
            split(middle, end, right)

    try:
        split(0, len(executions), first)
    except _Abort as abort:  # the database went away meanwhile: what is not stored fails with it
        done = {i for a, b in stored for i in range(a, b)}
        failed.update((i, abort.error) for i in range(len(executions)) if i not in done and i not in failed)
    return state["written"], failed


class _Abort(Exception):
    def __init__(self, error: SinkError):
        self.error = error


def _refused(engine: sa.Engine, exc: BaseException) -> bool:
    """Whether a database error refuses the batch's data rather than failing any batch (SinkError.refused).

    Not refused: OSError, SQLAlchemy's own errors (pool timeout), a connection SQLAlchemy invalidated,
    and the DB-API's OperationalError and InterfaceError (PEP 249: connection, locks, timeouts,
    resources), except on MySQL/MariaDB, where PyMySQL raises OperationalError for every server error
    code it has no class for (1292 incorrect datetime value, 4025 CHECK constraint failed): there only
    the client's codes (2000-2999) and the server's connection, lock and resource codes count as not refused.
    """
    if isinstance(exc, OSError):
        return False
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return False
        orig = exc.orig
    elif isinstance(exc, sa.exc.SQLAlchemyError):
        return False
    else:
        orig = exc
    dbapi = engine.dialect.loaded_dbapi
    if isinstance(orig, OSError) or isinstance(orig, dbapi.InterfaceError) or not isinstance(orig, dbapi.Error):
        return False
    if isinstance(orig, dbapi.OperationalError):
        if engine.dialect.name not in {"mysql", "mariadb"}:
            return False
        code = orig.args[0] if orig.args and isinstance(orig.args[0], int) else 2000
        return not (2000 <= code < 3000 or code in _MYSQL_NOT_REFUSED)
    return True


# MySQL/MariaDB server errors that fail any batch: too many connections, host errors, access denied,
# unknown database, shutdown, aborted or killed connections, lock wait timeout, deadlock, read only,
# disconnected for inactivity
_MYSQL_NOT_REFUSED = frozenset({1040, 1041, 1042, 1043, 1044, 1045, 1047, 1049, 1053, 1077, 1078, 1079, 1080, 1081,
                                1129, 1130, 1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161, 1184, 1203,
                                1205, 1213, 1290, 1836, 1927, 4031})


def no_load_data(engine: sa.Engine) -> None:
    from .tall import _NO_LOAD_DATA

    _NO_LOAD_DATA.add(engine)




def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text_mask(text.splitlines()[0][:500]) if text else type(exc).__name__
