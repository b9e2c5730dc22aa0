"""outcome_bindings: the values an alarm rule reads, found at their read-plan position or, out of order, by key."""

from datetime import datetime, timezone

from groups.execution import Outcome, outcome_bindings, read_plan_set
from groups.models import Group

AT = datetime(2026, 12, 3, tzinfo=timezone.utc)


def _outcome(read):
    group = Group(id=1, name="g")
    read_plan_set(group, [("a", "pump", "p1"), ("b", "pump", "p2"), ("c", "tank", "level")])
    return Outcome(group=group, scheduled_for=AT, started_at=AT, read=read)


def test_the_rule_s_bindings_are_taken_from_their_positions_with_their_quality():
    outcome = _outcome([("pump", [{"key": "p1", "value": 1}, {"key": "p2", "value": 2, "quality": "bad"}]),
                        ("tank", [{"key": "level", "value": 7.5, "quality": "good"}])])
    assert outcome_bindings(outcome, frozenset({"b", "c"})) == ({"b": 2, "c": 7.5}, {"b": "bad"})


def test_an_answer_in_another_order_is_read_by_key():
    outcome = _outcome([("pump", [{"key": "p2", "value": 2}, {"key": "p1", "value": 1, "quality": "uncertain"}]),
                        ("tank", [{"key": "level", "value": 3}])])
    assert outcome_bindings(outcome, frozenset({"a", "b"})) == ({"a": 1, "b": 2}, {"a": "uncertain"})


def test_a_missing_entity_or_key_is_left_out_and_changed_names_are_planned_again():
    outcome = _outcome([("pump", [{"key": "p1", "value": 1}])])
    assert outcome_bindings(outcome, frozenset({"a", "b", "c"})) == ({"a": 1}, {})
    assert outcome_bindings(outcome, frozenset({"b"})) == ({}, {})
