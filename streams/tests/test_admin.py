"""The log's admin used as each role would (forwarders and their alarms, consumer offsets, the quarantine's retry,
export and delete), and the log's part of /api/status (``streams.selectors.log_status``)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group as AuthGroup
from django.urls import reverse
from django.utils import timezone

from hubs.models import Project
from streams.codec import execution_encode
from streams.log import EXECUTIONS, log
from streams.models import ConsumerOffset, Forwarder, QuarantinedExecution
from streams.selectors import log_status, log_status_line
from streams.tests.helpers import LONG_KEY, TICK, pump_execution, quarantine_by_refusal, stored, widen_key_column

SECRET = "pw-in-an-error"


def url(model, view="changelist", *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def action(client, name, rows, model=QuarantinedExecution):
    return client.post(url(model), {"action": name, "_selected_action": [r.pk for r in rows]}, follow=True)


@pytest.fixture
def login(client, db):
    """``login(role)``: the test client logged in as a staff user of that role (hubsched/roles.py); ``None``: a
    staff user without any permission; ``"superuser"``: one holding every permission."""

    def as_role(role: str | None):
        users = get_user_model().objects
        name = role or "nobody"
        if role == "superuser":
            user = users.create_superuser(name, f"{name}@example.com", "pw-123456")
        else:
            user = users.create_user(name, password="pw-123456", is_staff=True)
            if role:
                user.groups.add(AuthGroup.objects.get(name=role))
        client.force_login(user)
        return client

    return as_role


def forwarder(*, wanted: bool = True, **fields) -> Forwarder:
    """A forwarder row as a healthy leader reports it; ``wanted``: a project without a sink of its own exists, so
    the configuration asks for the default sink's forwarder."""
    if wanted:
        Project.objects.get_or_create(name="plant")
    defaults = {"name": "sink:default", "kind": "sink", "stream": EXECUTIONS, "state": "running",
                "reported_at": timezone.now(), "lag_records": 12, "lag_values": 240, "lag_seconds": 3.5,
                "backlog_percent": 10.0, "position": 41, "owner": "host:1"}
    return Forwarder.objects.create(**{**defaults, **fields})


def quarantined(fwd: Forwarder, n: int = 1) -> QuarantinedExecution:
    return QuarantinedExecution.objects.create(
        forwarder=fwd, stream=EXECUTIONS, offset=n, group_id=500 + n, tick=TICK + timedelta(seconds=n), project="plant",
        hub="hub-a", group=f"pumps{n}", values_count=2, body=execution_encode(pump_execution(n, key=LONG_KEY)),
        error="value too long for type character varying(200)", tries=3)


# --- forwarders and offsets: read-only for everyone ---------------------------------------------------------


def test_the_forwarder_list_shows_lag_backlog_and_rates_to_a_viewer(login):
    forwarder(records_in_rate=250.0, records_out_rate=248.5, dropped_records=0)
    page = login("viewer").get(url(Forwarder))
    assert page.status_code == 200
    text = page.content.decode()
    for shown in ("sink:default", "host:1", "240", "3.5", "10.0 %", "250.0", "248.5"):
        assert shown in text


def test_a_backlog_past_the_alarm_percent_and_a_retrying_state_show_as_alarms_with_the_error_masked(login, settings):
    settings.HUBSCHED_LOG_BACKLOG_ALARM_PERCENT = 80.0
    forwarder(state="retrying", backlog_percent=85.0,
              last_error=f"connection refused: postgresql://u:{SECRET}@db:5432/values")
    text = login("viewer").get(url(Forwarder)).content.decode()
    assert "backlog at 85.0 % of retention" in text and "retrying" in text
    assert SECRET not in text


def test_a_forwarder_that_stopped_reporting_shows_as_an_alarm(login):
    forwarder(reported_at=timezone.now() - timedelta(hours=1))
    assert "stale" in login("viewer").get(url(Forwarder)).content.decode()


