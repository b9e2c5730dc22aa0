"""Execution timeouts and kill (issue 13, item 3): against the reference hub, a misbehaving hub and real sandbox processes."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from groups import execution
from groups.models import Group, GroupKey, GroupRun, KillOutcome, KillRequest, RunStatus
from groups.services import group_run
from scripts_engine.models import Script
from scripts_engine.sandbox.pool import sandbox_pool

TICK = datetime(2026, 11, 20, 10, 0, 10, tzinfo=timezone.utc)
KEYS = (("plant/line1/pump1", "flow"), ("plant/line1/pump1", "pressure"))


def make_group(hub, *, name="pumps", script=None, execution_timeout=None) -> Group:
    group = Group.objects.create(hub=hub, name=name, period=1.0, script=script, execution_timeout=execution_timeout)
    for position, (entity, key) in enumerate(KEYS):
        GroupKey.objects.create(group=group, entity=entity, key=key, position=position)
    return group


def make_script(project, code: str, *, timeout: float = 10.0) -> Script:
    return Script.objects.create(project=project, name="s", code=code, timeout=timeout)


def user_with(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="groups", codename__in=codenames))
    return user


def api(user: User) -> Client:
    """A logged-in client that enforces CSRF, holding the token as a browser would."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/admin/")  # sets the csrftoken cookie
    return client


def kill(client: Client, group: Group, **params):
    token = client.cookies["csrftoken"].value
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.post(f"/api/groups/{group.pk}/kill" + (f"?{query}" if query else ""), HTTP_X_CSRFTOKEN=token)


