"""sql() in scripts, for real on SQLite, PostgreSQL and MariaDB: bound parameters, rows as dicts, inserts,
read-only unless writable, DDL only where allowed, and no connection state carried from one run to the next."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from hubsched.testing import mariadb_url, postgres_url
from scripts_engine.sandbox import ScriptError, pool, script_execute


def writable(url: str, allow_ddl: bool = False) -> dict:
    return {"url": url, "writable": True, "allow_ddl": allow_ddl}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def source(request, tmp_path):
    """A data source URL with a fresh ``readings`` table (id, name, value) holding two rows; returns (url, table)."""
    url = {"sqlite": lambda: f"sqlite:///{tmp_path / 'source.sqlite3'}", "postgresql": postgres_url,
           "mariadb": mariadb_url}[request.param]()
    table = f"readings_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(50), value FLOAT)"))
        conn.execute(sa.text(f"INSERT INTO {table} (id, name, value) VALUES (5, 'pump1', 2.5), (6, 'pump2', 4.0)"))
    yield url, table
    with engine.begin() as conn:
        for name in sa.inspect(engine).get_table_names():
            if name.startswith(table):
                conn.execute(sa.text(f"DROP TABLE {name}"))
    engine.dispose()


@pytest.fixture
def one_sandbox():
    """Every run in one sandbox process, so that a second run meets the first one's pooled connections."""
    pool.sandbox_pool_close()
    with pool._pool_lock:
        pool._pool = pool.SandboxPool(size=1)
    yield
    pool.sandbox_pool_close()