def test_a_forwarders_page_shows_it_read_only_with_its_alarms_and_links_to_its_quarantine(login):
    row = forwarder(state="stopped", last_error=f"postgresql://u:{SECRET}@db/x refused")
    quarantined(row)
    client = login("viewer")
    page = client.get(url(Forwarder, "change", row.pk))
    text = page.content.decode()
    assert page.status_code == 200 and "no process leads it" in text and 'name="_save"' not in text
    assert "db/x refused" in text and SECRET not in text
    link = url(QuarantinedExecution) + f"?forwarder__id__exact={row.pk}"
    assert link.replace("&", "&amp;") in client.get(url(Forwarder)).content.decode()
    listing = client.get(link)
    assert listing.status_code == 200 and "hub-a/pumps1" in listing.content.decode()


def test_a_healthy_forwarder_shows_no_alarm(login):
    forwarder()
    page = login("viewer").get(url(Forwarder))
    assert "stale" not in page.content.decode() and "retention (alarm" not in page.content.decode()


@pytest.mark.parametrize("model", [Forwarder, ConsumerOffset], ids=lambda m: m.__name__)
def test_nobody_adds_changes_or_deletes_forwarders_or_offsets_by_hand_not_even_a_superuser(login, model):
    row = forwarder() if model is Forwarder else ConsumerOffset.objects.create(stream=EXECUTIONS, consumer="runs", offset=4)
    client = login("superuser")
    assert client.get(url(model, "add")).status_code == 403
    assert client.get(url(model, "delete", row.pk)).status_code == 403
    page = client.post(url(model, "change", row.pk), {"name": "renamed", "stream": "x", "offset": 9, "consumer": "y"})
    assert page.status_code == 403
    assert "delete_selected" not in client.get(url(model)).content.decode()
    row.refresh_from_db()
    if model is Forwarder:
        assert (row.name, row.stream) == ("sink:default", EXECUTIONS)
    else:
        assert row.offset == 4


def test_a_staff_user_without_permissions_is_refused_the_log_pages(login):
    row = quarantined(forwarder())
    client = login(None)
    for model in (Forwarder, ConsumerOffset, QuarantinedExecution):
        assert client.get(url(model)).status_code == 403
    assert client.get(url(QuarantinedExecution, "change", row.pk)).status_code == 403
    assert action(client, "delete_selected", [row]).status_code == 403
    assert action(client, "retry", [row]).status_code == 403
    assert action(client, "export_json", [row]).status_code == 403
    assert QuarantinedExecution.objects.filter(pk=row.pk, tries=3).exists()


# --- the quarantine -----------------------------------------------------------------------------------------


def test_the_quarantine_list_shows_forwarder_hub_group_tick_error_and_tries(login):
    quarantined(forwarder())
    text = login("viewer").get(url(QuarantinedExecution)).content.decode()
    for shown in ("sink:default", "hub-a/pumps1", "value too long", "2026"):
        assert shown in text


def test_a_quarantined_executions_page_shows_its_record_decoded_and_nothing_to_edit(login):
    row = quarantined(forwarder())
    page = login("operator").get(url(QuarantinedExecution, "change", row.pk))
    text = page.content.decode()
    assert page.status_code == 200
    assert LONG_KEY in text and "&quot;status&quot;: &quot;ok&quot;" in text  # indented JSON, escaped
    assert 'name="_save"' not in text and "<textarea" not in text
    assert login("admin").get(url(QuarantinedExecution, "add")).status_code == 403


def test_a_viewer_exports_but_can_neither_retry_nor_delete(login):
    row = quarantined(forwarder())
    client = login("viewer")
    listing = client.get(url(QuarantinedExecution)).content.decode()
    assert 'value="export_json"' in listing and 'value="retry"' not in listing and 'value="delete_selected"' not in listing
    for name in ("retry", "delete_selected"):
        page = action(client, name, [row])
        assert "No action selected." in messages_of(page)
    assert QuarantinedExecution.objects.filter(pk=row.pk, tries=3).exists()
    export = action(client, "export_json", [row])
    assert export["Content-Type"] == "application/json" and "attachment" in export["Content-Disposition"]
    (item,) = json.loads(export.content)
    assert item["record"]["values"][0][1][0]["key"] == LONG_KEY


