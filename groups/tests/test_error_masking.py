"""Run errors are free of secrets where they are recorded (GroupRun.error, GroupStats.last_error) and shown (/api/status).

Defence in depth: the hub client and the sinks mask their own messages at the source; these tests
hold the recording and presenting side to it whatever text reaches it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from groups.models import Group, GroupKey, GroupRun, GroupStats, RunStatus
from groups.scheduler.stats import RunTotals
from groups.selectors import status_summary
from groups.services import group_run, group_runs_record
from hubs.hubsim.faults import unused_port
from scripts_engine.models import Script

from .conftest import HUB_KEY

TICK = datetime(2026, 11, 20, 10, 0, 10, tzinfo=timezone.utc)
PASSWORD = "hub-Pa55-81d2"
TOKEN = "tok-5e0c77"
SINK_PASSWORD = "pg-Pa55-3b19"


def make_group(hub, *, script: Script | None = None) -> Group:
    group = Group.objects.create(hub=hub, name="pumps", period=1.0, script=script)
    GroupKey.objects.create(group=group, entity="plant/line1/pump1", key="flow", position=0)
    return group


def shown_everywhere(group: Group) -> list[str]:
    """The run's error, the group's last error, the status selector's JSON and the HTTP status body."""
    superuser = get_user_model().objects.create_superuser("root", "root@example.com", "pw-not-used-1")
    client = Client()
    client.force_login(superuser)
    response = client.get("/api/status")
    assert response.status_code == 200
    return [
        GroupRun.objects.get(group=group).error,
        GroupStats.objects.get(group=group).last_error,
        json.dumps(status_summary()),
        response.content.decode(),
    ]


def test_an_unreachable_hub_url_with_user_password_and_token_is_never_shown(project, make_hub):
    url = f"ws://ops:{PASSWORD}@127.0.0.1:{unused_port()}/connect?token={TOKEN}&site=north"
    group = make_group(make_hub(url, timeout=1.0))
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.FAILED and "connect" in run.error.lower()
    for text in shown_everywhere(group):
        assert PASSWORD not in text and TOKEN not in text
    assert "site=north" in run.error  # the rest of the URL still says which hub it was


def test_a_failing_run_whose_error_holds_a_url_and_the_hub_key_is_recorded_masked(project, make_hub, reference_hub):
    # The script's own exception carries the secrets: no adapter masked this text before it was recorded.
    script = Script.objects.create(
        project=project,
        name="leaky",
        code=f'raise ValueError("cannot reach postgresql://writer:{SINK_PASSWORD}@db/values?token={TOKEN} with {HUB_KEY}")\n',
    )
    group = make_group(make_hub(reference_hub.url), script=script)
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.FAILED and "cannot reach postgresql://writer:***@db/values" in run.error
    for text in shown_everywhere(group):
        assert SINK_PASSWORD not in text and TOKEN not in text and HUB_KEY not in text


def test_the_status_masks_a_last_error_recorded_before_masking(project, make_hub):
    group = make_group(make_hub("ws://127.0.0.1:1/connect"))
    GroupStats.objects.create(group=group, last_error=f"hub 'hub-a': ws://ops:{PASSWORD}@hub/connect?token={TOKEN} said {HUB_KEY}")
    (shown,) = [g["last_error"] for g in status_summary()["groups"] if g["id"] == group.pk]
    assert shown == "hub 'hub-a': ws://ops:***@hub/connect?token=*** said ***"


def test_recorded_counters_keep_the_last_error_masked(project, make_hub):
    group = make_group(make_hub("ws://127.0.0.1:1/connect"))
    error = f"sink: postgresql://writer:{SINK_PASSWORD}@db/values?api_key={TOKEN} refused"
    run = GroupRun(group_id=group.pk, scheduled_for=TICK, started_at=TICK, finished_at=TICK, status=RunStatus.FAILED,
                   error=error, values_count=0)
    group_runs_record(runs=[(run, 0)])
    assert GroupStats.objects.get(group=group).last_error == "sink: postgresql://writer:***@db/values?api_key=*** refused"


def test_run_totals_mask_the_error_they_keep():
    totals = RunTotals()
    totals.add(scheduled_for=TICK, status=RunStatus.FAILED, error=f"ws://u:{PASSWORD}@h/x", values=0, lag_ms=0)
    assert totals.last_error == "ws://u:***@h/x"


@pytest.mark.parametrize("error", ["", "hub 'hub-a': timeout after 1.0 s"])
def test_errors_without_secrets_are_recorded_as_they_are(project, make_hub, error):
    group = make_group(make_hub("ws://127.0.0.1:1/connect"))
    status = RunStatus.FAILED if error else RunStatus.OK
    run = GroupRun(group_id=group.pk, scheduled_for=TICK, started_at=TICK, finished_at=TICK, status=status,
                   error=error, values_count=0)
    group_runs_record(runs=[(run, 0)])
    assert GroupRun.objects.get(group=group).error == error
    assert (GroupStats.objects.get(group=group).last_error or "") == error
