"""/api/health (anonymous), /api/v1/status (and its alias /api/status), /api/v1/scheduler and /api/v1/workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from celery import Celery
from django.test import Client

from api.testing import assert_error, token_client
from groups.models import Group, GroupRun, GroupStats, RunStatus, Trigger
from groups.scheduler.leader import FileLeadership
from groups.selectors import scheduler_summary
from hubs.hubsim.faults import unused_port
from hubs.models import Hub, Project
from hubsched.testing import REDIS_URL, require_server
from hubsched.workers import workers_inspect
from scripts_engine.models import Sink
from scripts_engine.sinks import sinks_dispose

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Pa55-health-7f3e"
TICK = datetime(2026, 11, 20, 10, 0, 10, tzinfo=timezone.utc)


def make_groups() -> dict[str, Group]:
    project = Project.objects.create(name="plant", time_zone="UTC")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:1/connect", api_key="k-a")
    other = Hub.objects.create(project=project, name="hub-b", url="ws://127.0.0.1:2/connect", api_key="k-b")
    return {
        "fast": Group.objects.create(hub=hub, name="fast", period=1.0),
        "fast-b": Group.objects.create(hub=other, name="fast-b", period=1.0),
        "slow": Group.objects.create(hub=hub, name="slow", period=5.0),
        "cron": Group.objects.create(hub=hub, name="cron", trigger=Trigger.CRON, cron="*/4 * * * * *"),
        "off": Group.objects.create(hub=hub, name="off", period=1.0, enabled=False),
    }


# --- health ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def installation(settings, tmp_path):
    """An installation of the test's own: its var dir (where a beat's lock would be), a SQLite default sink."""
    settings.VAR_DIR = tmp_path
    settings.HUBSCHED_LOCK_URL = ""
    settings.HUBSCHED_SINK_URL = f"sqlite:///{tmp_path / 'values.sqlite3'}"
    project = Project.objects.create(name="plant")
    Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:1/connect", api_key="k")
    yield project
    sinks_dispose()


@pytest.fixture
def healthy(installation, tmp_path):
    """``installation`` with its beat running (the beat's lock held)."""
    beat = FileLeadership(tmp_path)
    beat.acquire()
    yield installation
    beat.stop()


def filesystem_app(folder: Path) -> Celery:
    for sub in ("in", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # set_as_current=False: a test's app must not become Celery's current app (later tests' .delay() would use it)
    # hubsched's embedded broker, as the settings name it (kombu's own garbles an exchange's table: hubsched/broker_files.py)
    return Celery("health-test", broker="filesystem://", broker_transport="hubsched.broker_files:Transport",
                  set_as_current=False, broker_transport_options={
        "data_folder_in": str(folder / "in"), "data_folder_out": str(folder / "in"),
        "processed_folder": str(folder / "processed"), "control_folder": str(folder / "control"),
        "polling_interval": 0.05})


@pytest.mark.django_db(transaction=True)
def test_health_is_anonymous_and_ok_when_database_broker_sinks_and_beat_answer(healthy, tmp_path, monkeypatch):
    monkeypatch.setattr("hubsched.celery.app", filesystem_app(tmp_path / "broker"))
    for path in ("/api/health", "/api/v1/health"):
        response = Client().get(path)
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["status"] == "ok"
        assert set(body["checks"]) == {"database", "broker", "sinks", "beat"}
        assert all(check["ok"] and check["ms"] >= 0 for check in body["checks"].values()), body
        assert body["checks"]["sinks"]["total"] == 1 and body["checks"]["sinks"]["failed"] == 0
        assert "Deprecation" not in response


@pytest.mark.django_db(transaction=True)
def test_health_is_503_naming_the_check_when_no_beat_leads_or_the_broker_is_down(installation, monkeypatch):
    monkeypatch.setattr("hubsched.celery.app", Celery("down", broker=f"redis://127.0.0.1:{unused_port()}/0", set_as_current=False))
    response = Client().get("/api/health")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert response.json()["status"] == "fail"
    assert checks["beat"] == {"ok": False, "ms": checks["beat"]["ms"], "error": "no beat leads"}
    assert checks["broker"]["ok"] is False and checks["broker"]["error"]
    assert checks["database"]["ok"] and checks["sinks"]["ok"]


def test_health_is_not_redirected_to_https_where_everything_else_is(settings):
    settings.SECURE_SSL_REDIRECT = True  # production's default: a container's health check asks over plain HTTP
    client = Client()
    assert client.get("/api/v1/status").status_code == 301
    assert client.get("/api/health").status_code in (200, 503)


@pytest.mark.django_db(transaction=True)
def test_the_container_probe_exits_0_while_healthy_and_1_once_not(healthy, live_server, tmp_path, monkeypatch):
    from hubsched.health import probe

    monkeypatch.setattr("hubsched.celery.app", filesystem_app(tmp_path / "broker"))
    monkeypatch.setenv("ALLOWED_HOSTS", "localhost,.example.com")
    assert probe(f"{live_server.url}/api/health") == 0
    monkeypatch.setattr("hubsched.celery.app", Celery("down", broker=f"redis://127.0.0.1:{unused_port()}/0", set_as_current=False))
    assert probe(f"{live_server.url}/api/health") == 1
    assert probe(f"http://127.0.0.1:{unused_port()}/api/health") == 1  # nothing listening


class SilentServer:
    """Accepts TCP connections and never answers: a database that hangs (its client waits with no timeout)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.django_db(transaction=True)
def test_a_hanging_sink_is_timed_out_within_the_bound_and_nothing_secret_is_shown(healthy, tmp_path, monkeypatch):
    monkeypatch.setattr("hubsched.celery.app", filesystem_app(tmp_path / "broker"))
    server = SilentServer()
    Sink.objects.create(project=healthy, name="archive",
                        url=f"postgresql+psycopg2://writer:{SECRET}@127.0.0.1:{server.port}/values")
    try:
        for _ in range(2):  # the second call finds the first check still hanging: it starts no other
            response = Client().get("/api/health")
            assert response.status_code == 503
            sinks = response.json()["checks"]["sinks"]
            assert sinks["ok"] is False and sinks["error"] == "timed out" and sinks["total"] == 1 and sinks["failed"] == 1
            text = response.content.decode()
            assert SECRET not in text and str(server.port) not in text and "writer" not in text
            assert response.json()["checks"]["database"]["ok"] and response.json()["checks"]["beat"]["ok"]
    finally:
        server.close()


# --- status ---------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_status_needs_a_login_and_view_group_and_its_old_path_is_a_deprecated_alias():
    make_groups()
    assert_error(Client().get("/api/v1/status"), 401, "not_authenticated")
    assert_error(Client().get("/api/status"), 401, "not_authenticated")
    error = assert_error(token_client(role=None).get("/api/v1/status"), 403, "permission_denied")
    assert "groups.view_group" in error["message"]
    client = token_client(role="viewer")
    new, old = client.get("/api/v1/status"), client.get("/api/status")
    assert new.status_code == old.status_code == 200
    assert {g["name"] for g in new.json()["groups"]} == {"fast", "fast-b", "slow", "cron", "off"}
    assert old.json()["groups"] == new.json()["groups"]
    assert old["Deprecation"] == "true" and old["Link"] == '</api/v1/status>; rel="successor-version"'
    assert "Deprecation" not in new
    fast = next(g for g in new.json()["groups"] if g["name"] == "fast-b")
    assert fast["hub"] == "hub-b" and fast["project"] == "plant"
    assert fast["hub_id"] == Hub.objects.get(name="hub-b").pk and fast["project_id"] == Project.objects.get().pk


@pytest.mark.django_db
def test_last_error_is_cleared_once_the_group_ran_ok_again_and_kept_as_previous_error():
    groups = make_groups()
    fast, slow, cron = groups["fast"], groups["slow"], groups["cron"]
    GroupStats.objects.create(group=fast, last_run_at=TICK, last_status=RunStatus.FAILED, last_error="hub down")
    GroupStats.objects.create(group=slow, last_run_at=TICK, last_status=RunStatus.OK, last_error="hub down")
    # failed, then two ticks missed: the error still stands, from the failed run's tick
    GroupRun.objects.create(group=cron, scheduled_for=TICK - timedelta(seconds=8), status=RunStatus.FAILED, error="boom")
    GroupRun.objects.create(group=cron, scheduled_for=TICK - timedelta(seconds=4), status=RunStatus.MISSED)
    GroupStats.objects.create(group=cron, last_run_at=TICK, last_status=RunStatus.MISSED, last_error="boom")
    shown = {g["name"]: g for g in token_client(role="viewer").get("/api/v1/status").json()["groups"]}
    assert (shown["fast"]["last_error"], shown["fast"]["last_error_at"], shown["fast"]["previous_error"]) == \
        ("hub down", "2026-11-20T10:00:10Z", None)
    assert (shown["slow"]["last_error"], shown["slow"]["last_error_at"], shown["slow"]["previous_error"]) == \
        (None, None, "hub down")
    assert (shown["cron"]["last_error"], shown["cron"]["last_error_at"]) == ("boom", "2026-11-20T10:00:02Z")
    assert shown["off"]["last_error"] is None and shown["off"]["previous_error"] is None


# --- scheduler ------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_scheduler_lists_the_ticks_due_from_the_groups_triggers(settings):
    settings.HUBSCHED_DISPATCH_LEAD_S = 0.25
    groups = make_groups()
    GroupStats.objects.create(group=groups["fast"], dispatched=7, missed=2)
    Group.objects.create(hub=groups["fast"].hub, name="once", trigger=Trigger.ONCE,
                         run_at=datetime(2026, 11, 20, 10, 0, 3, tzinfo=timezone.utc))
    now = datetime(2026, 11, 20, 10, 0, 0, 500000, tzinfo=timezone.utc).timestamp()
    plan = scheduler_summary(within_s=5, now=now)
    assert plan["next_tick_at"] == "2026-11-20T10:00:01Z"
    assert plan["next_wakeup"] == "2026-11-20T10:00:00.750000Z"  # the tick less the lead
    ticks = {t["at"]: (t["groups"], t["hubs"], t["cohorts"]) for t in plan["ticks"]}
    assert ticks == {
        "2026-11-20T10:00:01Z": (2, 2, ["interval 1 s"]),
        "2026-11-20T10:00:02Z": (2, 2, ["interval 1 s"]),
        "2026-11-20T10:00:03Z": (3, 2, ["interval 1 s", "once"]),
        "2026-11-20T10:00:04Z": (3, 2, ["cron */4 * * * * * UTC", "interval 1 s"]),
        "2026-11-20T10:00:05Z": (3, 2, ["interval 1 s", "interval 5 s"]),
    }
    assert plan["groups"] == {"total": 6, "active": 5, "interval": 3, "cron": 1, "once": 1, "on_change": 0}
    assert plan["counters"]["dispatched"] == 7 and plan["counters"]["missed"] == 2
    assert plan["ticks_truncated"] is False


@pytest.mark.django_db
def test_the_scheduler_endpoint_bounds_its_window_and_needs_view_group(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.HUBSCHED_LOCK_URL = ""
    make_groups()
    client = token_client(role="viewer")
    assert client.get("/api/v1/scheduler?within=2").json()["leader"] is None  # no beat runs
    beat = FileLeadership(tmp_path)
    beat.acquire()
    try:
        plan = client.get("/api/v1/scheduler?within=2").json()
    finally:
        beat.stop()
    assert plan["within_s"] == 2 and 2 <= len(plan["ticks"]) <= 3
    assert plan["leader"]["pid"] == os.getpid() and plan["leader"]["host"] == socket.gethostname()
    assert plan["leader"]["since"] and plan["leader"]["epoch"] is None
    for bad in ("-1", "3601", "soon"):
        error = assert_error(client.get(f"/api/v1/scheduler?within={bad}"), 422, "invalid")
        assert error["details"][0]["path"] == "within"
    assert_error(token_client(role=None).get("/api/v1/scheduler"), 403, "permission_denied")
    assert_error(Client().get("/api/v1/scheduler"), 401)


# --- workers --------------------------------------------------------------------------------------------------------


def broker_for(kind: str, work: Path) -> tuple[str, dict, Celery]:
    """The worker's environment and the test's own app on that broker."""
    name = f"sleeper-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "HUBSCHED_VAR_DIR": str(work / "var"), "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
           "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    if kind == "filesystem":
        env["CELERY_BROKER_URL"] = "filesystem://"
        app = filesystem_app(work / "var" / "broker")
    else:
        url = require_server(REDIS_URL, "Redis")
        env["CELERY_BROKER_URL"] = env["HUBSCHED_LOCK_URL"] = url
        app = Celery("workers-test", broker=url, set_as_current=False)
    return name, env, app


@pytest.mark.parametrize("kind", ["filesystem", "redis"])
def test_a_real_worker_is_listed_with_its_pool_queues_and_what_it_runs(kind, tmp_path):
    name, env, app = broker_for(kind, tmp_path)
    assert [w for w in workers_inspect(app=app, timeout=0.5) if w["name"].startswith(name)] == []
    queue = name
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "api.tests.celery_sleeper", "worker", "--pool",
                             "threads", "--concurrency", "2", "-Q", queue, "-n", f"{name}@%h", "-l", "WARNING"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        mine = []
        deadline = time.monotonic() + 60
        while not mine and time.monotonic() < deadline and proc.poll() is None:
            mine = [w for w in workers_inspect(app=app, timeout=1.0) if w["name"].startswith(name + "@")]
        assert mine, "the worker never answered the inspection"
        app.send_task("hubsched.tests.sleep", args=[60], queue=queue)
        while time.monotonic() < deadline and not mine[0]["active"]:
            mine = [w for w in workers_inspect(app=app, timeout=1.0) if w["name"].startswith(name + "@")]
        (worker,) = mine
        assert worker["host"] == socket.gethostname() and worker["pid"] == proc.pid
        assert worker["pool"] == "threads" and worker["concurrency"] == 2 and worker["queues"] == [queue]
        assert worker["last_heartbeat"] and worker["started_at"]
        (task,) = worker["active"]
        assert task["name"] == "hubsched.tests.sleep" and "60" in task["args"] and task["started_at"]
        assert "broker" not in json.dumps(worker)  # stats' broker section (its URL) is never passed on
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.django_db
def test_workers_is_an_empty_list_when_no_worker_answers_and_needs_view_group(tmp_path, monkeypatch):
    monkeypatch.setattr("hubsched.celery.app", filesystem_app(tmp_path / "broker"))
    client = token_client(role="viewer")
    response = client.get("/api/v1/workers?timeout=0.2")
    assert response.status_code == 200 and response.json() == []
    assert_error(client.get("/api/v1/workers?timeout=60"), 422, "invalid")
    assert_error(token_client(role=None).get("/api/v1/workers"), 403, "permission_denied")
    assert_error(Client().get("/api/v1/workers"), 401)


@pytest.mark.django_db
def test_workers_is_503_when_the_broker_does_not_answer(monkeypatch):
    monkeypatch.setattr("hubsched.celery.app", Celery("down", broker=f"redis://127.0.0.1:{unused_port()}/0", set_as_current=False,
                                                      broker_connection_retry=False,
                                                      broker_connection_max_retries=0))
    assert_error(token_client(role="viewer").get("/api/v1/workers?timeout=0.2"), 503, "unavailable")