def test_an_operator_deletes_with_the_admins_own_delete(login):
    row = quarantined(forwarder())
    client = login("operator")
    confirm = action(client, "delete_selected", [row])
    assert confirm.status_code == 200 and "Are you sure" in confirm.content.decode()
    client.post(url(QuarantinedExecution), {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"})
    assert not QuarantinedExecution.objects.exists()


@pytest.mark.postgres
def test_an_operator_retries_a_refused_execution_after_the_fix_and_is_told_it_was_stored(login, pg_sink):
    (row,) = quarantine_by_refusal(pg_sink)
    client = login("operator")
    refused = action(client, "retry", [row])
    assert any("1 refused again" in m and "value too long" in m for m in messages_of(refused))
    assert QuarantinedExecution.objects.get(pk=row.pk).tries == 2
    widen_key_column(pg_sink)
    done = action(client, "retry", [row])
    assert any("1 execution(s) stored (2 values)" in m for m in messages_of(done))
    assert not QuarantinedExecution.objects.exists()
    assert (501, LONG_KEY) in stored(pg_sink.url, pg_sink.table)


# --- the log in /api/status ---------------------------------------------------------------------------------


def test_log_status_gives_the_streams_extent_and_each_forwarders_lag_without_alarms_when_healthy(db):
    log().append(EXECUTIONS, [b'{"v":1}', b'{"v":1}'])
    row = forwarder()
    quarantined(row)
    status = log_status()
    assert (status["backend"], status["reachable"], status["error"]) == ("sqlite", True, None)
    stream = status["streams"][EXECUTIONS]
    assert (stream["records"], stream["bytes"], stream["last_offset"] - stream["first_offset"]) == (2, 14, 1)
    assert stream["retention"]["max_age_s"] > 0 and stream["fill_percent"] >= 0
    (shown,) = status["forwarders"]
    assert (shown["name"], shown["lag_records"], shown["lag_values"], shown["quarantined"], shown["alarm"]) == (
        "sink:default", 12, 240, 1, False)
    assert status["alarms"] == [] and (status["lag_records"], status["quarantined"], status["dropped"]) == (12, 1, 0)
    assert log_status_line(status) == "log: lag 12 rec, 1 quarantined"
    json.dumps(status)  # as /api/status serves it


def test_log_status_says_why_a_forwarder_is_in_alarm(db, settings):
    settings.HUBSCHED_FORWARDER_REPORT_S = 2.0
    forwarder(state="retrying", backlog_percent=90.0, dropped_records=5, last_error=f"postgresql://u:{SECRET}@db/x",
              reported_at=timezone.now() - timedelta(seconds=7))  # more than 3 x 2 s ago
    status = log_status()
    (shown,) = status["forwarders"]
    reasons = " | ".join(shown["alarm_reasons"])
    assert shown["alarm"] and "backlog at 90.0 %" in reasons and "retrying" in reasons and "stale" in reasons
    assert "5 records dropped" in reasons
    assert len(status["alarms"]) == 4 and all(a.startswith("sink:default: ") for a in status["alarms"])
    assert SECRET not in json.dumps(status)
    assert log_status_line(status) == "log: lag 12 rec, 0 quarantined, 5 dropped, 4 alarms"


def test_a_forwarder_the_configuration_no_longer_wants_raises_no_alarm(login):
    forwarder(wanted=False, state="stopped", reported_at=timezone.now() - timedelta(days=1))  # no project: no default sink
    (shown,) = log_status()["forwarders"]
    assert (shown["wanted"], shown["alarm"]) == (False, False)
    text = login("viewer").get(url(Forwarder)).content.decode()
    assert "no longer asks for it" in text and "stale" not in text


def test_log_status_answers_when_the_log_is_unreachable_and_says_so(db, settings):
    settings.HUBSCHED_LOG_URL = "rabbitmq-stream://guest:guest@127.0.0.1:1/"
    forwarder()
    status = log_status()
    assert (status["backend"], status["reachable"], status["streams"]) == ("rabbitmq-streams", False, {})
    assert status["error"] and "127.0.0.1:1" in status["error"]
    assert status["url"] == "rabbitmq-stream://guest:***@127.0.0.1:1/" and "guest:guest" not in json.dumps(status)
    assert status["alarms"][0].startswith("log: unreachable")
    assert status["forwarders"][0]["name"] == "sink:default"  # the rows are still shown
    assert log_status_line(status) == "log: unreachable, 0 quarantined"
