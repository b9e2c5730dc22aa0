"""rules_evaluate in the worker: raise and clear on flips, the for duration, several worker processes, and its cost."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone as tz

import pytest

from alarms.evaluation import rules_cache_clear, rules_evaluate
from alarms.models import Alarm, AlarmEvent, AlarmRule, RuleState

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=tz.utc)


def tick(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def rule(project, group):
    return AlarmRule.objects.create(project=project, name="hot", group=group, severity="high", deadband=2.0,
                                    condition={"binding": "p1", "op": ">", "value": 80},
                                    message="{hub}/{group}: p1 {p1:.1f} above 80")


def feed(group, *values, start=0, process_change=False, quality=None):
    """One execution a second from ``start``; ``process_change``: each in "another worker" (a cleared cache)."""
    for i, value in enumerate(values):
        if process_change:
            rules_cache_clear()
        rules_evaluate(group_id=group.pk, bindings={"p1": value}, quality=quality or {}, at=tick(start + i))


def transitions():
    return list(AlarmEvent.objects.order_by("id").values_list("transition", flat=True))


def test_it_raises_on_the_flip_and_clears_past_the_deadband(rule, group):
    feed(group, 70, 81, 85, 79, 78.5, 78, 77)
    assert transitions() == ["raised", "cleared"]
    alarm = Alarm.objects.get()
    assert (alarm.state, alarm.rule, alarm.subject, alarm.severity) == ("cleared", rule, f"group:{group.pk}", "high")
    assert alarm.message == "hub-a/pumps: p1 81.0 above 80"
    assert alarm.raised_at == tick(1) and alarm.cleared_at == tick(5)
    raised, cleared = AlarmEvent.objects.order_by("id")
    assert raised.values == {"p1": {"value": 81, "quality": "good"}}
    assert cleared.values == {"p1": {"value": 78, "quality": "good"}}


def test_the_values_stored_carry_their_quality(project, group):
    AlarmRule.objects.create(project=project, name="bad", group=group, severity="low",
                             condition={"binding": "p1", "op": "quality is bad"})
    feed(group, 1, quality={"p1": "bad"})
    assert Alarm.objects.get().values == {"p1": {"value": 1, "quality": "bad"}}
    assert Alarm.objects.get().message == "bad"  # an empty template is the rule's name


def test_a_for_duration_raises_only_once_the_condition_held_that_long(rule, group):
    AlarmRule.objects.filter(pk=rule.pk).update(for_s=10)
    feed(group, 81, 82, 83, 84, 85)  # 0..4 s
    feed(group, 70, start=5)  # breaks the run: the for starts again
    assert not Alarm.objects.exists()
    feed(group, *([81] * 10), start=6)  # holds 6..15 s: 9 s
    assert not Alarm.objects.exists()
    feed(group, 81, start=16)  # 10 s
    assert Alarm.objects.get().raised_at == tick(16)
    feed(group, 70, start=17)  # clearing is immediate
    assert transitions() == ["raised", "cleared"]


def test_workers_agree_the_alarm_raises_once_and_clears_once(rule, group):
    feed(group, 70, 81, 85, 90, 79, 77, 76, 81, process_change=True)
    assert transitions() == ["raised", "cleared", "raised"]
    assert Alarm.objects.filter(state="active").count() == 1


def test_a_worker_that_kept_its_cache_clears_what_another_raised(rule, group):
    feed(group, 70)  # worker A warms up: not active
    cache_a = _take_cache()
    feed(group, 81, start=1)  # worker B raises
    _put_cache(cache_a)
    import alarms.evaluation as evaluation

    evaluation._cache.next_check = 0.0  # A's next version check is due
    feed(group, 70, start=2)  # A reads the shared state and clears
    assert transitions() == ["raised", "cleared"]
    assert RuleState.objects.get(rule=rule).active is False


def test_a_for_duration_counts_from_the_first_worker_that_saw_it(rule, group):
    AlarmRule.objects.filter(pk=rule.pk).update(for_s=10)
    feed(group, 81, 81, 81, process_change=True)  # 0..2 s, each in another worker
    assert RuleState.objects.get(rule=rule).holding_since == tick(0)
    feed(group, 81, start=10, process_change=True)
    assert Alarm.objects.get().raised_at == tick(10)


def test_a_group_without_rules_costs_no_query_after_warm_up(rule, group, other_group, settings,
                                                             django_assert_num_queries):
    settings.HUBSCHED_EXECUTION_CHECK_S = 3600
    feed(other_group, 1)  # warm-up: the version check and the load
    with django_assert_num_queries(0):
        for i in range(100):
            rules_evaluate(group_id=other_group.pk, bindings={"p1": 99}, quality={}, at=tick(i))


def test_a_group_whose_rule_does_not_flip_costs_no_query(rule, group, settings, django_assert_num_queries):
    settings.HUBSCHED_EXECUTION_CHECK_S = 3600
    feed(group, 81)
    with django_assert_num_queries(0):
        feed(group, 82, 83, 79, 90, start=1)  # stays above 78: active all along
    assert transitions() == ["raised"]


def test_a_new_or_changed_rule_is_read_at_the_next_version_check(project, group, settings):
    settings.HUBSCHED_EXECUTION_CHECK_S = 0
    feed(group, 90)
    rule = AlarmRule.objects.create(project=project, name="hot", group=group, severity="low",
                                    condition={"binding": "p1", "op": ">", "value": 80})
    feed(group, 91, start=1)
    assert Alarm.objects.get().rule == rule
    rule.enabled = False
    rule.save()
    feed(group, 70, 95, start=2)  # disabled: no longer evaluated
    assert transitions() == ["raised"]


def test_a_failing_step_is_logged_and_does_not_raise(rule, group, monkeypatch, caplog):
    import alarms.evaluation as evaluation

    def broken(*a, **kw):
        raise RuntimeError("db gone")

    monkeypatch.setattr(evaluation, "_raise", broken)
    feed(group, 90)
    assert "evaluation failed" in caplog.text
    monkeypatch.undo()
    feed(group, 91, start=1)  # tried again at the next execution
    assert transitions() == ["raised"]


def _take_cache():
    import alarms.evaluation as evaluation

    cache, evaluation._cache = evaluation._cache, None
    return cache


def _put_cache(cache):
    import alarms.evaluation as evaluation

    evaluation._cache = cache


def test_disabling_a_rule_clears_its_open_alarm(rule, group):
    from alarms.services import alarm_rule_save
    from alarms.selectors import alarm_rule_document

    feed(group, 90)
    doc = alarm_rule_document(rule)
    doc.update(enabled=False, routes=[])
    alarm_rule_save(project=rule.project, doc=doc, rule=rule)
    assert transitions() == ["raised", "cleared"]
    assert not RuleState.objects.filter(rule=rule).exists()
