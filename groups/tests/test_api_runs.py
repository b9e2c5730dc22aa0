"""/api/v1/groups/{id}/runs and /runs/{run_id}/values: a group's runs (GroupRun), its counters, and a run's values
as the durable log holds them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.test import Client
from django.utils import timezone as dj_timezone

from api.testing import assert_error, token_client
from groups.models import Group, GroupKey, GroupRun, GroupStats, RunStatus
from groups.services import group_run
from hubs.models import Hub, Project
from scripts_engine.models import Script
from scripts_engine.sinks import ExecutionValues
from streams.codec import TickOutcome, outcome_encode
from streams.log import EXECUTIONS
from streams.services import log_append

T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def group(db):
    project = Project.objects.create(name="plant")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:1/", api_key="hub-secret-key")
    group = Group.objects.create(hub=hub, name="pumps", period=1.0)
    GroupKey.objects.create(group=group, entity="plant/line1/pump1", key="flow")
    return group


def runs_of(group, statuses):
    """One GroupRun a second from T0, newest last, with these statuses."""
    rows = []
    for i, status in enumerate(statuses):
        tick = T0 + timedelta(seconds=i)
        rows.append(GroupRun.objects.create(
            group=group, scheduled_for=tick, status=status,
            started_at=tick if status not in ("skipped", "missed") else None,
            finished_at=tick + timedelta(milliseconds=20),
            error="hub 'hub-a': refused key hub-secret-key" if status == "failed" else "",
            values_count=1 if status == "ok" else 0))
    return rows


def test_runs_are_listed_newest_first_filtered_and_paginated(group):
    runs = runs_of(group, ["ok", "failed", "ok", "skipped", "missed", "killed", "ok"])
    client = token_client(role="viewer")
    page = client.get(f"/api/v1/groups/{group.pk}/runs?limit=3")
    assert page.status_code == 200, page.content
    doc = page.json()
    assert (doc["count"], doc["limit"], doc["offset"]) == (7, 3, 0)
    assert [r["id"] for r in doc["items"]] == [runs[6].pk, runs[5].pk, runs[4].pk]
    assert doc["items"][2]["status"] == "missed" and doc["items"][2]["started_at"] is None

    def ids(query):
        response = client.get(f"/api/v1/groups/{group.pk}/runs?{query}")
        assert response.status_code == 200, response.content
        return [r["id"] for r in response.json()["items"]]

    assert ids("status=ok") == [runs[6].pk, runs[2].pk, runs[0].pk]
    since = (T0 + timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    until = (T0 + timedelta(seconds=4)).isoformat().replace("+", "%2B")
    assert ids(f"since={since}&until={until}") == [runs[4].pk, runs[3].pk, runs[2].pk]
    assert ids("limit=2&offset=5") == [runs[1].pk, runs[0].pk]


def test_a_runs_error_is_masked(group):
    runs_of(group, ["failed"])
    run = token_client(role="viewer").get(f"/api/v1/groups/{group.pk}/runs").json()["items"][0]
    assert run["status"] == "failed" and "hub-secret-key" not in run["error"] and "***" in run["error"]


def test_bad_run_filters_are_refused_with_their_path(group):
    client = token_client(role="viewer")
    assert assert_error(client.get(f"/api/v1/groups/{group.pk}/runs?status=great"), 422)["details"][0]["path"] == "status"
    assert assert_error(client.get(f"/api/v1/groups/{group.pk}/runs?since=yesterday"), 422)["details"][0]["path"] == "since"
    assert assert_error(client.get(f"/api/v1/groups/{group.pk}/runs?until=2026-01-01T00:00:00"), 422)["details"][0]["path"] == "until"
    assert_error(client.get(f"/api/v1/groups/{group.pk}/runs?limit=5000"), 422)


def test_runs_need_the_view_permissions_a_login_and_a_known_group(group):
    assert_error(Client().get(f"/api/v1/groups/{group.pk}/runs"), 401)
    error = assert_error(token_client(role=None).get(f"/api/v1/groups/{group.pk}/runs"), 403)
    assert "groups.view_grouprun" in error["message"]
    assert_error(token_client(role="viewer").get("/api/v1/groups/999999/runs"), 404)


def test_the_groups_counters_come_with_the_group(group):
    GroupStats.objects.create(group=group, dispatched=10, started=8, done=6, failed=1, killed=1, skipped=1, missed=1,
                              values=6, lag_ms_total=80, last_run_at=T0, last_status="failed",
                              last_error="refused key hub-secret-key")
    stats = token_client(role="viewer").get(f"/api/v1/groups/{group.pk}").json()["stats"]
    assert (stats["dispatched"], stats["done"], stats["failed"], stats["skipped"], stats["missed"], stats["killed"]) == (
        10, 6, 1, 1, 1, 1)
    assert (stats["runs"], stats["values"], stats["lag_ms_mean"], stats["last_status"]) == (8, 6, 10.0, "failed")
    assert "hub-secret-key" not in stats["last_error"]


def test_a_runs_values_are_read_from_the_log(group):
    now = dj_timezone.now()
    tick = now.replace(microsecond=0)
    values = [("plant/line1/pump1", [{"key": "flow", "value": 12.5, "ts": "2026-11-20T10:00:00.000Z"}]),
              ("", [{"key": "double", "value": 25.0}])]
    other = ExecutionValues(tick, "plant", "hub-a", group.pk + 1000, "other", [("e", [{"key": "k", "value": 1}])])
    mine = ExecutionValues(tick, "plant", "hub-a", group.pk, "pumps", values)
    log_append(stream=EXECUTIONS, deadline_s=5, bodies=[
        outcome_encode(TickOutcome(other, group.hub.project_id, "ok", "", now, now)),
        outcome_encode(TickOutcome(mine, group.hub.project_id, "ok", "", now, now)),
    ])
    run = GroupRun.objects.create(group=group, scheduled_for=tick, started_at=now, finished_at=now, status="ok",
                                  values_count=2)
    client = token_client(role="viewer")
    found = client.get(f"/api/v1/groups/{group.pk}/runs/{run.pk}/values")
    assert found.status_code == 200, found.content
    doc = found.json()
    assert (doc["status"], doc["values_count"], doc["error"]) == ("ok", 2, "")
    assert doc["values"] == [[entity, items] for entity, items in values]
    old = GroupRun.objects.create(group=group, scheduled_for=tick - timedelta(days=1), status="ok",
                                  finished_at=now - timedelta(days=1))
    assert_error(client.get(f"/api/v1/groups/{group.pk}/runs/{old.pk}/values"), 404)
    assert_error(client.get(f"/api/v1/groups/{group.pk + 1}/runs/{run.pk}/values"), 404)
    error = assert_error(token_client(role=None, ).get(f"/api/v1/groups/{group.pk}/runs/{run.pk}/values"), 403)
    assert "streams.read_stream" in error["message"]


@pytest.mark.django_db(transaction=True)
def test_a_run_against_a_real_hub_shows_its_run_counters_and_the_values_its_script_made(project, make_hub, reference_hub, forward):
    """The worker's path end to end (run now: poll, script, write-back, log, record), then read through the API."""
    hub = make_hub(reference_hub.url)
    script = Script.objects.create(project=project, name="double", code="double = flow * 2\n")
    client = token_client(role="integrator")
    made = client.post("/api/v1/groups", {"hub": hub.pk, "name": "pumps", "period": 30, "script": script.pk,
                                          "keys": [{"entity": "plant/line1/pump1", "key": "flow"}]},
                       content_type="application/json")
    assert made.status_code == 201, made.content
    run = group_run(group_id=made.json()["id"])
    assert run.status == RunStatus.OK, run.error
    forward()
    listed = client.get(f"/api/v1/groups/{run.group_id}/runs").json()
    assert listed["count"] == 1 and listed["items"][0]["status"] == "ok" and listed["items"][0]["values_count"] == 2
    stats = client.get(f"/api/v1/groups/{run.group_id}").json()["stats"]
    assert (stats["done"], stats["values"], stats["last_status"]) == (1, 2, "ok")
    values = client.get(f"/api/v1/groups/{run.group_id}/runs/{listed['items'][0]['id']}/values")
    assert values.status_code == 200, values.content
    by_entity = {entity: {v["key"]: v["value"] for v in items} for entity, items in values.json()["values"]}
    assert by_entity[""]["double"] == by_entity["plant/line1/pump1"]["flow"] * 2