def rows_of(url: str, table: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        got = [tuple(r) for r in conn.execute(sa.text(f"SELECT id, name, value FROM {table} ORDER BY id"))]
    engine.dispose()
    return got


def refused(code: str, data_sources: dict) -> ScriptError:
    with pytest.raises(ScriptError) as caught:
        script_execute(code=code, bindings={}, data_sources=data_sources)
    assert caught.value.kind == "runtime"
    return caught.value


# --- queries and inserts ------------------------------------------------------------------------


def test_a_script_queries_with_bound_parameters_and_inserts_a_row(source):
    url, table = source
    code = (
        f"rows = sql('plant').query('SELECT name, value FROM {table} WHERE id = :id', id=5)\n"
        "limit = rows[0]['value'] * p1\n"
        f"n = sql('plant').insert('{table}', [{{'id': 7, 'name': 'derived', 'value': limit}}])\n"
    )
    result = script_execute(code=code, bindings={"p1": 2}, data_sources={"plant": writable(url)})
    assert result.bindings["rows"] == [{"name": "pump1", "value": 2.5}]
    assert (result.bindings["limit"], result.bindings["n"]) == (5.0, 1)
    assert rows_of(url, table)[-1] == (7, "derived", 5.0)


def test_a_parameter_is_bound_never_spliced_into_the_sql(source):
    url, table = source
    hostile = f"x'; DROP TABLE {table}; --"
    code = f"rows = sql('plant').query('SELECT id FROM {table} WHERE name = :name', name=hostile)"
    result = script_execute(code=code, bindings={"hostile": hostile}, data_sources={"plant": writable(url, True)})
    assert result.bindings["rows"] == []
    assert len(rows_of(url, table)) == 2  # the table is still there, untouched


def test_insert_takes_several_rows_in_one_transaction(source):
    url, table = source
    code = f"n = sql('plant').insert('{table}', [{{'id': 8, 'name': 'a', 'value': 1}}, {{'id': 9, 'name': 'b', 'value': 2}}])"
    assert script_execute(code=code, bindings={}, data_sources={"plant": writable(url)}).bindings["n"] == 2
    assert [r[0] for r in rows_of(url, table)] == [5, 6, 8, 9]


def test_a_failing_statement_is_an_error_naming_the_data_source_and_the_script_line(source):
    url, table = source
    code = f"x = 1\nsql('plant').insert('{table}', {{'id': 5, 'name': 'dup', 'value': 0}})"  # id 5 exists
    error = refused(code, {"plant": writable(url)})
    assert error.line == 2
    assert 'SqlError: sql("plant"): ' in str(error)
    assert len(rows_of(url, table)) == 2


def test_an_unknown_data_source_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(ScriptError) as caught:
        script_execute(code="sql('nope')", bindings={}, data_sources={"plant": f"sqlite:///{tmp_path / 'x.db'}"})
    assert "no data source named 'nope'" in str(caught.value) and "plant" in str(caught.value)


def test_the_engine_and_its_url_are_out_of_the_scripts_reach(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for attribute in ("_url", "_config"):
        with pytest.raises(ScriptError) as caught:
            script_execute(code=f"s = sql('plant')\nu = getattr(s, '{attribute}')", bindings={},
                           data_sources={"plant": url})
        assert "starts with" in str(caught.value)


# --- read-only unless writable ------------------------------------------------------------------

WRITES = [
    ("insert", "INSERT INTO {t} (id, name, value) VALUES (7, 'x', 1)", "INSERT"),
    ("update", "UPDATE {t} SET value = 99", "UPDATE"),
    ("delete", "DELETE FROM {t}", "DELETE"),
]


@pytest.mark.parametrize("case, statement, verb", WRITES, ids=[w[0] for w in WRITES])
def test_a_read_only_source_refuses_every_write_and_the_rows_stay(source, case, statement, verb):
    url, table = source
    before = rows_of(url, table)
    for data_source in (url, {"url": url}, {"url": url, "writable": False, "allow_ddl": True}):
        error = refused(f"sql('plant').query({statement.format(t=table)!r})", {"plant": data_source})
        assert f'sql("plant"): {verb} is not allowed on a read-only data source (writable is off)' in str(error)
    assert rows_of(url, table) == before


@pytest.mark.parametrize("case, statement, verb", WRITES, ids=[w[0] for w in WRITES])
def test_a_writable_source_takes_the_same_writes(source, case, statement, verb):
    url, table = source
    before = rows_of(url, table)
    script_execute(code=f"sql('plant').query({statement.format(t=table)!r})", bindings={},
                   data_sources={"plant": writable(url)})
    assert rows_of(url, table) != before


def test_insert_is_refused_on_a_read_only_source(source):
    url, table = source
    error = refused(f"sql('plant').insert('{table}', {{'id': 7, 'name': 'x', 'value': 1}})", {"plant": url})
    assert 'sql("plant"): insert() is not allowed on a read-only data source (writable is off)' in str(error)
    assert len(rows_of(url, table)) == 2


def test_a_read_only_source_still_reads(source):
    url, table = source
    code = f"rows = sql('plant').query('SELECT id FROM {table} ORDER BY id')"
    assert script_execute(code=code, bindings={}, data_sources={"plant": url}).bindings["rows"] == [{"id": 5}, {"id": 6}]


# --- DDL only where allowed ---------------------------------------------------------------------

DDL = [
    ("create", "CREATE TABLE {t}_new (a INTEGER)"),
    ("drop", "DROP TABLE {t}"),
    ("alter", "ALTER TABLE {t} ADD COLUMN extra INTEGER"),
    ("create-index", "CREATE INDEX {t}_ix ON {t} (name)"),
]


@pytest.mark.parametrize("case, statement", DDL, ids=[d[0] for d in DDL])
def test_ddl_is_refused_unless_the_source_allows_it(source, case, statement):
    url, table = source
    code = f"sql('plant').query({statement.format(t=table)!r})"
    columns = {c["name"] for c in sa.inspect(sa.create_engine(url)).get_columns(table)}
    for data_source in (url, writable(url)):
        error = refused(code, {"plant": data_source})
        assert "is not allowed on a" in str(error) and 'sql("plant")' in str(error)
    inspector = sa.inspect(sa.create_engine(url))
    assert sorted(n for n in inspector.get_table_names() if n.startswith(table)) == [table]
    assert {c["name"] for c in inspector.get_columns(table)} == columns
    assert not inspector.get_indexes(table)
    script_execute(code=code, bindings={}, data_sources={"plant": writable(url, allow_ddl=True)})


def test_ddl_refusal_says_allow_ddl_is_off(source):
    url, table = source
    error = refused(f"sql('plant').query('CREATE TABLE {table}_new (a INTEGER)')", {"plant": writable(url)})
    assert "CREATE" in str(error) and "not allowed on a data source without DDL (allow_ddl is off" in str(error)


@pytest.fixture(params=["postgresql", "mariadb"])
def server_source(request):
    url = {"postgresql": postgres_url, "mariadb": mariadb_url}[request.param]()
    table = f"readings_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(50), value FLOAT)"))
        conn.execute(sa.text(f"INSERT INTO {table} (id, name, value) VALUES (5, 'pump1', 2.5), (6, 'pump2', 4.0)"))
    yield request.param, url, table
    with engine.begin() as conn:
        for name in sa.inspect(engine).get_table_names():
            if name.startswith(table):
                conn.execute(sa.text(f"DROP TABLE {name}"))
    engine.dispose()


