"""The write-only URL secret of sinks and data sources: ``url_secrets_keep`` puts a stored secret back for ``***``."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from hubsched.secrets import url_mask
from scripts_engine.forms import url_secrets_keep

STORED = [
    "postgresql+psycopg2://writer:pg-pa55word@db:5432/values",
    "mysql+pymysql://reader@erp/orders",
    "postgresql://ann:p%40ss@db/x?sslmode=require&token=t0k",
    "sqlite:///var/values.sqlite3",
]


@pytest.mark.parametrize("stored", STORED)
def test_a_url_submitted_as_masked_comes_back_as_stored(stored):
    assert url_secrets_keep(submitted=url_mask(stored), stored=stored) == stored


def test_the_database_name_can_change_without_knowing_the_password():
    kept = url_secrets_keep(submitted="postgresql+psycopg2://writer:***@db:5432/other", stored=STORED[0])
    assert kept == "postgresql+psycopg2://writer:pg-pa55word@db:5432/other"


def test_a_password_typed_in_full_replaces_the_stored_one():
    assert url_secrets_keep(submitted="postgresql://writer:new@db/v", stored=STORED[0]) == "postgresql://writer:new@db/v"


@pytest.mark.parametrize("submitted", [
    "postgresql+psycopg2://writer:***@evil:5432/values",   # another host: the password would go there
    "postgresql+psycopg2://writer:***@db:6543/values",     # another port
    "postgresql+psycopg2://admin:***@db:5432/values",      # another user
    "mysql+pymysql://***@evil/orders",
    "postgresql://ann:p%40ss@evil/x?sslmode=require&token=***",
])
def test_a_mask_is_never_filled_in_for_another_server_or_user(submitted):
    stored = {"mysql": STORED[1], "postgresql://": STORED[2]}
    base = next((v for k, v in stored.items() if submitted.startswith(k)), STORED[0])
    with pytest.raises(ValidationError, match="type the secret again"):
        url_secrets_keep(submitted=submitted, stored=base)


def test_a_mask_with_nothing_stored_is_refused():
    with pytest.raises(ValidationError, match="type the secret again"):
        url_secrets_keep(submitted="postgresql://writer:***@db/values", stored="")
    with pytest.raises(ValidationError, match="type the secret again"):
        url_secrets_keep(submitted="postgresql://writer:***@db/values", stored="postgresql://writer@db/values")
