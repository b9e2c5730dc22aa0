"""The rules' language: each op, the deadband's hysteresis, changed, quality, all/any/not, and the schema's errors."""

from __future__ import annotations

import pytest

from alarms.rules import condition_errors, message_render, rule_compile, rule_document_errors


def holds(condition, values, *, quality=None, active=False, deadband=None):
    return rule_compile(condition, deadband).test(values, quality or {}, active)


@pytest.mark.parametrize("op,value,seen,expected", [
    (">", 80, 81, True), (">", 80, 80, False), (">=", 80, 80, True), (">=", 80, 79.9, False),
    ("<", 10, 9, True), ("<", 10, 10, False), ("<=", 10, 10, True), ("<=", 10, 10.1, False),
    ("==", 3, 3, True), ("==", 3, 3.0, True), ("==", 3, 4, False), ("!=", 3, 4, True), ("!=", 3, 3, False),
    ("==", "run", "run", True), ("==", "run", "stop", False), ("==", True, True, True), ("==", 1, True, False),
])
def test_each_comparison_op_tests_the_binding(op, value, seen, expected):
    assert holds({"binding": "p1", "op": op, "value": value}, {"p1": seen}) is expected


def test_between_and_outside_include_their_bounds_in_the_band():
    between = {"binding": "p1", "op": "between", "low": 10, "high": 20}
    outside = {"binding": "p1", "op": "outside", "low": 10, "high": 20}
    assert [holds(between, {"p1": v}) for v in (9, 10, 15, 20, 21)] == [False, True, True, True, False]
    assert [holds(outside, {"p1": v}) for v in (9, 10, 15, 20, 21)] == [True, False, False, False, True]


@pytest.mark.parametrize("seen", [None, "81", True, [81]])
def test_a_missing_or_non_numeric_value_is_false_for_a_numeric_op(seen):
    condition = {"binding": "p1", "op": ">", "value": 80}
    assert holds(condition, {"p1": seen}) is False
    assert holds(condition, {}) is False
    assert holds({"binding": "p1", "op": "between", "low": 0, "high": 100}, {"p1": seen}) is False


def test_the_deadband_keeps_an_active_condition_true_until_the_value_passes_it():
    above = {"binding": "p1", "op": ">", "value": 80}
    assert holds(above, {"p1": 79}, deadband=2, active=False) is False
    assert holds(above, {"p1": 79}, deadband=2, active=True) is True
    assert holds(above, {"p1": 78}, deadband=2, active=True) is False
    below = {"binding": "p1", "op": "<", "value": 10}
    assert holds(below, {"p1": 11.5}, deadband=2, active=True) is True
    assert holds(below, {"p1": 12}, deadband=2, active=True) is False
    band = {"binding": "p1", "op": "between", "low": 10, "high": 20}
    assert holds(band, {"p1": 21}, deadband=2, active=True) is True
    assert holds(band, {"p1": 23}, deadband=2, active=True) is False
    out = {"binding": "p1", "op": "outside", "low": 10, "high": 20}
    assert holds(out, {"p1": 11}, deadband=2, active=True) is True
    assert holds(out, {"p1": 12}, deadband=2, active=True) is False
    assert holds({"binding": "p1", "op": "==", "value": 5}, {"p1": 6}, deadband=2, active=True) is False


def test_changed_compares_with_the_last_value_counted_beyond_the_deadband():
    test = rule_compile({"binding": "p1", "op": "changed"}, 1.0).test
    seen = [test({"p1": v}, {}, False) for v in (10, 10.5, 11.2, 11.5, 11.8, 11.8, 13)]
    # 10 first seen; 10.5 within 1; 11.2 moved 1.2 from 10; 11.5, 11.8 within 1 of 11.2; 13 moved
    assert seen == [False, False, True, False, False, False, True]
    text = rule_compile({"binding": "mode", "op": "changed"}, None).test
    assert [text({"mode": v}, {}, False) for v in ("auto", "auto", "manual")] == [False, False, True]