# Each would end the read-only transaction, or hide a statement from the first-keyword check.
SMUGGLED = [
    ("commit-then-write", "COMMIT; DELETE FROM {t}", '";" before its end'),
    ("select-then-write", "SELECT 1; DELETE FROM {t}", '";" before its end'),
    ("commit-alone", "COMMIT", "COMMIT is not allowed"),
    ("begin-read-write", "START TRANSACTION READ WRITE", "START is not allowed"),
    ("nested-comment", "/* /* */ SELECT */ DROP TABLE {t}", "must begin with its keyword"),
    ("executable-comment", "/*! DROP TABLE {t} */", "must begin with its keyword"),
    ("hash-comment", "# SELECT\nDROP TABLE {t}", "must begin with its keyword"),
    ("line-comment", "-- SELECT\nDROP TABLE {t}", "DROP is not allowed"),
    ("truncate", "TRUNCATE TABLE {t}", "TRUNCATE is not allowed"),
    ("prepare", "PREPARE p FROM 'DROP TABLE {t}'", "PREPARE is not allowed"),
    ("do-block", "DO $$ BEGIN EXECUTE 'DROP TABLE {t}'; END $$", '";" before its end'),
]


@pytest.mark.parametrize("case, statement, fragment", SMUGGLED, ids=[s[0] for s in SMUGGLED])
def test_a_statement_cannot_be_smuggled_past_the_read_only_transaction_or_the_ddl_check(server_source, case,
                                                                                      statement, fragment):
    server, url, table = server_source
    code = f"sql('plant').query({statement.format(t=table)!r})"
    for data_source in (url, writable(url)):
        error = refused(code, {"plant": data_source})
        assert 'sql("plant"): ' in str(error) and fragment in str(error), str(error)
    assert len(rows_of(url, table)) == 2


def test_a_trailing_semicolon_is_one_statement(server_source):
    server, url, table = server_source
    code = f"rows = sql('plant').query('SELECT id FROM {table} WHERE id = :id;', id=6)"
    assert script_execute(code=code, bindings={}, data_sources={"plant": url}).bindings["rows"] == [{"id": 6}]


@pytest.mark.parametrize("server_source", ["postgresql"], indirect=True)  # PyMySQL sends one statement per call
def test_a_source_with_ddl_takes_several_statements(server_source):
    server, url, table = server_source
    code = f"sql('plant').query('DELETE FROM {table} WHERE id = 5; DELETE FROM {table} WHERE id = 6')"
    script_execute(code=code, bindings={}, data_sources={"plant": writable(url, allow_ddl=True)})
    assert rows_of(url, table) == []


