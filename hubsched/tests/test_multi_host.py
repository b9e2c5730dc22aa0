"""HUBSCHED_DEPLOYMENT=multi-host refuses every per-host fallback, naming the variable to set (issue 19, item 1).

Each test starts ``manage.py check`` in a process of its own: settings are read once per process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
SHARED = {
    "DATABASE_URL": "postgres://hubsched@db.example:5432/hubsched",
    "CELERY_BROKER_URL": "redis://redis.example:6379/0",
    "HUBSCHED_SINK_URL": "postgresql+psycopg2://sink@db.example:5432/hubsched",
    "HUBSCHED_LOG_URL": "rabbitmq-stream://hubsched:pw@rabbit.example:5552/",
}


def check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HUBSCHED_VAR_DIR": str(tmp_path / "var"), **env}
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=environ, capture_output=True,
                          text=True, timeout=120)


def test_a_multi_host_process_without_its_servers_refuses_to_start_naming_each_variable(tmp_path):
    done = check(tmp_path, HUBSCHED_DEPLOYMENT="multi-host")
    assert done.returncode != 0
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "HUBSCHED_SINK_URL", "HUBSCHED_LOG_URL", "HUBSCHED_LOCK_URL"):
        assert f"  - {name}: " in done.stderr, name
    assert not (tmp_path / "var").exists()  # refused before anything was made on this host


def test_a_sqlite_log_or_a_folder_broker_is_refused_too(tmp_path):
    done = check(tmp_path, HUBSCHED_DEPLOYMENT="multi-host",
                 **{**SHARED, "HUBSCHED_LOG_URL": "sqlite:////srv/log.sqlite3", "CELERY_BROKER_URL": "filesystem://"})
    assert done.returncode != 0
    assert "HUBSCHED_LOG_URL: the durable log would be a SQLite file" in done.stderr
    assert "CELERY_BROKER_URL: the broker would be a folder" in done.stderr
    assert "DATABASE_URL" not in done.stderr and "pw" not in done.stderr


def test_a_broker_other_than_redis_without_a_database_server_needs_a_lock_url_of_its_own(tmp_path):
    amqp = {**SHARED, "CELERY_BROKER_URL": "amqp://guest:guest@rabbit.example:5672//"}
    del amqp["DATABASE_URL"]
    done = check(tmp_path, HUBSCHED_DEPLOYMENT="multi-host", **amqp)
    assert done.returncode != 0 and "HUBSCHED_LOCK_URL: overlap locks and hub gates would be file locks" in done.stderr
    done = check(tmp_path, HUBSCHED_DEPLOYMENT="multi-host", HUBSCHED_LOCK_URL="redis://redis.example:6379/1",
                 DATABASE_URL=SHARED["DATABASE_URL"], **amqp)
    assert done.returncode == 0, done.stderr


def test_with_a_broker_other_than_redis_a_postgresql_or_mariadb_database_holds_the_locks(tmp_path):
    amqp = {**SHARED, "CELERY_BROKER_URL": "amqp://guest:guest@rabbit.example:5672//"}
    done = check(tmp_path, HUBSCHED_DEPLOYMENT="multi-host",
                 **{**amqp, "DATABASE_URL": "postgres://hubsched:pw@db.example:5432/hubsched"})
    assert done.returncode == 0, done.stderr
    done = check(tmp_path, HUBSCHED_DEPLOYMENT="multi-host",
                 **{**amqp, "HUBSCHED_LOCK_URL": "mysql+pymysql://hubsched:pw@locks.example:3306/hubsched"})
    assert done.returncode == 0, done.stderr


def test_with_every_server_shared_it_starts_and_single_host_keeps_the_embedded_defaults(tmp_path):
    done = check(tmp_path, HUBSCHED_DEPLOYMENT="multi-host", **SHARED)
    assert done.returncode == 0, done.stderr
    assert check(tmp_path).returncode == 0  # make run's way: nothing set


def test_an_unknown_deployment_mode_is_refused(tmp_path):
    done = check(tmp_path, HUBSCHED_DEPLOYMENT="cluster")
    assert done.returncode != 0 and "expected single-host or multi-host" in done.stderr