@pytest.mark.parametrize("op", ["quality_bad", "quality is bad"])
def test_quality_bad_holds_when_the_hub_says_bad(op):
    condition = {"binding": "p1", "op": op}
    assert holds(condition, {"p1": 1}, quality={"p1": "bad"}) is True
    assert holds(condition, {"p1": 1}, quality={"p1": "uncertain"}) is False
    assert holds(condition, {"p1": 1}) is False
    assert holds(condition, {}, quality={"p1": "bad"}) is False


def test_all_any_and_not_combine_conditions():
    hot = {"binding": "t", "op": ">", "value": 80}
    running = {"binding": "run", "op": "==", "value": True}
    assert holds({"all": [hot, running]}, {"t": 90, "run": True}) is True
    assert holds({"all": [hot, running]}, {"t": 90, "run": False}) is False
    assert holds({"any": [hot, running]}, {"t": 10, "run": True}) is True
    assert holds({"any": [hot, running]}, {"t": 10, "run": False}) is False
    assert holds({"not": hot}, {"t": 10}) is True
    assert holds({"not": hot}, {"t": 90}) is False
    assert rule_compile({"all": [hot, {"not": running}, hot]}, None).bindings == ("t", "run")


def test_below_not_there_is_no_hysteresis():
    condition = {"not": {"binding": "t", "op": ">", "value": 80}}
    assert holds(condition, {"t": 80}, deadband=2, active=True) is True
    assert holds(condition, {"t": 80}, deadband=2, active=False) is True
    assert holds(condition, {"t": 81}, deadband=2, active=True) is False


def test_a_valid_document_has_no_errors():
    doc = {"name": "hot", "group": "pumps", "hub": "hub-a", "severity": "high", "deadband": 2.0, "for": 10,
           "condition": {"any": [{"binding": "p1", "op": ">", "value": 80}, {"binding": "p1", "op": "quality is bad"}]},
           "message": "pressure {p1} above 80", "routes": ["ops-mail"], "enabled": True}
    assert rule_document_errors(doc, "alarm_rules[0]") == []


def test_document_errors_name_their_json_path():
    doc = {"name": "hot", "group": "pumps", "hub": "hub-a", "severity": "urgent",
           "condition": {"all": [{"binding": "p1", "op": ">", "value": 80}, {"binding": "p1", "op": ">>", "value": 1}]}}
    errors = rule_document_errors(doc, "alarm_rules[0]")
    assert any(e.startswith("alarm_rules[0].condition.all[1].op: '>>' is not one of") for e in errors), errors
    assert any(e.startswith("alarm_rules[0].severity: 'urgent' is not one of") for e in errors), errors


@pytest.mark.parametrize("condition,expected", [
    ({"binding": "p1", "op": ">"}, "condition: 'value' is a required property"),
    ({"binding": "p1", "op": ">", "value": "80"}, "condition.value: '80' is not of type 'number'"),
    ({"binding": "p1", "op": "between", "low": 1}, "condition: 'high' is a required property"),
    ({"binding": "p1", "op": "between", "low": 5, "high": 1}, "condition.low: 5 is above high (1)"),
    ({"binding": "p1", "op": "changed", "value": 1}, "condition.value: not allowed with op 'changed'"),
    ({"any": []}, "condition.any: [] should be non-empty"),
    ({"not": {"binding": ""}}, "condition.not: 'op' is a required property"),
    ({"all": [{"binding": "p1", "op": "<", "value": 1}], "binding": "p1"},
     "condition: Additional properties are not allowed ('binding' was unexpected)"),
    ("p1 > 80", "condition: 'p1 > 80' is not of type 'object'"),
])
def test_condition_errors_say_what_and_where(condition, expected):
    assert expected in condition_errors(condition, "condition")


def test_a_message_renders_bindings_and_keeps_what_it_does_not_know():
    mapping = {"p1": 81.25, "group": "pumps"}
    assert message_render("{group}: p1 {p1:.1f} {nope}", mapping) == "pumps: p1 81.2 {nope}"
    assert message_render("{p1.__class__} {p1[0]}", mapping) == "{p1.__class__} {p1[0]}"
    assert message_render("{p1:d}", mapping) == "81.25"
    assert message_render("unbalanced {", mapping) == "unbalanced {"
