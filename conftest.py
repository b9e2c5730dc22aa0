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


@pytest.fixture(autouse=True)
def _hubsched_celery_app():
    """hubsched's Celery app is the current one in every test: an app a test makes (``Celery()`` makes itself
    current unless ``set_as_current=False``) must not receive a later test's ``.delay()``."""
    from hubsched.celery import app

    app.set_current()
    app.set_default()
    yield


@pytest.fixture(autouse=True)
def _no_process_reports(settings):
    """No metrics reporter thread in the test process unless a test turns it on (``HUBSCHED_METRICS_REPORT_S``):
    a worker started in-process (``start_worker``) sends ``worker_init`` and would leave a thread writing
    ``ProcessReport`` rows into later tests' databases. Whatever a test started is stopped after it."""
    settings.HUBSCHED_METRICS_REPORT_S = 0
    yield
    from hubsched.metrics.reports import reporting_stop

    reporting_stop(final=False)


@pytest.fixture(autouse=True)
def _own_log(settings, tmp_path):
    """Each test appends to a log of its own (an embedded SQLite one in its temporary directory): the workers'
    path writes every outcome there (docs/streams.md)."""
    settings.HUBSCHED_LOG_URL = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    yield
    from streams.log import log_reset

    log_reset()


@pytest.fixture
def forward():
    """``forward()`` commits what the test's log holds for every consumer (each sink's forwarder, the run
    recorder), as ``manage.py forward`` would; returns ``{consumer: records}``."""
    from streams.forwarding.process import forwarders_catch_up

    return forwarders_catch_up


@pytest.fixture
def own_postgres():
    """A PostgreSQL cluster of the test's own (``hubsched.bench.servers.OwnPostgres``, started, on a free port;
    never the shared server), for a test that kills its database; closed and the sink engines disposed after.
    Skips where the PostgreSQL programs are missing (fails under CI=true, like an absent server)."""
    from hubs.hubsim.faults import unused_port
    from hubsched.bench.servers import OwnPostgres
    from hubsched.testing import in_ci
    from scripts_engine.sinks import sinks_dispose

    try:
        server = OwnPostgres(port=unused_port())
    except RuntimeError as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI=true: real servers are required)")
        pytest.skip(str(exc))
    server.start()
    yield server
    sinks_dispose()
    server.close()
