"""Value alarm rules, pure Python: their JSON Schema (rules_schema.json), the errors of a rule document, and a
condition compiled to a tree of closures that the worker calls after each execution (alarms/evaluation.py).

A condition (rules_schema.json, ``$defs/condition``)::

    {"binding": "p1", "op": ">", "value": 80}            >, >=, <, <=, ==, != (== and != also take text, booleans)
    {"binding": "p1", "op": "between", "low": 10, "high": 20}     and "outside": low and high included in the band
    {"binding": "p1", "op": "changed"}                    the value moved by more than the deadband since last seen
    {"binding": "p1", "op": "quality_bad"}                the hub said quality "bad" ("quality is bad" is accepted too)
    {"all": [...]}, {"any": [...]}, {"not": {...}}

Semantics: a missing binding, or a value that is no number (booleans are none) for a numeric op, is false, never an
error. The deadband is hysteresis: while the rule is active a ``> 80`` condition with deadband 2 holds until the value
is 78 or below (``<`` likewise upwards; ``between`` widens its band by it, ``outside`` narrows it); ``==`` and ``!=``
ignore it; ``changed`` compares with the last value it counted as a change. Below a ``not`` there is no hysteresis
(write ``{"binding": "t", "op": "<=", "value": 80}`` rather than ``not >``, and it has one). Below ``all`` and ``any``
each comparison applies it as though it alone made the rule active.
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SCHEMA = json.loads((Path(__file__).with_name("rules_schema.json")).read_text())
NUMERIC_OPS = (">", ">=", "<", "<=")
QUALITY_BAD_OPS = ("quality_bad", "quality is bad")

# (values, quality, active) -> holds?
Test = Callable[[dict, dict, bool], bool]


@dataclass(frozen=True)
class Compiled:
    """A compiled condition: ``test(values, quality, active) -> bool``; ``bindings``: the names it reads, in order."""

    test: Test
    bindings: tuple[str, ...]


# --- validation ----------------------------------------------------------------------------------------------


def _validator(schema: dict):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema)


_RULE = None
_CONDITION = None


def _validators():
    global _RULE, _CONDITION
    if _RULE is None:
        _RULE = _validator(SCHEMA)
        _CONDITION = _validator({"$defs": SCHEMA["$defs"], "$ref": "#/$defs/condition"})
    return _RULE, _CONDITION


def _path(where: str, parts) -> str:
    out = where
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_FORBIDDEN = {**{op: ("low", "high") for op in (*NUMERIC_OPS, "==", "!=")}, "between": ("value",), "outside": ("value",),
              **{op: ("value", "low", "high") for op in ("changed", *QUALITY_BAD_OPS)}}


def _messages(error, doc, where: str) -> list[str]:
    """One error as ``"<path>: <message>"`` lines. A key the op does not take fails a ``false`` schema, which
    jsonschema reports at the object without the key's name: name the key here."""
    at = _path(where, error.absolute_path)
    if error.message.startswith("False schema"):
        obj = doc
        for part in error.absolute_path:
            obj = obj[part]
        if isinstance(obj, dict):
            op = obj.get("op")
            return [f"{_path(at, [key])}: not allowed with op {op!r}" for key in _FORBIDDEN.get(op, ()) if key in obj]
    return [f"{at or '(document)'}: {error.message}"]


def _semantic_errors(condition, where: str) -> list[str]:
    """What the schema cannot say: a band's low above its high."""
    if not isinstance(condition, dict):
        return []
    out = []
    for key in ("all", "any"):
        if isinstance(condition.get(key), list):
            for i, item in enumerate(condition[key]):
                out += _semantic_errors(item, f"{where}.{key}[{i}]" if where else f"{key}[{i}]")
    if isinstance(condition.get("not"), dict):
        out += _semantic_errors(condition["not"], f"{where}.not" if where else "not")
    low, high = condition.get("low"), condition.get("high")
    if (condition.get("op") in ("between", "outside") and isinstance(low, (int, float)) and isinstance(high, (int, float))
            and low > high):
        out.append(f"{_path(where, ['low'])}: {low} is above high ({high})")
    return out


def _errors(validator, doc, where: str) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    out: list[str] = []
    for error in errors:
        out += [m for m in _messages(error, doc, where) if m not in out]
    return out


def rule_document_errors(doc, where: str = "") -> list[str]:
    """Every problem of one rule document (rules_schema.json), as ``"<path>: <message>"`` with JSON paths from
    ``where`` (``alarm_rules[0]`` gives ``alarm_rules[0].condition.all[1].op: '>>' is not one of [...]``); ``[]``
    when it is valid. Names (group, hub, routes) are not resolved here: the caller knows the project."""
    rule, _condition = _validators()
    out = _errors(rule, doc, where)
    if not out and isinstance(doc, dict):
        out = _semantic_errors(doc.get("condition"), _path(where, ["condition"]))
    return out


