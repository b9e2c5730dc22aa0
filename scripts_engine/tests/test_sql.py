"""sql() in scripts, for real on SQLite, PostgreSQL and MariaDB: bound parameters, rows as dicts, inserts."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from hubsched.testing import mariadb_url, postgres_url
from scripts_engine.sandbox import ScriptError, script_execute


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
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def rows_of(url: str, table: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        got = [tuple(r) for r in conn.execute(sa.text(f"SELECT id, name, value FROM {table} ORDER BY id"))]
    engine.dispose()
    return got


def test_a_script_queries_with_bound_parameters_and_inserts_a_row(source):
    url, table = source
    code = (
        f"rows = sql('plant').query('SELECT name, value FROM {table} WHERE id = :id', id=5)\n"
        "limit = rows[0]['value'] * p1\n"
        f"n = sql('plant').insert('{table}', [{{'id': 7, 'name': 'derived', 'value': limit}}])\n"
    )
    result = script_execute(code=code, bindings={"p1": 2}, data_sources={"plant": url})
    assert result.bindings["rows"] == [{"name": "pump1", "value": 2.5}]
    assert (result.bindings["limit"], result.bindings["n"]) == (5.0, 1)
    assert rows_of(url, table)[-1] == (7, "derived", 5.0)


def test_a_parameter_is_bound_never_spliced_into_the_sql(source):
    url, table = source
    hostile = f"x'; DROP TABLE {table}; --"
    code = f"rows = sql('plant').query('SELECT id FROM {table} WHERE name = :name', name=hostile)"
    result = script_execute(code=code, bindings={"hostile": hostile}, data_sources={"plant": url})
    assert result.bindings["rows"] == []
    assert len(rows_of(url, table)) == 2  # the table is still there, untouched


def test_insert_takes_several_rows_in_one_transaction(source):
    url, table = source
    code = f"n = sql('plant').insert('{table}', [{{'id': 8, 'name': 'a', 'value': 1}}, {{'id': 9, 'name': 'b', 'value': 2}}])"
    assert script_execute(code=code, bindings={}, data_sources={"plant": url}).bindings["n"] == 2
    assert [r[0] for r in rows_of(url, table)] == [5, 6, 8, 9]


def test_a_failing_statement_is_an_error_naming_the_data_source_and_the_script_line(source):
    url, table = source
    code = f"x = 1\nsql('plant').insert('{table}', {{'id': 5, 'name': 'dup', 'value': 0}})"  # id 5 exists
    with pytest.raises(ScriptError) as caught:
        script_execute(code=code, bindings={}, data_sources={"plant": url})
    assert caught.value.kind == "runtime" and caught.value.line == 2
    assert "SqlError: data source 'plant'" in str(caught.value)
    assert len(rows_of(url, table)) == 2


def test_an_unknown_data_source_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(ScriptError) as caught:
        script_execute(code="sql('nope')", bindings={}, data_sources={"plant": f"sqlite:///{tmp_path / 'x.db'}"})
    assert "no data source named 'nope'" in str(caught.value) and "plant" in str(caught.value)


def test_the_engine_and_its_url_are_out_of_the_scripts_reach(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(ScriptError) as caught:
        script_execute(code="s = sql('plant')\nu = getattr(s, '_url')", bindings={}, data_sources={"plant": url})
    assert "starts with" in str(caught.value)
