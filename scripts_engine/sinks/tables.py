"""Sink table layouts (tall and wide), created on first use and cached per process.

Tall (default), one row per value, table ``hubsched_values`` (the sink's ``table``):

=========== ======================= ===================================================================
column      type                    meaning
=========== ======================= ===================================================================
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

An index on (group_id, tick) serves "values of a group over time". The table has no row id and no
unique key per value: a per-value unique index cost PostgreSQL three times the CPU of the COPY
itself (docs/data-path.md). Writes are made idempotent per execution instead, by the table's
ledger ``<table>_executions`` (``executions_table``): one row per stored execution, primary key
(group_id, tick). A batch inserts its executions there first, skipping those already present, and
stores the values of the new ones only, in the same transaction; an execution's values always go
in one write (a forwarder's batch holds whole executions), so a delivery twice stores them once.

Wide (SCADA transaction groups), one table per group named ``<table>_<hub>_<group>``, one row per
execution: ``id``, ``tick`` (unique), ``ts`` (the newest value timestamp), ``quality`` (the worst of
the row's values), ``_hub`` (the hub that served the row: its group's hub, or the redundancy set's member
that served the tick; added to older tables by ALTER TABLE, null in their old rows), then one column per binding: double for numbers, integers and booleans, JSON
text for anything else. A binding that appears later adds its column (ALTER TABLE ... ADD).
"""

from __future__ import annotations

import json
import re
import threading
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

DEFAULT_TABLE = "hubsched_values"
MAX_IDENTIFIER = 60  # PostgreSQL cuts at 63, MySQL refuses past 64

# MySQL/MariaDB DATETIME keeps whole seconds unless told otherwise; hub timestamps carry milliseconds.
# Times are stored as UTC everywhere (MySQL's DATETIME has no zone).
Timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
RowId = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TALL_COLUMNS = (
    "tick", "ts", "project", "hub", "group_id", "group_name", "entity", "key", "value_num", "value_json", "quality",
)
NUMBER, JSON_TEXT = "number", "json"


def tall_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE) -> sa.Table:
    return sa.Table(
        name,
        metadata,
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
        sa.Index(f"ix_{name}_group_tick"[:MAX_IDENTIFIER], "group_id", "tick"),  # values of a group over time
    )


def ledger_name(table: str) -> str:
    """The name of the executions ledger of tall table ``table``: ``<table>_executions``, shortened
    with a hash of the whole name where that would pass MAX_IDENTIFIER."""
    name = f"{table}_executions"
    if len(name) <= MAX_IDENTIFIER:
        return name
    import hashlib

    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    return f"{table[:MAX_IDENTIFIER - 15]}_{digest}_execs"


