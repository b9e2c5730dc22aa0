"""``sql("name")`` inside a sandbox process: the data sources a script may reach, and what each refuses.

A data source is ``{"url": SQLAlchemy URL, "writable": bool, "allow_ddl": bool}`` (a bare URL string
means read-only, no DDL). What is enforced, and where (docs/scripts.md, "SQL"):

- SQLite: SQLite's authorizer (``sqlite3.Connection.set_authorizer``), installed on every new
  connection, refuses ``ATTACH``, ``DETACH``, ``VACUUM`` (``VACUUM INTO`` writes a copy of the whole
  database anywhere the process may write), ``load_extension()`` and every PRAGMA but a list of
  ones that only read; on a read-only source it refuses INSERT/UPDATE/DELETE, and without DDL it
  refuses CREATE/DROP/ALTER and the like. ``PRAGMA query_only`` backs the read-only refusal inside
  SQLite's engine, and ``SQLITE_LIMIT_ATTACHED = 0`` backs the ATTACH refusal.
- PostgreSQL and MySQL/MariaDB: a read-only source runs every call in a read-only transaction
  (``postgresql_readonly``; ``START TRANSACTION READ ONLY``). Unless the source is writable and
  allows DDL, a call is one statement (no ``;`` before the end: a ``COMMIT;`` inside the text would
  end the read-only transaction) and its first keyword must be one of ``_PLAIN_KEYWORDS``: this
  refuses DDL (MySQL commits implicitly before DDL, so its read-only transaction does not).
- Every run starts on clean connections: a pooled connection first checked out in a new run is
  reset (PostgreSQL: ``DISCARD ALL``) or replaced (SQLite, MySQL: their drivers have no reset).

Refusals raise ``SqlError`` reading ``sql("name"): ATTACH is not allowed on a data source``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class SqlError(Exception):
    """A data source refused a query or an insert; the message starts with ``sql("name"):``."""


# --- what a data source is ----------------------------------------------------------------------


class SourceConfig:
    """One data source as the sandbox got it: its URL, and whether it is writable and allows DDL."""

    __slots__ = ("url", "writable", "allow_ddl")

    def __init__(self, url: str, writable: bool = False, allow_ddl: bool = False):
        self.url = url
        self.writable = bool(writable)
        # DDL is a write: on a read-only source allow_ddl has no effect.
        self.allow_ddl = bool(allow_ddl) and self.writable

    @classmethod
    def from_request(cls, value) -> SourceConfig:
        if isinstance(value, str):
            return cls(value)
        return cls(str(value.get("url") or ""), bool(value.get("writable")), bool(value.get("allow_ddl")))

    @property
    def key(self) -> tuple[str, bool, bool]:
        return (self.url, self.writable, self.allow_ddl)


# --- SQLite: the authorizer ---------------------------------------------------------------------

# PRAGMAs a script may run with an argument: the argument names a table, an index or a schema, never a value.
_SQLITE_READ_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
    "foreign_key_list", "foreign_key_check", "database_list", "collation_list", "function_list",
    "module_list", "pragma_list", "compile_options", "integrity_check", "quick_check",
})
# PRAGMAs a script may only read (without "= value"): with a value, each changes the connection or the file.
_SQLITE_SETTING_PRAGMAS = frozenset({
    "application_id", "auto_vacuum", "automatic_index", "busy_timeout", "cache_size", "cache_spill",
    "cell_size_check", "checkpoint_fullfsync", "data_version", "defer_foreign_keys", "encoding",
    "foreign_keys", "freelist_count", "fullfsync", "ignore_check_constraints", "journal_mode",
    "journal_size_limit", "legacy_alter_table", "locking_mode", "max_page_count", "mmap_size",
    "page_count", "page_size", "query_only", "read_uncommitted", "recursive_triggers",
    "reverse_unordered_selects", "schema_version", "secure_delete", "synchronous", "temp_store",
    "trusted_schema", "user_version", "wal_autocheckpoint",
})
_SQLITE_FUNCTIONS_REFUSED = frozenset({"load_extension", "fts3_tokenizer"})
# SQLite's own writes to its schema tables while it prepares a statement (pragma table-valued
# functions, CREATE): SQLite refuses a script's writes to them by itself (writable_schema is refused).
_SQLITE_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master", "sqlite_schema", "sqlite_temp_schema"})


def _sqlite_codes() -> tuple[dict[int, str], dict[int, str]]:
    import sqlite3

    ddl_names = (
        "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER",
        "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX",
        "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW", "ALTER_TABLE",
        "REINDEX", "ANALYZE", "CREATE_VTABLE", "DROP_VTABLE",
    )
    ddl = {getattr(sqlite3, f"SQLITE_{n}"): n.replace("_TEMP_", " TEMP ").replace("_", " ") for n in ddl_names}
    writes = {getattr(sqlite3, f"SQLITE_{n}"): n for n in ("INSERT", "UPDATE", "DELETE")}
    return ddl, writes


class _Refusal:
    """The reason the last statement was refused by the SQLite authorizer (one run at a time per process)."""

    reason: str | None = None


def _sqlite_authorizer(config: SourceConfig):
    import sqlite3

    ok, deny = sqlite3.SQLITE_OK, sqlite3.SQLITE_DENY
    ddl, writes = _sqlite_codes()
    attach, detach, pragma, function = (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_PRAGMA,
                                        sqlite3.SQLITE_FUNCTION)

    def refuse(reason: str) -> int:
        if _Refusal.reason is None:
            _Refusal.reason = reason
        return deny

    def authorize(action: int, arg1, arg2, database, trigger) -> int:
        if action == attach:  # VACUUM (INTO) attaches its target too: the statement's keyword names it
            return refuse("ATTACH is not allowed on a data source")
        if action == detach:
            return refuse("DETACH is not allowed on a data source")
        if action == function:
            if (arg2 or "").lower() in _SQLITE_FUNCTIONS_REFUSED:
                return refuse(f"{arg2}() is not allowed on a data source")
            return ok
        if action == pragma:
            name = (arg1 or "").lower()
            if name in _SQLITE_READ_PRAGMAS or (arg2 is None and name in _SQLITE_SETTING_PRAGMAS):
                return ok
            shown = f"PRAGMA {name}" + (f" = {arg2}" if arg2 is not None else "")
            return refuse(f"{shown} is not allowed on a data source (only PRAGMAs that read are)")
        if action in writes:
            if config.writable or arg1 in _SQLITE_SCHEMA_TABLES:
                return ok
            return refuse(f"{writes[action]} is not allowed on a read-only data source (writable is off)")
        if action in ddl:
            if config.allow_ddl:
                return ok
            return refuse(f"{ddl[action]} is not allowed on a data source without DDL (allow_ddl is off)")
        return ok

    return authorize


def _sqlite_on_connect(config: SourceConfig):
    def on_connect(dbapi_connection, connection_record) -> None:
        import sqlite3

        if not config.writable:
            # Inside SQLite's engine, under the authorizer's refusal: no write reaches the file.
            dbapi_connection.execute("PRAGMA query_only = ON")
        # Behind the authorizer's refusal of ATTACH and VACUUM INTO: no database can be attached at all.
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        dbapi_connection.set_authorizer(_sqlite_authorizer(config))

    return on_connect


# --- PostgreSQL, MySQL and others: one statement, by its first keyword --------------------------

# First keywords of statements that neither define nor alter a schema nor control the session's
# transaction. Anything else (CREATE, DROP, ALTER, TRUNCATE, GRANT, COMMIT, BEGIN, DO, CALL, COPY,
# PREPARE, EXECUTE, LOCK, EXPLAIN (ANALYZE runs its statement) ...) needs a writable source with DDL.
_PLAIN_KEYWORDS = frozenset({
    "SELECT", "WITH", "VALUES", "TABLE", "SHOW", "DESCRIBE", "DESC", "SET",
    "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE",
})
_PLAIN_KEYWORDS_SHOWN = ("SELECT", "WITH", "VALUES", "TABLE", "SHOW", "DESCRIBE", "SET", "INSERT", "UPDATE",
                         "DELETE", "REPLACE", "MERGE")
_WRITE_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE"})


def first_keyword(statement: str) -> str | None:
    """The statement's first keyword, upper case; None when it cannot be told for certain.

    Skips white space, ``(`` and comments (``-- ...`` and ``/* ... */``). A block comment holding
    another ``/*`` (PostgreSQL nests them, MySQL does not) or starting ``/*!`` or ``/*M!`` (MySQL and
    MariaDB run those) gives None, as does any other first character (``#`` is a comment to MySQL).
    """
    i, n = 0, len(statement)
    while i < n:
        c = statement[i]
        if c.isspace() or c == "(":
            i += 1
        elif statement.startswith("--", i):
            end = statement.find("\n", i)
            i = n if end < 0 else end + 1
        elif statement.startswith("/*", i):
            end = statement.find("*/", i + 2)
            body = statement[i + 2:end] if end >= 0 else ""
            if end < 0 or "/*" in body or body.startswith(("!", "M!")):
                return None
            i = end + 2
        else:
            break
    j = i
    while j < n and (statement[j].isalpha() or statement[j] == "_"):
        j += 1
    return statement[i:j].upper() if j > i else None


def statement_refusal(statement: str, config: SourceConfig) -> str | None:
    """Why ``statement`` may not run on a non-SQLite source with ``config``; None when it may."""
    if config.allow_ddl:
        return None
    body = statement.rstrip().rstrip(";")
    if ";" in body:
        return ('one statement per query(): the SQL text has a ";" before its end '
                "(pass values as :parameters, never in the text)")
    keyword = first_keyword(statement)
    if keyword is None:
        return "the statement must begin with its keyword (SELECT, INSERT, ...), not a comment or a symbol"
    if keyword not in _PLAIN_KEYWORDS:
        return (f"{keyword} is not allowed on a data source without DDL (allow_ddl is off; a statement may begin "
                f"with {', '.join(_PLAIN_KEYWORDS_SHOWN)})")
    return None


# --- engines, and a clean connection for every run ----------------------------------------------

_engines: dict[tuple[str, bool, bool], Any] = {}
_run = 0  # the run the sandbox process is in; a pooled connection last used in another run is reset


def run_begins() -> None:
    """Called at the start of every run: connections used by earlier runs are reset before their next use."""
    global _run
    _run += 1


def _backend(engine) -> str:
    name = engine.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


def _on_pool_connect(dbapi_connection, connection_record) -> None:
    connection_record.info["hubsched_run"] = _run


def _on_checkout_for(backend: str):
    import sqlalchemy as sa

    def on_checkout(dbapi_connection, connection_record, connection_proxy) -> None:
        if connection_record.info.get("hubsched_run") == _run:
            return
        if backend != "postgresql":
            # No reset in these drivers: the pool closes this connection and opens a fresh one (which
            # drops SQLite's temp tables, MySQL's temporary tables, user variables and session settings).
            raise sa.exc.DisconnectionError("a data source connection is not carried into another run")
        try:
            dbapi_connection.rollback()
            dbapi_connection.autocommit = True  # DISCARD ALL cannot run inside a transaction block
            try:
                cursor = dbapi_connection.cursor()
                cursor.execute("DISCARD ALL")  # temp tables, settings, prepared statements, locks, LISTEN
                cursor.close()
            finally:
                dbapi_connection.autocommit = False
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"resetting the connection failed: {exc}") from exc
        connection_record.info["hubsched_run"] = _run

    return on_checkout


