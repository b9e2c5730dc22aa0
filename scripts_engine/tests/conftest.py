"""Fixtures for scripts_engine tests: a project, a staff client, a real reference hub."""

from __future__ import annotations

import pytest

from hubs.models import Project


@pytest.fixture
def project(db):
    return Project.objects.create(name="plant")


@pytest.fixture
def staff_client(client, django_user_model):
    """A staff user in the integrator role (hubsched/roles.py: edits projects, debugs scripts, writes to hubs)."""
    from django.contrib.auth.models import Group as AuthGroup

    user = django_user_model.objects.create_user(username="integrator", password="pw-123456", is_staff=True)
    user.groups.add(AuthGroup.objects.get(name="integrator"))
    client.force_login(user)
    return client


@pytest.fixture
def reference_hub():
    from hubs.hubsim.server import serve_in_thread

    with serve_in_thread(key="test-key", name="hub-a") as hub:
        yield hub


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def sink_url(request, tmp_path):
    """A sink database URL, once per server: a SQLite file, the real PostgreSQL, the real MariaDB."""
    from hubsched.testing import mariadb_url, postgres_url
    from scripts_engine.sinks import sinks_dispose

    urls = {"sqlite": lambda: f"sqlite:///{tmp_path / 'values.sqlite3'}", "postgresql": postgres_url, "mariadb": mariadb_url}
    yield urls[request.param]()
    sinks_dispose()


@pytest.fixture
def table_prefix(sink_url):
    """A fresh table name on ``sink_url``; every table whose name starts with it is dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    engine = sa.create_engine(sink_url)
    with engine.begin() as conn:
        for name in sa.inspect(engine).get_table_names():
            if name.startswith(prefix):
                conn.execute(sa.text(f"DROP TABLE {name}"))
    engine.dispose()
