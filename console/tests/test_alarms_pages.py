"""The console's overview and alarm pages through Django's test client: login and permission on every view, the
list and its filter, acknowledging with a note, bad input answered beside the field with nothing changed, CSRF."""

from __future__ import annotations

import pytest
from django.test import Client

from alarms.models import Alarm, AlarmEvent
from alarms.services import NOTE_MAX_CHARS, alarm_acknowledge, alarm_raise
from api.testing import logged_in, user_with
from hubs.models import Project


def raise_alarm(project, subject: str = "plant/hub-a", severity: str = "critical") -> Alarm:
    alarm, _ = alarm_raise(project_id=project.pk, source="system", kind="hub_unreachable", subject=subject,
                           severity=severity, message=f"hub {subject} unreachable for 60 s", values={})
    return alarm


@pytest.fixture
def project(db):
    return Project.objects.create(name="plant")


@pytest.mark.django_db
def test_every_page_needs_a_login_and_a_permission_not_just_staff(project):
    alarm = raise_alarm(project)
    for path in ("/", "/alarms/"):
        response = Client().get(path)
        assert response.status_code == 302 and response["Location"] == f"/accounts/login/?next={path}"
    staff_only = logged_in(None)  # user_with makes staff users: staff alone is no permission
    assert staff_only.get("/").status_code == 403
    assert staff_only.get("/alarms/").status_code == 403
    viewer = logged_in("viewer")
    assert viewer.get("/").status_code == 200 and viewer.get("/alarms/").status_code == 200
    assert viewer.post(f"/alarms/{alarm.pk}/acknowledge", {"note": "x"}).status_code == 403
    assert Alarm.objects.get(pk=alarm.pk).state == "active"
    assert viewer.get(f"/alarms/{alarm.pk}/acknowledge").status_code == 405


@pytest.mark.django_db
def test_the_overview_counts_the_project_and_the_open_alarms_by_severity(project):
    raise_alarm(project, "a", "critical")
    raise_alarm(project, "b", "low")
    cleared = raise_alarm(project, "c", "critical")
    Alarm.objects.filter(pk=cleared.pk).update(state="cleared")
    page = logged_in("viewer").get("/").content.decode()
    assert '<dt>Projects</dt><dd>1</dd>' in page
    assert '<div class="sev-critical"><dt>Critical</dt><dd>1</dd></div>' in page
    assert '<div class="sev-low"><dt>Low</dt><dd>1</dd></div>' in page
    assert "vendor/htmx.min.js" in page and "vendor/alpine.min.js" in page  # served from static/, no CDN
    assert "https://" not in page


