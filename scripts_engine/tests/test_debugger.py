"""The debugger: breakpoints, steps, every binding and local at each stop, and the end."""

from __future__ import annotations

from scripts_engine.sandbox import script_debug_run

CODE = """\
total = 0
for value in p2:
    total = total + value
p1 = p1 * 2
def scaled(x):
    factor = 10
    return x * factor
big = scaled(total)
"""


def test_a_session_stops_at_two_breakpoints_and_shows_every_binding_and_local():
    run = script_debug_run(code=CODE, bindings={"p1": 2.5, "p2": [1, 2], "mode": "auto"}, breakpoints=[4, 8])
    assert [(s.event, s.line) for s in run.stops] == [("breakpoint", 4), ("breakpoint", 8), ("end", None)]
    first, second, end = run.stops
    assert first.bindings == {"p1": 2.5, "p2": [1, 2], "mode": "auto"}
    assert first.locals == {"total": 3, "value": 2}
    assert second.bindings["p1"] == 5.0
    assert end.bindings == {"p1": 5.0, "p2": [1, 2], "mode": "auto"}
    assert end.locals == {"total": 3, "value": 2, "big": 30}
    assert run.result.changed == {"p1"} and run.error is None


def test_a_breakpoint_inside_a_loop_stops_on_every_pass():
    run = script_debug_run(code=CODE, bindings={"p1": 1, "p2": [1, 2, 3]}, breakpoints=[3])
    assert [s.locals["value"] for s in run.stops if s.event == "breakpoint"] == [1, 2, 3]


def test_step_goes_to_the_next_line_and_into_functions_then_continue_runs_on():
    run = script_debug_run(code=CODE, bindings={"p1": 1, "p2": []}, breakpoints=[8], actions=["step", "step", "continue"])
    assert [(s.event, s.line, s.function) for s in run.stops] == [
        ("breakpoint", 8, "<module>"), ("step", 6, "scaled"), ("step", 7, "scaled"), ("end", None, "<module>"),
    ]
    assert run.stops[2].locals == {"x": 0, "factor": 10}


def test_a_failing_script_keeps_its_stops_and_reports_the_error():
    run = script_debug_run(code="a = 1\nb = a / 0\n", bindings={}, breakpoints=[2])
    assert [s.line for s in run.stops] == [2] and run.stops[0].locals == {"a": 1}
    assert run.result is None and run.error.kind == "runtime" and run.error.line == 2


def test_values_that_are_not_json_are_shown_as_their_repr():
    run = script_debug_run(code="import re\npattern = re.compile('a+')\nx = 1\n", bindings={}, breakpoints=[3])
    assert run.stops[0].locals == {"pattern": "re.compile('a+')"}


def test_a_breakpoint_hit_too_often_is_cut_and_the_run_still_finishes():
    run = script_debug_run(code="n = 0\nfor i in range(5000):\n    n = n + i\n", bindings={}, breakpoints=[3])
    assert run.truncated and len(run.stops) == 1001  # 1,000 stops and the end
    assert run.result.bindings["n"] == sum(range(5000))


def test_an_interactive_session_asks_at_each_stop():
    asked = []

    def on_stop(stop):
        asked.append((stop.event, stop.line))
        return "step" if len(asked) == 1 else "continue"

    run = script_debug_run(code="a = 1\nb = 2\nc = 3\n", bindings={}, breakpoints=[1], on_stop=on_stop)
    assert asked == [("breakpoint", 1), ("step", 2)]
    assert run.result.bindings == {"a": 1, "b": 2, "c": 3}