def run_in_thread(group: Group) -> tuple[threading.Thread, list]:
    """``group_run`` of ``group`` in a thread, as a worker thread runs it; the list gets its GroupRun."""
    result: list = []

    def target():
        from django.db import connection

        try:
            result.append(group_run(group_id=group.pk, scheduled_for=TICK))
        finally:
            connection.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def wait_for(predicate, seconds: float = 10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# --- execution timeout ---------------------------------------------------------------------------------


def test_a_script_past_the_execution_timeout_fails_the_run_naming_the_timeout(project, make_hub, reference_hub):
    script = make_script(project, "while True:\n    pass\n", timeout=10.0)  # its own CPU limit would stop it after 10 s
    group = make_group(make_hub(reference_hub.url), script=script, execution_timeout=1.0)
    started = time.monotonic()
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.FAILED and run.values_count == 0
    assert run.error.startswith("execution timeout of 1.0 s exceeded during the script"), run.error
    assert time.monotonic() - started < 5.0  # the script's own limit (10 s CPU, 20 s wall) did not stop it


def test_a_slow_hub_past_the_execution_timeout_fails_the_run_during_the_reads(project, make_hub, faulty_hub):
    slow = faulty_hub("slow", delay=5.0)
    group = make_group(make_hub(slow.url, timeout=10.0), execution_timeout=0.5)
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("execution timeout of 0.5 s exceeded during the reads"), run.error


def test_an_execution_within_its_timeout_is_stored(project, make_hub, reference_hub):
    script = make_script(project, "flow = flow * 2\n")
    group = make_group(make_hub(reference_hub.url), script=script, execution_timeout=5.0)
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert (run.status, run.error, run.values_count) == (RunStatus.OK, "", 2)


@pytest.mark.parametrize("value", [0, -1.0])
def test_an_execution_timeout_must_be_more_than_zero(project, make_hub, reference_hub, value):
    from django.core.exceptions import ValidationError

    group = make_group(make_hub(reference_hub.url))
    group.execution_timeout = value
    with pytest.raises(ValidationError, match="more than 0 seconds"):
        group.full_clean()


# --- kill --------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_killed_script_in_an_endless_loop_is_recorded_as_killed_and_its_sandbox_process_is_gone(project, make_hub, reference_hub):
    script = make_script(project, "while True:\n    pass\n", timeout=30.0)
    group = make_group(make_hub(reference_hub.url), script=script)
    client = api(user_with("olga", "kill_group", "view_group"))
    thread, result = run_in_thread(group)
    pool = sandbox_pool()
    pid = wait_for(lambda: next((c.proc.pid for c in list(pool._running.values())), None))

    response = kill(client, group)
    assert response.status_code == 200, response.content
    assert response.json()["outcome"] == "killed" and response.json()["killed_by"] == "olga"
    thread.join(timeout=10)
    assert not thread.is_alive()
    run = result[0]
    assert (run.status, run.killed_by, run.values_count) == (RunStatus.KILLED, "olga", 0)
    assert run.error == "killed by olga during the script"
    stored = GroupRun.objects.get(group=group, scheduled_for=TICK)
    assert (stored.status, stored.killed_by) == (RunStatus.KILLED, "olga")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    group.stats.refresh_from_db()
    assert (group.stats.killed, group.stats.failed, group.stats.last_status) == (1, 0, RunStatus.KILLED)
    assert KillRequest.objects.get().outcome == KillOutcome.KILLED

    script.code = "flow = flow * 2\n"
    script.save()
    again = group_run(group_id=group.pk, scheduled_for=datetime(2026, 11, 20, 10, 0, 11, tzinfo=timezone.utc))
    assert (again.status, again.error, again.values_count) == (RunStatus.OK, "", 2)


@pytest.mark.django_db(transaction=True)
def test_a_killed_read_that_the_hub_never_answers_is_abandoned_and_recorded_as_killed(project, make_hub, faulty_hub, reference_hub):
    silent = faulty_hub("never_answer")
    hub = make_hub(silent.url, timeout=60.0)
    group = make_group(hub)
    client = api(user_with("olga", "kill_group", "view_group"))
    thread, result = run_in_thread(group)
    watch = execution.kill_watcher()
    wait_for(lambda: group.pk in watch.running)
    time.sleep(0.2)  # the reads are out, waiting for an answer that never comes

    response = kill(client, group, scheduled_for=TICK.isoformat().replace("+", "%2B"))
    assert response.status_code == 200, response.content
    thread.join(timeout=5)  # far less than the hub's 60 s timeout
    assert not thread.is_alive()
    run = result[0]
    assert (run.status, run.killed_by, run.error) == (RunStatus.KILLED, "olga", "killed by olga during the reads")

    hub.url = reference_hub.url  # the same worker runs the group again, the hub back
    hub.save()
    again = group_run(group_id=group.pk, scheduled_for=datetime(2026, 11, 20, 10, 0, 11, tzinfo=timezone.utc))
    assert (again.status, again.values_count) == (RunStatus.OK, 2)


@pytest.mark.django_db(transaction=True)
def test_a_kill_in_a_workers_batch_stops_that_execution_only_and_is_counted_through_the_log(project, make_hub, reference_hub, forward):
    from groups.services import group_runs_execute

    hub = make_hub(reference_hub.url)
    looping = make_group(hub, name="looping", script=make_script(project, "while True:\n    pass\n", timeout=30.0))
    plain = make_group(hub, name="plain")
    Group.objects.filter(pk__in=[looping.pk, plain.pk]).update(period=30.0)  # ticks that do not expire meanwhile
    now = datetime.now(timezone.utc)
    thread = threading.Thread(target=group_runs_execute, kwargs={"runs": [(looping.pk, now), (plain.pk, now)]}, daemon=True)
    thread.start()
    pool = sandbox_pool()
    wait_for(lambda: pool._running)
    response = kill(api(user_with("olga", "kill_group", "view_group")), looping, scheduled_for=now.isoformat().replace("+", "%2B"))
    assert response.status_code == 200, response.content
    thread.join(timeout=10)
    assert not thread.is_alive()
    forward()  # the run recorder reads the outcomes from the log, as ``manage.py forward`` does
    runs = {r.group_id: r for r in GroupRun.objects.all()}
    assert (runs[looping.pk].status, runs[looping.pk].killed_by) == (RunStatus.KILLED, "olga")
    assert (runs[plain.pk].status, runs[plain.pk].values_count) == (RunStatus.OK, 2)
    looping.stats.refresh_from_db()
    stats = looping.stats
    assert (stats.done, stats.failed, stats.skipped, stats.missed, stats.killed, stats.started) == (0, 0, 0, 0, 1, 1)


@pytest.mark.django_db(transaction=True)
def test_a_kill_with_nothing_running_says_so(project, make_hub, reference_hub, monkeypatch):
    monkeypatch.setattr(execution, "KILL_PICKUP_S", 0.5)
    group = make_group(make_hub(reference_hub.url))
    response = kill(api(user_with("olga", "kill_group", "view_group")), group)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert response.json()["error"]["message"] == f"nothing was running: no worker was executing group {group.pk}"
    assert KillRequest.objects.get().outcome == KillOutcome.NOTHING_RUNNING


def test_a_user_without_the_kill_permission_gets_403(project, make_hub, reference_hub):
    group = make_group(make_hub(reference_hub.url))
    response = kill(api(user_with("vera", "view_group", "run_group")), group)
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "permission required: groups.kill_group"
    assert not KillRequest.objects.exists()


def test_a_kill_without_the_csrf_token_is_refused(project, make_hub, reference_hub):
    group = make_group(make_hub(reference_hub.url))
    client = api(user_with("olga", "kill_group", "view_group"))
    assert client.post(f"/api/groups/{group.pk}/kill").status_code == 403
    assert not KillRequest.objects.exists()


def test_an_anonymous_kill_gets_401(project, make_hub, reference_hub):
    group = make_group(make_hub(reference_hub.url))
    client = Client()
    assert client.post(f"/api/groups/{group.pk}/kill").status_code == 401


def test_the_operator_role_may_kill(db):
    from hubsched.roles import OPERATOR, VIEWER, role_permissions

    roles = role_permissions()
    assert "groups.kill_group" in roles[OPERATOR] and "groups.kill_group" not in roles[VIEWER]


def test_a_killed_outcome_keeps_who_killed_it_through_the_codec_and_old_records_still_decode():
    from scripts_engine.sinks import ExecutionValues
    from streams.codec import TickOutcome, outcome_decode, outcome_encode, outcome_header

    execution_values = ExecutionValues(TICK, "plant", "hub-a", 7, "pumps", [])
    body = outcome_encode(TickOutcome(execution_values, 1, "killed", "killed by olga during the script", TICK, TICK, "olga"))
    decoded = outcome_decode(body)
    assert (decoded.status, decoded.killed_by) == ("killed", "olga")
    assert outcome_header(body)["killed_by"] == "olga"
    old = outcome_encode(TickOutcome(execution_values, 1, "failed", "boom", TICK, TICK))
    assert b"killed_by" not in old  # records of the other statuses are as before
    assert outcome_decode(old).killed_by == ""


def test_the_kill_watcher_reads_the_pending_requests_in_one_query_whatever_the_number_of_groups(db):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert execution.KillWatch().poll(list(range(1, 5001))) == 0
    assert len(queries) == 1


@pytest.mark.postgres
def test_the_same_tests_pass_on_postgresql():
    """The kill watcher's thread, the requester and the worker thread each on their own PostgreSQL connection."""
    import subprocess
    import sys
    from pathlib import Path

    from django.db import connection

    from hubsched.testing import postgres_url

    if connection.vendor == "postgresql":
        pytest.skip("this session runs on PostgreSQL already")
    url = postgres_url().replace("postgresql+psycopg2://", "postgresql://")
    url = f"{url.rsplit('/', 1)[0]}/hubsched_kill_{os.getpid()}"  # pytest-django makes and drops test_<name>
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "not on_postgresql"],
        cwd=Path(__file__).resolve().parents[2], env={**os.environ, "DATABASE_URL": url},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_a_project_document_carries_the_execution_timeout_and_import_refuses_zero(project, make_hub, reference_hub):
    import json

    from hubs.project_document import ProjectDocumentError
    from hubs.services import project_export, project_import

    make_group(make_hub(reference_hub.url), execution_timeout=2.5)
    document = json.loads(project_export(project=project, include_secrets=True))
    assert document["hubs"][0]["groups"][0]["execution_timeout"] == 2.5
    project.delete()
    imported = project_import(raw=json.dumps(document).encode(), replace=False).project
    assert Group.objects.get(hub__project=imported).execution_timeout == 2.5
    document["name"] = "other"
    document["hubs"][0]["groups"][0]["execution_timeout"] = 0
    with pytest.raises(ProjectDocumentError) as refused:
        project_import(raw=json.dumps(document).encode(), replace=False)
    assert "hubs[0].groups[0].execution_timeout: The execution timeout must be more than 0 seconds (empty: none)." in refused.value.errors
