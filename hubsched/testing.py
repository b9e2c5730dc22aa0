"""Test helpers for real servers: skip with a reason where a server is absent, fail under CI=true.

Server addresses come from the environment, with this machine's defaults:
``TEST_POSTGRES_URL`` (postgresql+psycopg2://postgres@127.0.0.1:5432/test),
``TEST_MARIADB_URL`` (mysql+pymysql://root@127.0.0.1:3306/test),
``TEST_REDIS_URL`` (redis://127.0.0.1:6379/15), ``TEST_RABBITMQ_URL`` (amqp://guest:guest@127.0.0.1:5672//).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")

_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "redis": 6379, "amqp": 5672}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _reachable(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    host, port = parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS.get(scheme, 0)
    try:
        with socket.create_connection((host, port), timeout=2):
            return host, port, True
    except OSError:
        return host, port, False


def require_server(url: str, name: str) -> str:
    """Return ``url`` when its server accepts connections; else skip the test (fail it under CI=true)."""
    host, port, ok = _reachable(url)
    if not ok:
        reason = f"{name} is not running at {host}:{port}"
        if in_ci():
            pytest.fail(f"{reason} (CI=true: real servers are required)")
        pytest.skip(reason)
    return url


def postgres_url() -> str:
    return require_server(POSTGRES_URL, "PostgreSQL")


def mariadb_url() -> str:
    return require_server(MARIADB_URL, "MariaDB")


def redis_url() -> str:
    return require_server(REDIS_URL, "Redis")


def rabbitmq_url() -> str:
    return require_server(RABBITMQ_URL, "RabbitMQ")


TEST_RABBITMQ_STREAM_URL = os.environ.get("TEST_RABBITMQ_STREAM_URL", "rabbitmq-stream://guest:guest@127.0.0.1:5552/")


def rabbitmq_stream_url() -> str:
    """RabbitMQ Streams (``rabbitmq-plugins enable rabbitmq_stream``; ``TEST_RABBITMQ_STREAM_URL``, with its port)."""
    return require_server(TEST_RABBITMQ_STREAM_URL, "RabbitMQ Streams")


def postgres_binary(name: str) -> str:
    """The path of a PostgreSQL server program (``initdb``, ``pg_ctl``) for a test that runs its own instance:
    on the PATH, else in Debian's ``/usr/lib/postgresql/<version>/bin``. Skips the test where there is none
    (fails it under CI=true, like an absent server)."""
    import glob
    import shutil

    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        reason = f"the PostgreSQL program {name} is not installed"
        if in_ci():
            pytest.fail(f"{reason} (CI=true: real servers are required)")
        pytest.skip(reason)
    return found
