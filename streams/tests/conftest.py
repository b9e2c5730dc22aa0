"""Fixtures of the log's tests: one writer per sink (one consumer named ``sink:<id>``) unless a test asks for lanes,
and a PostgreSQL sink of the test's own (the helpers are in helpers.py)."""

from __future__ import annotations

import random
import uuid

import pytest
import sqlalchemy as sa

from streams.tests.helpers import offsets_forget


@pytest.fixture(autouse=True)
def _one_writer_per_sink(settings):
    settings.HUBSCHED_SINK_WRITERS = 1


@pytest.fixture
def pg_sink(db, settings):
    """A PostgreSQL sink of project ``plant`` writing to a fresh tall table. Its pk is drawn at random: the
    sink database's offsets table is shared by every test process, keyed by ``sink:<pk>``."""
    from hubs.models import Project
    from hubsched.testing import postgres_url
    from scripts_engine.models import Sink
    from scripts_engine.sinks import sink_engine, sinks_dispose

    settings.HUBSCHED_FORWARDER_QUARANTINE_TRIES = 1  # set aside at the first refusal: no pauses between tries
    url = postgres_url()
    table = f"q{uuid.uuid4().hex[:10]}"
    project = Project.objects.create(name="plant")
    sink = Sink.objects.create(pk=random.randrange(10**8, 10**9), project=project, name="pg", url=url, table=table)
    offsets_forget(url, f"sink:{sink.pk}")
    yield sink
    with sink_engine(url).begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}, {table}_executions"))
    offsets_forget(url, f"sink:{sink.pk}")
    sinks_dispose()