@pytest.mark.django_db
def test_the_list_shows_open_alarms_filters_by_state_and_answers_htmx_with_the_table_only(project):
    active = raise_alarm(project, "a")
    acked = raise_alarm(project, "b")
    operator = user_with(role="operator")
    alarm_acknowledge(alarm=acked, by=operator, note="seen")
    client = logged_in("viewer")
    page = client.get("/alarms/").content.decode()
    assert f'id="alarm-{active.pk}"' in page and f'id="alarm-{acked.pk}"' in page and "<html" in page
    only_active = client.get("/alarms/?state=active").content.decode()
    assert f'id="alarm-{active.pk}"' in only_active and f'id="alarm-{acked.pk}"' not in only_active
    fragment = client.get("/alarms/?state=acknowledged", HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith('<div id="alarms"') and "<html" not in fragment
    assert f'id="alarm-{acked.pk}"' in fragment and f"{operator.username}: seen" in fragment
    assert "Acknowledge…" not in page and "ack-form" not in page  # the viewer may not: no button
    bad = client.get("/alarms/?state=on-fire")
    assert bad.status_code == 400 and "state:" in bad.content.decode()
    assert client.get("/alarms/?page=x").status_code == 400


@pytest.mark.django_db
def test_an_operator_acknowledges_with_a_note_and_the_journal_has_it(project):
    alarm = raise_alarm(project)
    user = user_with(role="operator")
    client = Client()
    client.force_login(user)
    response = client.post(f"/alarms/{alarm.pk}/acknowledge", {"note": "  pump checked  "}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "<html" not in response.content.decode()
    alarm.refresh_from_db()
    assert alarm.state == "acknowledged" and alarm.acknowledged_by == user and alarm.acknowledged_note == "pump checked"
    assert AlarmEvent.objects.filter(alarm=alarm, transition="acknowledged", by=user, note="pump checked").count() == 1
    assert f"{user.username}: pump checked" in response.content.decode()


@pytest.mark.django_db
def test_a_note_too_long_is_answered_beside_its_field_and_nothing_changes(project):
    alarm = raise_alarm(project)
    client = logged_in("operator")
    response = client.post(f"/alarms/{alarm.pk}/acknowledge", {"note": "x" * (NOTE_MAX_CHARS + 1)})
    assert response.status_code == 422
    page = response.content.decode()
    row = page[page.index(f'id="alarm-{alarm.pk}"'):]
    row = row[:row.index("</tr>")]
    assert f"at most {NOTE_MAX_CHARS} characters" in row  # in the alarm's own row
    assert f'value="{"x" * (NOTE_MAX_CHARS + 1)}" aria-invalid="true"' in row  # the note as typed, not lost
    assert Alarm.objects.get(pk=alarm.pk).state == "active"
    assert not AlarmEvent.objects.filter(alarm=alarm, transition="acknowledged").exists()


@pytest.mark.django_db
def test_acknowledging_an_alarm_no_longer_active_says_so(project):
    alarm = raise_alarm(project)
    client = logged_in("operator")
    assert client.post(f"/alarms/{alarm.pk}/acknowledge", {"note": ""}).status_code == 200
    again = client.post(f"/alarms/{alarm.pk}/acknowledge", {"note": "twice"})
    assert again.status_code == 409 and "only an active alarm is acknowledged" in again.content.decode()
    assert client.post("/alarms/999999/acknowledge", {"note": ""}).status_code == 404


@pytest.mark.django_db
def test_a_post_without_the_csrf_token_is_refused(project):
    alarm = raise_alarm(project)
    client = logged_in("operator", enforce_csrf_checks=True)
    assert client.post(f"/alarms/{alarm.pk}/acknowledge", {"note": "x"}).status_code == 403
    assert Alarm.objects.get(pk=alarm.pk).state == "active"


@pytest.mark.django_db
def test_shelving_needs_its_permission_takes_a_listed_duration_and_unshelving_ends_it(project):
    from datetime import timedelta

    from django.utils import timezone

    alarm = raise_alarm(project)
    viewer = logged_in("viewer")
    assert viewer.post(f"/alarms/{alarm.pk}/shelve", {"for_s": "3600"}).status_code == 403
    client = logged_in("operator")
    bad = client.post(f"/alarms/{alarm.pk}/shelve", {"for_s": "99999999", "note": "forever"})
    assert bad.status_code == 422 and "for: Select a valid choice" in bad.content.decode()
    assert Alarm.objects.get(pk=alarm.pk).shelved_until is None
    before = timezone.now()
    assert client.post(f"/alarms/{alarm.pk}/shelve", {"for_s": "3600", "note": "maintenance"}).status_code == 200
    alarm.refresh_from_db()
    assert before + timedelta(seconds=3600) <= alarm.shelved_until <= timezone.now() + timedelta(seconds=3600)
    assert AlarmEvent.objects.filter(alarm=alarm, transition="shelved", note="maintenance").count() == 1
    page = client.get("/alarms/").content.decode()
    assert "(shelved until" in page and "Unshelve" in page
    assert f'id="alarm-{alarm.pk}"' not in client.get("/alarms/?state=active").content.decode()  # hidden from active
    assert client.post(f"/alarms/{alarm.pk}/unshelve", {"note": ""}).status_code == 200
    assert Alarm.objects.get(pk=alarm.pk).shelved_until is None or Alarm.objects.get(pk=alarm.pk).shelved_until <= timezone.now()
    again = client.post(f"/alarms/{alarm.pk}/unshelve", {"note": ""})
    assert again.status_code == 409


@pytest.mark.django_db
def test_a_write_answers_the_page_the_form_was_on(project):
    from console.views.alarms import ALARMS_PAGE

    oldest = raise_alarm(project, "s-0")
    for n in range(1, ALARMS_PAGE + 1):
        raise_alarm(project, f"s-{n}")
    response = logged_in("operator").post(f"/alarms/{oldest.pk}/acknowledge", {"note": "", "list_page": "2"})
    page = response.content.decode()
    assert response.status_code == 200 and "page 2 of 2" in page and f'id="alarm-{oldest.pk}"' in page
