"""Key rotation: ``hubs.services.secrets_rotate`` and ``python manage.py secrets_rotate``, on the real database."""

from __future__ import annotations

from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection

from hubs.models import Hub, Project
from hubs.services import secrets_rotate
from hubsched.secrets import SecretsKeyError
from scripts_engine.models import DataSource, Sink

pytestmark = pytest.mark.django_db

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
HUB_KEY = "hub-key-rotated-41c"
SINK_URL = "postgresql+psycopg2://writer:pg-pa55@db/values"
SOURCE_URL = "mysql+pymysql://reader:my-pa55@erp/orders"




def stored(model, field: str) -> list[str]:
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {qn(field)} FROM {qn(model._meta.db_table)} ORDER BY {qn('id')}")
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture
def secrets_under_key_a(secrets_key):
    secrets_key(KEY_A)
    project = Project.objects.create(name="plant")
    Hub.objects.create(project=project, name="a", url="ws://hub/connect", api_key=HUB_KEY)
    Hub.objects.create(project=project, name="no-key", url="ws://hub/connect", api_key="")
    Sink.objects.create(project=project, name="archive", url=SINK_URL)
    DataSource.objects.create(project=project, name="erp", url=SOURCE_URL)
    return project


def everything() -> tuple:
    return (
        sorted((h.name, h.api_key) for h in Hub.objects.all()),
        [s.url for s in Sink.objects.all()],
        [d.url for d in DataSource.objects.all()],
    )


def test_after_rotation_every_value_opens_with_the_new_key_alone(secrets_under_key_a, secrets_key):
    before = {field: stored(model, field) for model, field in ((Hub, "api_key"), (Sink, "url"), (DataSource, "url"))}
    secrets_key(f"{KEY_B},{KEY_A}")
    assert secrets_rotate() == 3  # the empty key is not a secret
    secrets_key(KEY_B)
    assert everything() == ([("a", HUB_KEY), ("no-key", "")], [SINK_URL], [SOURCE_URL])
    for model, field in ((Hub, "api_key"), (Sink, "url"), (DataSource, "url")):
        after = stored(model, field)
        assert all(value == "" or value.startswith("fernet:") for value in after)
        assert [v for v in after if v] != [v for v in before[field] if v]  # written again, not left as they were
    assert HUB_KEY not in stored(Hub, "api_key")[0]


def test_without_rotation_the_new_key_alone_cannot_open_them(secrets_under_key_a, secrets_key):
    secrets_key(KEY_B)
    with pytest.raises(SecretsKeyError):
        everything()


def test_the_command_prints_how_many_it_re_encrypted(secrets_under_key_a, secrets_key):
    secrets_key(f"{KEY_B},{KEY_A}")
    out = StringIO()
    call_command("secrets_rotate", stdout=out)
    assert out.getvalue().startswith("3 secrets re-encrypted")
    secrets_key(KEY_B)
    assert Hub.objects.get(name="a").api_key == HUB_KEY


def test_a_value_no_key_opens_refuses_the_rotation_and_changes_nothing(secrets_under_key_a, secrets_key):
    secrets_key(KEY_B)
    Hub.objects.create(project=secrets_under_key_a, name="b", url="ws://hub/connect", api_key="under-b")
    before = {field: stored(model, field) for model, field in ((Hub, "api_key"), (Sink, "url"), (DataSource, "url"))}
    secrets_key(Fernet.generate_key().decode() + "," + KEY_B)  # A is missing: hub "a" opens with no key
    with pytest.raises(CommandError) as caught:
        call_command("secrets_rotate", stdout=StringIO())
    assert "nothing was changed" in str(caught.value) and HUB_KEY not in str(caught.value)
    assert {field: stored(model, field) for model, field in ((Hub, "api_key"), (Sink, "url"), (DataSource, "url"))} == before


def test_a_value_stored_in_clear_before_encryption_is_encrypted(secrets_under_key_a, secrets_key):
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:  # as a row written before the field was encrypted
        cursor.execute(f"UPDATE {qn(Sink._meta.db_table)} SET {qn('url')} = %s", ["sqlite:///var/old.sqlite3"])
    secrets_key(f"{KEY_B},{KEY_A}")
    assert secrets_rotate() == 3
    assert stored(Sink, "url")[0].startswith("fernet:")
    secrets_key(KEY_B)
    assert Sink.objects.get().url == "sqlite:///var/old.sqlite3"