def engine_for(config: SourceConfig):
    """The engine for ``config`` in this process (one per URL and flags), with its guards installed."""
    engine = _engines.get(config.key)
    if engine is None:
        import sqlalchemy as sa

        engine = sa.create_engine(config.url, pool_pre_ping=True, pool_size=2, max_overflow=0,
                                  pool_reset_on_return="rollback")
        backend = _backend(engine)
        if backend == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_on_connect(config))
        sa.event.listen(engine, "connect", _on_pool_connect)
        sa.event.listen(engine, "checkout", _on_checkout_for(backend))
        _engines[config.key] = engine
    return engine


def engines_dispose() -> None:
    for engine in _engines.values():
        try:
            engine.dispose()
        except Exception:
            pass
    _engines.clear()


# --- what a script holds ------------------------------------------------------------------------


def _plain(value):
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2**63 else float(value)
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return value


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _read_only_violation(exc: Exception, backend: str) -> bool:
    orig = getattr(exc, "orig", None)
    if backend == "postgresql":  # SQLSTATE 25006 read_only_sql_transaction
        return (getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)) == "25006"
    if backend == "mysql":  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        args = getattr(orig, "args", ())
        return bool(args) and args[0] == 1792
    return False


class DataSource:
    """What ``sql("name")`` gives a script: ``query(sql, **params)`` and ``insert(table, rows)``; each is one transaction."""

    __slots__ = ("_name", "_config")

    def __init__(self, name: str, config: SourceConfig):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_config", config)

    def __repr__(self) -> str:
        return f"<data source {self._name!r}>"

    def _error(self, text: str) -> SqlError:
        return SqlError(f'sql("{self._name}"): {text}')

    def query(self, statement: str, **params) -> list[dict]:
        """Run one statement with ``:name`` parameters bound from ``params``; returns the rows as dicts (none for DML).

        Raises ``SqlError`` when the data source refuses the statement (see the module docstring) or
        the database fails it.
        """
        import sqlalchemy as sa

        if not isinstance(statement, str):
            raise TypeError("query() takes the SQL text first, then parameters by name")
        config = self._config
        engine = self._engine()
        backend = _backend(engine)
        if backend != "sqlite":
            refusal = statement_refusal(statement, config)
            if refusal:
                raise self._error(refusal)
        _Refusal.reason = None
        try:
            with engine.connect() as conn:
                if not config.writable and backend == "postgresql":
                    conn = conn.execution_options(postgresql_readonly=True)
                with conn.begin():
                    if not config.writable and backend == "mysql":
                        conn.exec_driver_sql("START TRANSACTION READ ONLY")
                    result = conn.execute(sa.text(statement), params)
                    if not result.returns_rows:
                        return []
                    return [{k: _plain(v) for k, v in row._mapping.items()} for row in result]
        except sa.exc.SQLAlchemyError as exc:
            raise self._database_error(exc, statement, backend) from None
        finally:
            _Refusal.reason = None

    def insert(self, table: str, rows) -> int:
        """Insert ``rows`` (a dict or a list of dicts with the same keys) into ``table``; returns how many.

        Raises ``SqlError`` on a read-only data source, or when the database fails the insert.
        """
        import sqlalchemy as sa

        if isinstance(rows, dict):
            rows = [rows]
        rows = list(rows)
        if not all(isinstance(r, dict) for r in rows):
            raise TypeError("insert() takes a dict or a list of dicts")
        if not isinstance(table, str) or not table:
            raise TypeError("insert(): the table name must be text")
        if not self._config.writable:
            raise self._error("insert() is not allowed on a read-only data source (writable is off)")
        if not rows:
            return 0
        keys = list(rows[0])
        if any(list(r) != keys and set(r) != set(keys) for r in rows):
            raise ValueError("insert(): every row must have the same keys")
        schema, _, name = table.rpartition(".")
        target = sa.table(name, *(sa.column(k) for k in keys), schema=schema or None)
        engine = self._engine()
        _Refusal.reason = None
        try:
            with engine.begin() as conn:
                conn.execute(target.insert(), rows)
        except sa.exc.SQLAlchemyError as exc:
            raise self._database_error(exc, "INSERT", _backend(engine)) from None
        finally:
            _Refusal.reason = None
        return len(rows)

    def _engine(self):
        import sqlalchemy as sa

        config = self._config
        try:
            engine = engine_for(config)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
            raise self._error(f"its URL is not usable: {_short(exc)}") from None
        if not config.writable and _backend(engine) not in ("sqlite", "postgresql", "mysql"):
            raise self._error(
                f"read-only is enforced on SQLite, PostgreSQL and MySQL/MariaDB, not {engine.dialect.name}: "
                "mark the data source writable (and give its database user only the rights it needs)"
            )
        return engine

    def _database_error(self, exc: Exception, statement: str, backend: str) -> SqlError:
        reason = _Refusal.reason
        if reason is not None:
            if reason.startswith("ATTACH") and first_keyword(statement) == "VACUUM":
                into = " INTO" if " INTO " in f" {statement.upper()} " else ""
                reason = f"VACUUM{into} is not allowed on a data source"
            return self._error(reason)
        if not self._config.writable and _read_only_violation(exc, backend):
            keyword = first_keyword(statement)
            what = keyword if keyword in _WRITE_KEYWORDS else "this statement (it writes)"
            return self._error(f"{what} is not allowed on a read-only data source (writable is off)")
        return self._error(_short(exc))


def sql_factory(data_sources: dict[str, Any]):
    """The ``sql`` helper of one run: ``sql("name")`` -> DataSource; ``data_sources`` as in the module docstring."""
    configs = {name: SourceConfig.from_request(value) for name, value in (data_sources or {}).items()}

    def sql(name: str) -> DataSource:
        config = configs.get(name)
        if config is None:
            known = ", ".join(sorted(configs)) or "none"
            raise KeyError(f"no data source named {name!r} (this project has: {known})")
        return DataSource(name, config)

    return sql