# --- nothing carried from one run to the next ---------------------------------------------------

TEMP_TABLE = {
    "sqlite": "CREATE TEMP TABLE {t}_tmp (a INTEGER)",
    "postgresql": "CREATE TEMPORARY TABLE {t}_tmp (a INTEGER)",
    "mysql": "CREATE TEMPORARY TABLE {t}_tmp (a INTEGER)",
}


def test_a_temp_table_made_in_one_run_is_gone_in_the_next(source, one_sandbox):
    url, table = source
    backend = sa.make_url(url).get_backend_name()
    data_sources = {"plant": writable(url, allow_ddl=True)}
    script_execute(code=f"sql('plant').query({TEMP_TABLE[backend].format(t=table)!r})\n"
                        f"sql('plant').query('INSERT INTO {table}_tmp (a) VALUES (1)')\n"
                        f"seen = sql('plant').query('SELECT a FROM {table}_tmp')",
                   bindings={}, data_sources=data_sources)
    error = refused(f"rows = sql('plant').query('SELECT a FROM {table}_tmp')", data_sources)
    assert f"{table}_tmp" in str(error)


SESSION_SETTING = {  # (set it in run 1, read it in run 2, its value when fresh)
    "postgresql": ("SET application_name = 'leaked'", "SELECT current_setting('application_name') AS v", None),
    "mariadb": ("SET @leaked = 5", "SELECT @leaked AS v", None),
}


def test_a_session_setting_made_in_one_run_is_gone_in_the_next(server_source, one_sandbox):
    server, url, table = server_source
    setting, read, _ = SESSION_SETTING[server]
    first = script_execute(code=f"sql('plant').query({setting!r})\nv = sql('plant').query({read!r})[0]['v']",
                           bindings={}, data_sources={"plant": url})
    assert first.bindings["v"] in ("leaked", 5)
    second = script_execute(code=f"v = sql('plant').query({read!r})[0]['v']", bindings={}, data_sources={"plant": url})
    assert second.bindings["v"] not in ("leaked", 5)


def test_postgresql_keeps_its_connection_between_runs_and_resets_it(one_sandbox):
    url = postgres_url()
    code = "pid = sql('plant').query('SELECT pg_backend_pid() AS p')[0]['p']"
    pids = [script_execute(code=code, bindings={}, data_sources={"plant": url}).bindings["pid"] for _ in range(2)]
    assert pids[0] == pids[1]  # DISCARD ALL, not a new connection per run


def test_a_projects_data_sources_carry_writable_and_allow_ddl_into_the_sandbox(project, tmp_path):
    from scripts_engine.models import DataSource
    from scripts_engine.services import script_data_sources

    url = f"sqlite:///{tmp_path / 'plant.sqlite3'}"
    DataSource.objects.create(project=project, name="reader", url=url)
    DataSource.objects.create(project=project, name="writer", url=url, writable=True)
    DataSource.objects.create(project=project, name="owner", url=url, writable=True, allow_ddl=True)
    shaped = script_data_sources(project_id=project.pk)
    assert shaped["reader"] == {"url": url, "writable": False, "allow_ddl": False}
    assert shaped["owner"] == {"url": url, "writable": True, "allow_ddl": True}
    script_execute(code="sql('owner').query('CREATE TABLE t (a INTEGER)')\nsql('writer').insert('t', {'a': 1})",
                   bindings={}, data_sources=shaped)
    error = refused("sql('reader').insert('t', {'a': 2})", shaped)
    assert "read-only data source" in str(error)
    error = refused("sql('writer').query('DROP TABLE t')", shaped)
    assert "allow_ddl is off" in str(error)
    assert script_execute(code="n = sql('reader').query('SELECT count(*) AS n FROM t')[0]['n']", bindings={},
                          data_sources=shaped).bindings["n"] == 1