def condition_errors(condition, where: str = "condition") -> list[str]:
    """The problems of a condition alone (the admin's field, AlarmRule.clean), paths from ``where``."""
    _rule, validator = _validators()
    return _errors(validator, condition, where) or _semantic_errors(condition, where)


# --- compilation ---------------------------------------------------------------------------------------------


def _number(value) -> bool:
    return type(value) in (int, float) and not (type(value) is float and math.isnan(value))


def _comparison(binding: str, op: str, spec: dict, deadband: float) -> Test:
    d = deadband
    if op in NUMERIC_OPS:
        t = float(spec["value"])
        if op == ">":
            def test(values, quality, active):
                v = values.get(binding)
                return _number(v) and v > (t - d if active else t)
        elif op == ">=":
            def test(values, quality, active):
                v = values.get(binding)
                return _number(v) and v >= (t - d if active else t)
        elif op == "<":
            def test(values, quality, active):
                v = values.get(binding)
                return _number(v) and v < (t + d if active else t)
        else:
            def test(values, quality, active):
                v = values.get(binding)
                return _number(v) and v <= (t + d if active else t)
        return test
    if op in ("==", "!="):
        want, missing = spec["value"], object()
        numeric = _number(want)
        equal = op == "=="

        def test(values, quality, active):
            v = values.get(binding, missing)
            if v is missing:
                return False
            if numeric and not _number(v):
                same = False
            elif not numeric and type(v) is not type(want):
                same = False
            else:
                same = v == want
            return same if equal else not same
        return test
    if op in ("between", "outside"):
        low, high = float(spec["low"]), float(spec["high"])
        if op == "between":
            def test(values, quality, active):
                v = values.get(binding)
                if not _number(v):
                    return False
                return (low - d <= v <= high + d) if active else (low <= v <= high)
        else:
            def test(values, quality, active):
                v = values.get(binding)
                if not _number(v):
                    return False
                return (v < low + d or v > high - d) if active else (v < low or v > high)
        return test
    if op == "changed":
        last = [None, False]  # the value last counted as a change, whether one was seen

        def test(values, quality, active):
            if binding not in values:
                return False
            v = values[binding]
            if not last[1]:
                last[0], last[1] = v, True
                return False
            if _number(v) and _number(last[0]):
                moved = abs(v - last[0]) > d
            else:
                moved = v != last[0]
            if moved:
                last[0] = v
            return moved
        return test
    if op in QUALITY_BAD_OPS:
        def test(values, quality, active):
            return binding in values and quality.get(binding) == "bad"
        return test
    raise ValueError(f"unknown op {op!r}")


def _compile(node: dict, deadband: float, names: list[str]) -> Test:
    if "all" in node:
        parts = tuple(_compile(n, deadband, names) for n in node["all"])
        return lambda values, quality, active: all(p(values, quality, active) for p in parts)
    if "any" in node:
        parts = tuple(_compile(n, deadband, names) for n in node["any"])
        return lambda values, quality, active: any(p(values, quality, active) for p in parts)
    if "not" in node:
        inner = _compile(node["not"], deadband, names)
        # the rule's state says nothing of the inner condition's: no hysteresis below a not
        return lambda values, quality, active: not inner(values, quality, False)
    if node["binding"] not in names:
        names.append(node["binding"])
    return _comparison(node["binding"], node["op"], node, deadband)


def rule_compile(condition: dict, deadband: float | None) -> Compiled:
    """``condition`` (valid: ``condition_errors`` is empty; ``ValueError``/``KeyError`` otherwise) as a tree of
    closures; ``deadband`` ``None`` is 0. A ``changed`` leaf keeps its last value in its closure: compile once per
    process and rule, and call ``test`` for each execution in order."""
    names: list[str] = []
    test = _compile(condition, float(deadband or 0.0), names)
    return Compiled(test=test, bindings=tuple(names))


# --- messages ------------------------------------------------------------------------------------------------


class _Formatter(string.Formatter):
    """``str.format_map`` without attribute or index access (``{p1.__class__}``) and with unknown names kept as
    written: a template is an integrator's text, rendered in the worker, and must never fail or reach inside."""

    def get_field(self, field_name, args, kwargs):
        if not field_name.isidentifier():
            return "{" + field_name + "}", field_name
        if field_name not in kwargs:
            return "{" + field_name + "}", field_name
        return kwargs[field_name], field_name

    def format_field(self, value, format_spec):
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            return str(value)


_FORMATTER = _Formatter()


def message_render(template: str, mapping: dict) -> str:
    """``template`` with ``{name}`` and ``{name:.1f}`` replaced from ``mapping``; anything else kept as written."""
    try:
        return _FORMATTER.vformat(template, (), mapping)
    except (ValueError, IndexError):  # unbalanced braces: the text as written
        return template
