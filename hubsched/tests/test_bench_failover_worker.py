"""bench failover, worker part: the blocked time of a dead worker's groups, from the rows the workers write."""

from __future__ import annotations

from hubsched.bench.failover import blocked_analyse

VICTIM, SURVIVOR, REPLACEMENT = 11, 12, 13


def test_blocked_time_runs_from_the_kill_to_the_survivors_first_executed_tick_and_counts_the_skips_between():
    # first kill: at 1000.012, while the victim executed tick 1000.0 of groups 1 and 2 (their locks: PTTL 1,990 ms
    # read at 1000.020); the survivor skips them while the locks live, runs group 1 at tick 1002 and group 2 at 1003
    events = [
        ["exec", 999.001, SURVIVOR, [[1, 999.0], [2, 999.0], [3, 999.0]]],  # before the kill: not counted
        ["exec", 1000.005, VICTIM, [[1, 1000.0], [2, 1000.0]]],
        ["exec", 1001.01, SURVIVOR, [[3, 1001.0]]],  # a group the victim did not hold
        ["done", 1001.06, SURVIVOR, 1, [[1, 1001.0, "skipped"], [2, 1001.0, "skipped"]], False],
        ["exec", 1002.03, SURVIVOR, [[1, 1002.0]]],
        ["done", 1002.08, SURVIVOR, 1, [[2, 1002.0, "skipped"]], False],
        ["exec", 1002.05, REPLACEMENT, [[2, 1002.0]]],  # not the survivor
        ["exec", 1003.02, SURVIVOR, [[2, 1003.0]]],
        ["done", 1004.07, SURVIVOR, 1, [[1, 1004.0, "skipped"], [2, 1004.0, "missed"]], False],  # after resuming
        ["exec", 1005.02, SURVIVOR, [[1, 1005.0]]],  # a later run does not count
    ]
    kills = [
        {"at": 1000.012, "pid": VICTIM, "survivor": SURVIVOR, "read_at": 1000.020, "held": {"1": 1990, "2": 1990}},
        # second kill: its one group never ran again within the recorded rows
        {"at": 2000.0, "pid": SURVIVOR, "survivor": REPLACEMENT, "read_at": 2000.01, "held": {"5": 1500}},
    ]

    result = blocked_analyse(kills, events)

    assert result["groups_blocked_s"] == {"min": 1.988, "p50": 1.988, "max": 2.988}
    assert result["ticks_skipped_by_dead_holder"] == 3  # group 1 at 1001; group 2 at 1001 and 1002
    assert result["groups_resumed_s"] == {"min": 2.018, "p50": 2.018, "max": 3.008}
    assert result["locks_freed_s"] == {"min": 1.51, "p50": 1.998, "max": 1.998}
    assert result["groups_held"] == 3 and result["groups_never_resumed"] == 1
    first, second = result["kills"]
    assert first["held"] == 2 and first["skipped"] == 3 and first["never_resumed"] == 0
    none = {"min": None, "p50": None, "max": None}
    assert second == {"held": 1, "blocked_s": none, "skipped": 0, "never_resumed": 1,
                      "locks_freed_s": {"min": 1.51, "p50": 1.51, "max": 1.51}, "resumed_s": none}
