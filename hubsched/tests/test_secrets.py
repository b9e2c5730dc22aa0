"""Secrets at rest (Fernet in the real database's column) and on show (url_mask, text_mask, url_has_password)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from django.db import connection

from hubs.models import Hub, Project
from hubsched.secrets import (
    MASK,
    SecretsKeyError,
    secret_decrypt,
    secret_encrypt,
    text_mask,
    url_has_password,
    url_mask,
)
from hubsched.testing import postgres_url
from scripts_engine.models import DataSource, Sink

HUB_KEY = "hub-key-7f3a9c2e"
PASSWORD = "pg-Pa55word"




def raw_column(model, field: str, pk: int) -> str:
    """The text the database holds, read past the ORM with a cursor."""
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {qn(model._meta.get_field(field).column)} FROM {qn(model._meta.db_table)} WHERE {qn('id')} = %s", [pk]
        )
        return cursor.fetchone()[0]


# --- masking -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://ann:pw@db/x?sslmode=require&token=t", "postgresql://ann:***@db/x?sslmode=require&token=***"),
        ("ws://hub.local:8765/connect?api_key=K1&site=north", "ws://hub.local:8765/connect?api_key=***&site=north"),
        ("wss://u:p@hub/ws?access_token=abc#frag", "wss://u:***@hub/ws?access_token=***#frag"),
        ("https://TOKEN123@github.com/x.git", "https://***@github.com/x.git"),  # a lone user may be a token
        ("postgresql://:only-password@db/x", "postgresql://:***@db/x"),
        ("ws://hub/connect#access_token=zz", "ws://hub/connect#access_token=***"),
        ("ws://hub/connect?Password=a&PWD=b&signature=c", "ws://hub/connect?Password=***&PWD=***&signature=***"),
    ],
)
def test_url_mask_hides_passwords_users_and_secret_query_values(url, masked):
    assert url_mask(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:se/cret@db/x",  # SQLAlchemy's make_url reads password "se/cret"; urllib sees no user info
        "postgresql://u:se#cret@db/x",
        "postgresql://u:se?cret@db/x",
        "postgresql://u:se@cret@db/x",  # urllib reads password "se@cret", SQLAlchemy "se"
    ],
)
def test_url_mask_hides_a_password_holding_url_delimiters_whichever_reader_parses_it(url):
    masked = url_mask(url)
    assert masked == "postgresql://u:***@db/x"
    assert "se" not in masked and "cret" not in masked and sa.engine.make_url(url).password not in masked


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://db/x?application_name=a%20b&sslmode=require",  # percent-encoding kept byte for byte
        "sqlite:///var/values.sqlite3",
        "ws://hub/connect?token=",  # nothing to hide
        "https://hub/x?e=a@b",  # an @ in the query is no user info
        "not a url at all",
        "",
    ],
)
def test_url_mask_leaves_urls_without_secrets_as_they_are(url):
    assert url_mask(url) == url


def test_url_mask_hides_a_lone_user_though_it_is_no_password():
    assert url_mask("mysql+pymysql://reader@erp/orders?charset=utf8mb4") == f"mysql+pymysql://{MASK}@erp/orders?charset=utf8mb4"


def test_url_has_password_counts_passwords_and_secret_query_values_not_a_database_user():
    assert url_has_password(f"postgresql+psycopg2://writer:{PASSWORD}@db/values")
    assert url_has_password("postgresql://db/x?password=p")
    assert url_has_password("ws://hub/ws?token=t")
    assert not url_has_password("mysql+pymysql://reader@erp/orders")
    assert not url_has_password("postgresql://db/x?application_name=a%20b")  # was re-encoded as a+b: a false secret
    assert not url_has_password("sqlite:///var/values.sqlite3")


def test_text_mask_masks_every_url_inside_a_longer_text_and_keeps_the_sentence():
    text = (
        f"hub 'a': cannot connect to ws://ops:{PASSWORD}@10.0.0.9:8765/connect?token=tok-991: refused; "
        f"sink failed (postgresql://writer:{PASSWORD}@db/values?api_key=k-77)."
    )
    masked = text_mask(text)
    assert PASSWORD not in masked and "tok-991" not in masked and "k-77" not in masked
    assert masked == (
        "hub 'a': cannot connect to ws://ops:***@10.0.0.9:8765/connect?token=***: refused; "
        "sink failed (postgresql://writer:***@db/values?api_key=***)."
    )


def test_text_mask_replaces_a_key_only_where_it_stands_as_a_whole_word():
    masked = text_mask("key wrong was refused, wrongly; wrong-ish; (wrong)", secrets=("wrong",))
    assert masked == "key *** was refused, wrongly; wrong-ish; (***)"


def test_text_mask_masks_a_key_holding_regex_characters_and_ignores_empty_secrets():
    assert text_mask("sent a+b.c* to the hub", secrets=("", "a+b.c*")) == "sent *** to the hub"
    assert text_mask("", secrets=("x",)) == ""


def test_text_mask_masks_a_key_inside_a_url_query_and_in_the_text():
    masked = text_mask(f"ws://hub/ws?site={HUB_KEY} said: bad key {HUB_KEY}", secrets=(HUB_KEY,))
    assert HUB_KEY not in masked


# --- encryption at rest ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_hub_keys_and_urls_are_stored_encrypted_and_read_back_in_clear():
    project = Project.objects.create(name="plant")
    hub = Hub.objects.create(project=project, name="a", url="ws://hub/connect", api_key=HUB_KEY)
    sink_url = f"postgresql+psycopg2://writer:{PASSWORD}@db/values"
    sink = Sink.objects.create(project=project, name="archive", url=sink_url)
    source = DataSource.objects.create(project=project, name="erp", url=f"mysql+pymysql://reader:{PASSWORD}@erp/orders")
    for model, field, pk, clear in (
        (Hub, "api_key", hub.pk, HUB_KEY),
        (Sink, "url", sink.pk, sink_url),
        (DataSource, "url", source.pk, source.url),
    ):
        stored = raw_column(model, field, pk)
        assert stored.startswith("fernet:")
        assert clear not in stored and PASSWORD not in stored and HUB_KEY not in stored
        assert getattr(model.objects.get(pk=pk), field) == clear
    # every encryption differs, so equal keys cannot be told apart in the table
    other = Hub.objects.create(project=project, name="b", url="ws://hub/connect", api_key=HUB_KEY)
    assert raw_column(Hub, "api_key", other.pk) != raw_column(Hub, "api_key", hub.pk)


@pytest.mark.django_db
def test_an_empty_key_stays_empty_in_the_column():
    hub = Hub.objects.create(project=Project.objects.create(name="plant"), name="a", url="ws://hub/connect", api_key="")
    assert raw_column(Hub, "api_key", hub.pk) == ""
    assert Hub.objects.get(pk=hub.pk).api_key == ""


@pytest.mark.django_db
def test_a_wrong_key_raises_secrets_key_error_without_the_value(secrets_key):
    secrets_key(Fernet.generate_key().decode())
    hub = Hub.objects.create(project=Project.objects.create(name="plant"), name="a", url="ws://hub/connect", api_key=HUB_KEY)
    stored = raw_column(Hub, "api_key", hub.pk)
    secrets_key(Fernet.generate_key().decode())
    with pytest.raises(SecretsKeyError) as caught:
        Hub.objects.get(pk=hub.pk)
    assert HUB_KEY not in str(caught.value) and stored[7:] not in str(caught.value)
    assert "HUBSCHED_SECRETS_KEY" in str(caught.value)


def test_a_malformed_key_raises_secrets_key_error(secrets_key):
    secrets_key("not-a-fernet-key")
    with pytest.raises(SecretsKeyError, match="not a list of Fernet keys"):
        secret_encrypt("x")


@pytest.mark.postgres
def test_a_value_encrypted_for_postgresql_is_stored_as_ciphertext_there(secrets_key):
    """Django-free: the stored form in a PostgreSQL text column of a table made here, via SQLAlchemy."""
    secrets_key(Fernet.generate_key().decode())
    engine = sa.create_engine(postgres_url())
    table = sa.Table(f"hubsched_secret_{uuid.uuid4().hex[:12]}", sa.MetaData(),
                     sa.Column("id", sa.Integer, primary_key=True), sa.Column("secret", sa.Text))
    try:
        table.create(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": 1, "secret": secret_encrypt(HUB_KEY)}])
        with engine.connect() as conn:
            stored = conn.execute(sa.select(table.c.secret)).scalar_one()
            found = conn.execute(sa.select(sa.func.count()).where(table.c.secret.contains(HUB_KEY))).scalar_one()
        assert stored.startswith("fernet:") and HUB_KEY not in stored and found == 0
        assert secret_decrypt(stored) == HUB_KEY
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()


def test_the_migration_encrypts_keys_and_urls_stored_in_clear_before_it(tmp_path):
    """A database from before encryption (hubs 0001, scripts_engine 0001) is encrypted by `migrate`, row by row."""
    import os
    import sqlite3
    import subprocess
    import sys

    from django.conf import settings as django_settings

    db = tmp_path / "old.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}", "HUBSCHED_VAR_DIR": str(tmp_path / "var")}

    def manage(*args):
        subprocess.run([sys.executable, "manage.py", *args], cwd=django_settings.BASE_DIR, env=env, check=True,
                       capture_output=True, timeout=120)

    manage("migrate", "--noinput", "scripts_engine", "0001")  # hubs 0001 with it
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO hubs_project (name, description, time_zone, created_at, updated_at) "
                     "VALUES ('p', '', 'UTC', '2026-01-01', '2026-01-01')")
        conn.execute("INSERT INTO hubs_hub (project_id, name, url, api_key, timeout, max_in_flight, enabled) "
                     "VALUES (1, 'h', 'ws://h/connect', 'clear-hub-key', 5, 32, 1)")
        conn.execute("INSERT INTO scripts_engine_sink (project_id, name, url, layout, \"table\", enabled) "
                     "VALUES (1, 's', 'postgresql://u:clear-pw@db/v', 'tall', 'hubsched_values', 1)")
        conn.execute("INSERT INTO scripts_engine_datasource (project_id, name, url) VALUES (1, 'd', 'mysql://u:clear-pw2@db/d')")
    manage("migrate", "--noinput")
    with sqlite3.connect(db) as conn:
        stored = [conn.execute(q).fetchone()[0] for q in (
            "SELECT api_key FROM hubs_hub", "SELECT url FROM scripts_engine_sink", "SELECT url FROM scripts_engine_datasource")]
    assert all(value.startswith("fernet:") for value in stored)
    assert not any("clear" in value for value in stored)


def test_no_url_password_reaches_a_log_line_not_even_in_a_traceback():
    import io
    import logging
    import logging.config

    from django.conf import settings as django_settings

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.config.DictConfigurator(django_settings.LOGGING).configure_formatter(
        django_settings.LOGGING["formatters"]["plain"]))
    logger = logging.getLogger("hubsched.tests.masking")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("cannot reach postgresql://writer:pg-secret-9@db/values?token=tok-77")
        except RuntimeError:
            logger.exception("sink ws://ops:hub-secret-3@10.0.0.8/connect failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "failed" in text and "RuntimeError" in text
    assert not any(secret in text for secret in ("pg-secret-9", "tok-77", "hub-secret-3"))