def executions_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """The ledger of a tall table (see the module doc): one row per stored execution, ``values_count``
    the values it stored there."""
    return sa.Table(
        name,
        metadata,
        sa.Column("group_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("tick", Timestamp, primary_key=True),
        sa.Column("values_count", sa.Integer, nullable=False),
    )


def identifier(text: str) -> str:
    """A portable SQL identifier from free text: lower case, [a-z0-9_], starting with a letter."""
    name = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"
    return name if name[0].isalpha() else f"c_{name}"


def wide_table_name(prefix: str, hub: str, group: str) -> str:
    return identifier(f"{prefix}_{hub}_{group}")[:MAX_IDENTIFIER]


def wide_table(metadata: sa.MetaData, name: str, columns: dict[str, str]) -> sa.Table:
    """``columns`` maps column name to NUMBER or JSON_TEXT, in order."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tick", Timestamp, nullable=False, unique=True),  # serves idempotent writes
        sa.Column("ts", Timestamp, nullable=True),
        sa.Column("quality", sa.String(16), nullable=False),
        sa.Column(WIDE_HUB, sa.String(200), nullable=True),  # the hub that served the row (docs/redundancy.md)
        *[sa.Column(col, sa.Float(precision=53) if kind == NUMBER else sa.Text, nullable=True) for col, kind in columns.items()],
    )


class TableCache:
    """Tables known to exist, per (URL, name); creation is serialized per process and safe across processes."""

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str], sa.Table] = {}
        self._talls: dict[tuple[str, str], tuple[sa.Table, sa.Table]] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()
            self._talls.clear()

    def tall(self, engine: sa.Engine, url: str, name: str) -> tuple[sa.Table, sa.Table]:
        """The tall table ``name`` and its executions ledger, both made if missing."""
        tables = self._talls.get((url, name))
        if tables is not None:
            return tables
        with self._lock:
            tables = self._talls.get((url, name))
            if tables is None:
                tables = (tall_table(sa.MetaData(), name), executions_table(sa.MetaData(), ledger_name(name)))
                for table in tables:
                    _create(engine, table)
                self._talls[(url, name)] = tables
        return tables

    def wide(self, engine: sa.Engine, url: str, name: str, columns: dict[str, str]) -> sa.Table:
        """The wide table with at least ``columns``; adds missing ones. Raises ValueError on a type clash."""
        table = self._tables.get((url, name))
        if table is not None and all(c in table.c for c in columns):
            return table
        with self._lock:
            table = self._tables.get((url, name))
            if table is None:
                table = _reflect(engine, name)
            if table is None:
                table = wide_table(sa.MetaData(), name, columns)
                _create(engine, table)
            missing = {c: k for c, k in columns.items() if c not in table.c}
            if missing or WIDE_HUB not in table.c:
                with engine.begin() as conn:
                    if WIDE_HUB not in table.c:  # a table made before the column existed gets it (null in old rows)
                        compiled = sa.String(200).compile(dialect=engine.dialect)
                        conn.execute(sa.text(f"ALTER TABLE {_quote(engine, name)} ADD COLUMN {_quote(engine, WIDE_HUB)} {compiled}"))
                    for col, kind in missing.items():
                        sql_type = sa.Float(precision=53) if kind == NUMBER else sa.Text()
                        compiled = sql_type.compile(dialect=engine.dialect)
                        conn.execute(sa.text(f"ALTER TABLE {_quote(engine, name)} ADD COLUMN {_quote(engine, col)} {compiled}"))
                table = _reflect(engine, name)
            self._tables[(url, name)] = table
        return table


def column_kind(table: sa.Table, column: str) -> str:
    return NUMBER if isinstance(table.c[column].type, sa.Float) else JSON_TEXT


def _quote(engine: sa.Engine, name: str) -> str:
    return engine.dialect.identifier_preparer.quote(name)


def _reflect(engine: sa.Engine, name: str) -> sa.Table | None:
    if not sa.inspect(engine).has_table(name):
        return None
    metadata = sa.MetaData()
    table = sa.Table(name, metadata, autoload_with=engine)
    # reflected DATETIME loses the time zone flag; restore the declared types
    for col in ("tick", "ts"):
        table.c[col].type = Timestamp
    for col in table.c:
        if isinstance(col.type, (sa.Float, sa.Double)) or col.type.__class__.__name__ in {"DOUBLE", "DOUBLE_PRECISION", "REAL"}:
            col.type = sa.Float(precision=53)
    return table


def _create(engine: sa.Engine, table: sa.Table) -> None:
    try:
        table.metadata.create_all(engine, tables=[table], checkfirst=True)
    except sa.exc.DatabaseError:
        # another process created it between the check and the CREATE: fine if it is there now
        if not sa.inspect(engine).has_table(table.name):
            raise


# --- wide layout names: the rules a group must keep so that no value is lost (docs/data-path.md, "Wide layout names")

WIDE_RESERVED = frozenset({"id", "tick", "ts", "quality"})  # the wide table's own columns (wide_table)
# The wide table's column of the hub that served a row (a redundancy set's member, docs/redundancy.md). Its leading
# underscore is one no key's column can have (``identifier`` strips it), so it never meets a key's column.
WIDE_HUB = "_hub"


def serving_hub(execution) -> str:
    """The name of the hub that served ``execution`` (an ExecutionValues): its ``served_by`` member of a
    redundancy set when it carries one, else its ``hub``."""
    return getattr(execution, "served_by", "") or execution.hub
WIDE_KEY_PREFIX = "k_"


def wide_column_name(key: str) -> str:
    """The wide column of parameter key (or binding name) ``key``: ``identifier(key)``, and ``k_<that>``
    when it would be one of the table's own columns (``WIDE_RESERVED``: id, tick, ts, quality).

    The mapping is fixed per key, whatever else the group holds, so a column keeps its meaning across
    executions and groups. Two keys may still map to one column (``P1`` and ``p1``, ``p-1`` and ``p_1``,
    ``id`` and ``k_id``); ``wide_columns_problems`` refuses such groups.
    """
    name = identifier(key)
    return f"{WIDE_KEY_PREFIX}{name}" if name in WIDE_RESERVED else name


def wide_columns_problems(keys: Sequence[str], labels: Sequence[str] | None = None) -> list[tuple[int, str]]:
    """Why the keys of one group cannot be stored in a wide table without losing a value: ``[(index, message)]``.

    ``keys`` are the names the wide writer makes columns of (the group keys' parameter keys), in the
    group's order; ``labels`` name them in messages (default: the keys; e.g. ``entity.key``). Refused:
    a key whose column (``wide_column_name``) another key of the group already has (one value of every
    execution would be lost), and a column longer than MAX_IDENTIFIER characters (PostgreSQL cuts
    names at 63 bytes, MySQL refuses past 64). ``index`` is the later key of a pair. Empty: no problem.
    """
    labels = keys if labels is None else labels
    first: dict[str, int] = {}
    problems = []
    for index, key in enumerate(keys):
        column = wide_column_name(key)
        if len(column) > MAX_IDENTIFIER:
            problems.append((index, f"{labels[index]}: its wide column {json.dumps(column)} is longer than {MAX_IDENTIFIER} "
                                    "characters (a column name of PostgreSQL and MySQL is at most 63)"))
        elif column in first:
            other = first[column]
            problems.append((index, f"{labels[other]} and {labels[index]} would share the wide column {json.dumps(column)} "
                                    "(a wide sink stores one column per parameter key, lower case, other characters as _): "
                                    "one value of every execution would be lost"))
        else:
            first[column] = index
    return problems


def wide_table_collisions(*, prefix: str, groups: Sequence[tuple[str, str]]) -> list[tuple[int, int, str]]:
    """Groups that would write the same wide table of a sink whose table (prefix) is ``prefix``.

    ``groups`` is ``[(hub name, group name)]``; returns ``[(index, index of the earlier group, table name)]``
    for each group whose ``wide_table_name`` an earlier one has (``a_b``/``c`` and ``a``/``b_c`` both
    make ``<prefix>_a_b_c``; names differing in case or punctuation, or only past MAX_IDENTIFIER, too).
    """
    first: dict[str, int] = {}
    collisions = []
    for index, (hub, group) in enumerate(groups):
        name = wide_table_name(prefix, hub, group)
        if name in first:
            collisions.append((index, first[name], name))
        else:
            first[name] = index
    return collisions
