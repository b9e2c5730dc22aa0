"""Fixtures shared by every app's tests (each app's own tests/conftest.py holds the rest)."""

from __future__ import annotations

import pytest


@pytest.fixture
def secrets_key(settings):
    """``secrets_key("KEY1,KEY2")`` makes that HUBSCHED_SECRETS_KEY; the process's cipher is made again after."""
    from hubsched.secrets import cipher_reset

    def use(keys: str) -> None:
        settings.HUBSCHED_SECRETS_KEY = keys
        cipher_reset()

    yield use
    cipher_reset()  # before the settings fixture restores the key: the next use reads the restored one
