"""LOAD DATA LOCAL is opt-in per sink, and even on, the driver sends only the file hubsched asked to load (real MariaDB)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pymysql
import pytest
import sqlalchemy as sa

from hubs.models import Project
from hubsched.testing import mariadb_url
from scripts_engine.models import Sink
from scripts_engine.sinks import (
    ExecutionValues, SinkTarget, sink_engine, sink_targets_for_projects, sink_write, sinks_dispose, tall_table,
)
from scripts_engine.sinks.mysql import GuardedConnection
from scripts_engine.sinks.tall import _NO_LOAD_DATA

TICK = datetime(2026, 11, 20, 10, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def maria(table_name):
    url = mariadb_url()
    yield url
    sinks_dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for name in (table_name, f"{table_name}_executions", f"{table_name}_other"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    engine.dispose()


@pytest.fixture
def table_name():
    import uuid

    return f"t{uuid.uuid4().hex[:12]}"


def executions(n: int) -> list[ExecutionValues]:
    return [ExecutionValues(TICK + timedelta(seconds=i), "plant", "hub-a", 7, "g", [
        ("plant/e", [{"key": f"k{j}", "value": j * 1.5, "ts": "2026-11-20T10:00:00.100Z", "quality": "good"} for j in range(10)])])
        for i in range(n)]


def count(url: str, table: str) -> int:
    t = tall_table(sa.MetaData(), table)
    with sink_engine(url).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()


def raw(url: str, *, local_infile: bool):
    engine = sink_engine(url, local_infile=local_infile)
    connection = engine.raw_connection()
    return engine, connection


def test_by_default_the_driver_is_opened_without_local_infile_and_values_go_by_insert(maria, table_name):
    target = SinkTarget(name="main", url=maria, table=table_name)
    assert sink_write(target=target, executions=executions(5)) == 50
    assert count(maria, table_name) == 50
    engine, connection = raw(maria, local_infile=False)
    try:
        assert isinstance(connection.dbapi_connection, GuardedConnection)
        assert connection.dbapi_connection._local_infile is False
        assert not connection.dbapi_connection.client_flag & pymysql.constants.CLIENT.LOCAL_FILES
    finally:
        connection.close()
    assert engine in _NO_LOAD_DATA  # never tries LOAD DATA


def test_with_local_infile_on_values_go_by_load_data(maria, table_name):
    target = SinkTarget(name="main", url=maria, table=table_name, local_infile=True)
    assert sink_write(target=target, executions=executions(5)) == 50
    engine = sink_engine(maria, local_infile=True)
    assert engine not in _NO_LOAD_DATA  # LOAD DATA went through
    assert count(maria, table_name) == 50


@pytest.mark.parametrize("local_infile", [True, False])
def test_a_load_data_of_any_other_file_is_refused_and_nothing_is_read(maria, table_name, local_infile):
    sink_write(target=SinkTarget(name="main", url=maria, table=table_name, local_infile=local_infile), executions=executions(1))
    _, connection = raw(maria, local_infile=local_infile)
    try:
        cursor = connection.cursor()
        cursor.execute(f"CREATE TABLE {table_name}_other (line TEXT)")
        for expected in (None, "/tmp/not-this-one.tsv"):  # no LOAD DATA of ours under way, or another of ours
            connection.dbapi_connection.expected_infile = expected
            with pytest.raises(pymysql.err.OperationalError) as refused:
                cursor.execute(f"LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE {table_name}_other")
            # on: our guard (2068) sent an empty file; off: the server refuses a client without LOCAL
            assert refused.value.args[0] in ({2068} if local_infile else {1148, 4166, 2068})
            cursor.execute(f"SELECT COUNT(*) FROM {table_name}_other")
            assert cursor.fetchone()[0] == 0
        connection.dbapi_connection.expected_infile = None
        cursor.execute("SELECT 1")  # the connection is still in step
        assert cursor.fetchone()[0] == 1
    finally:
        connection.close()


def test_sink_targets_carry_the_sinks_local_infile(db):
    project = Project.objects.create(name="plant")
    Sink.objects.create(project=project, name="fast", url="mysql+pymysql://u:pw@db/x", local_infile=True)
    Sink.objects.create(project=project, name="safe", url="mysql+pymysql://u:pw@db/y")
    targets = sink_targets_for_projects(project_ids={project.pk})[project.pk]
    assert {t.name: t.local_infile for t in targets} == {"fast": True, "safe": False}

