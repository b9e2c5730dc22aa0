"""The alarms' lifecycle: raise (idempotent), acknowledge, clear, shelve, the journal and the signal."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from alarms.models import Alarm, AlarmEvent
from alarms.services import (AlarmTransitionRefused, alarm_acknowledge, alarm_clear, alarm_raise, alarm_shelve,
                             alarm_unshelve)
from alarms.signals import alarm_transition
from api.testing import user_with

pytestmark = pytest.mark.django_db


def raise_hub(project, **kw):
    args = dict(project_id=project.pk, source="system", kind="hub_unreachable", subject="hub:3", severity="high",
                message="hub-a does not answer", values={"down_s": 61})
    args.update(kw)
    return alarm_raise(**args)


def journal(alarm):
    return list(AlarmEvent.objects.filter(alarm=alarm).order_by("id").values_list("transition", "values"))


def test_raise_is_idempotent_while_the_alarm_is_open(project):
    alarm, created = raise_hub(project)
    again, created_again = raise_hub(project, values={"down_s": 90})
    assert (created, created_again) == (True, False)
    assert again.pk == alarm.pk
    assert alarm.identity == "system:hub_unreachable:hub:3"
    assert journal(alarm) == [("raised", {"down_s": 61})]


def test_a_more_urgent_raise_of_an_open_alarm_reraises_it(project):
    alarm, _ = raise_hub(project)
    again, created = raise_hub(project, severity="critical", message="still down", values={"down_s": 600})
    assert created is False
    alarm.refresh_from_db()
    assert (alarm.severity, alarm.message) == ("critical", "still down")
    assert journal(alarm) == [("raised", {"down_s": 61}), ("reraised", {"down_s": 600})]


def test_acknowledge_then_clear_records_who_and_the_values(project):
    operator = user_with(role="operator")
    alarm, _ = raise_hub(project)
    alarm_acknowledge(alarm=alarm, by=operator, note="on it")
    alarm.refresh_from_db()
    assert (alarm.state, alarm.acknowledged_by, alarm.acknowledged_note) == ("acknowledged", operator, "on it")
    cleared = alarm_clear(source="system", kind="hub_unreachable", subject="hub:3", values={"down_s": 0})
    assert cleared.pk == alarm.pk and cleared.state == "cleared" and cleared.cleared_at is not None
    assert [t for t, _v in journal(alarm)] == ["raised", "acknowledged", "cleared"]
    assert journal(alarm)[-1] == ("cleared", {"down_s": 0})
    event = AlarmEvent.objects.get(alarm=alarm, transition="acknowledged")
    assert (event.by, event.note) == (operator, "on it")


def test_an_alarm_that_clears_unacknowledged_keeps_acknowledged_at_empty(project):
    alarm, _ = raise_hub(project)
    assert alarm_clear(alarm=alarm, values={"down_s": 0}).state == "cleared"
    alarm.refresh_from_db()
    assert alarm.acknowledged_at is None and alarm.state == "cleared"


def test_clearing_twice_clears_once_and_a_new_raise_opens_a_new_alarm(project):
    alarm, _ = raise_hub(project)
    assert alarm_clear(alarm=alarm, values={}) is not None
    assert alarm_clear(alarm=alarm, values={}) is None
    assert alarm_clear(identity=alarm.identity, values={}) is None
    second, created = raise_hub(project)
    assert created and second.pk != alarm.pk
    assert Alarm.objects.filter(identity=alarm.identity).count() == 2
    assert [t for t, _ in journal(alarm)] == ["raised", "cleared"]


def test_acknowledging_a_cleared_or_acknowledged_alarm_is_refused(project):
    operator = user_with(role="operator")
    alarm, _ = raise_hub(project)
    alarm_acknowledge(alarm=alarm, by=operator)
    with pytest.raises(AlarmTransitionRefused, match="acknowledged"):
        alarm_acknowledge(alarm=alarm, by=operator)
    alarm_clear(alarm=alarm, values={})
    with pytest.raises(AlarmTransitionRefused, match="cleared"):
        alarm_acknowledge(alarm=alarm, by=operator)


def test_shelving_hides_an_alarm_until_then_and_unshelving_ends_it(project):
    from alarms.selectors import alarms_list

    operator = user_with(role="operator")
    alarm, _ = raise_hub(project)
    until = timezone.now() + timedelta(hours=1)
    alarm_shelve(alarm=alarm, by=operator, until=until, note="maintenance")
    assert list(alarms_list(state="active")) == []
    assert [a.pk for a in alarms_list(state="active", shelved=True)] == [alarm.pk]
    alarm_unshelve(alarm=alarm, by=operator)
    assert [a.pk for a in alarms_list(state="active")] == [alarm.pk]
    assert [t for t, _ in journal(alarm)] == ["raised", "shelved", "unshelved"]
    with pytest.raises(AlarmTransitionRefused, match="not shelved"):
        alarm_unshelve(alarm=alarm, by=operator)
    with pytest.raises(AlarmTransitionRefused, match="future"):
        alarm_shelve(alarm=alarm, by=operator, until=timezone.now() - timedelta(seconds=1))


def test_a_shelved_alarm_still_changes_state(project):
    operator = user_with(role="operator")
    alarm, _ = raise_hub(project)
    alarm_shelve(alarm=alarm, by=operator, until=timezone.now() + timedelta(hours=1))
    alarm_acknowledge(alarm=alarm, by=operator)
    assert alarm_clear(alarm=alarm, values={}).state == "cleared"


def test_each_transition_sends_the_signal_once_committed(project, django_capture_on_commit_callbacks):
    sent = []

    def receiver(sender, alarm, transition, event, **kw):
        sent.append((alarm.pk, transition, event.transition))

    alarm_transition.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            alarm, _ = raise_hub(project)
            raise_hub(project)
            alarm_clear(alarm=alarm, values={})
    finally:
        alarm_transition.disconnect(receiver)
    assert sent == [(alarm.pk, "raised", "raised"), (alarm.pk, "cleared", "cleared")]


def test_a_rule_alarm_and_a_system_alarm_of_the_same_subject_are_different_alarms(project):
    first, _ = alarm_raise(project_id=project.pk, source="rule", kind="rule", subject="group:1", severity="low",
                           message="a", values={}, rule_id=None)
    second, created = alarm_raise(project_id=project.pk, source="system", kind="group_failing", subject="group:1",
                                  severity="low", message="b", values={})
    assert created and first.pk != second.pk


@pytest.mark.django_db(transaction=True)
def test_two_workers_raising_at_once_open_one_alarm(project):
    import threading

    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs Django's database on PostgreSQL (DATABASE_URL): SQLite serialises writers anyway")
    barrier, results = threading.Barrier(2), []

    def worker():
        from django.db import connection as own

        try:
            barrier.wait()
            results.append(raise_hub(project)[1])
        finally:
            own.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False, True]
    assert Alarm.objects.count() == 1 and AlarmEvent.objects.count() == 1
