"""bench failover, hub part: the ticks lost to a master hub's kill, counted from the tick runner's rows."""

from __future__ import annotations

from hubsched.bench.failover import hub_analyse

EVERY_MEMBER = "redundancy set 'hubs': every member failed (tried hub-a, hub-b); first: connection closed"


def test_ticks_lost_are_the_failed_and_unexecuted_ticks_from_each_kill_on_and_backup_served_ticks_are_failover():
    rows = [
        ["batch", 999.0, 999.0, 999.05, [[1, "hub-a", ""], [2, "hub-a", "boom"]]],  # before any kill: not lost
        # the first kill (1000.5) falls while this batch runs: group 2's tick is read again from the backup
        ["batch", 1000.0, 1000.0, 1000.6, [[1, "hub-a", ""], [2, "hub-b", ""]]],
        ["batch", 1001.0, 1001.0, 1001.2, [[1, "hub-b", ""], [2, "", EVERY_MEMBER]]],  # lost: failed
        ["batch", 1002.0, 1002.0, 1002.1, [[1, "hub-b", ""]]],  # group 2 not executed: lost
        # no batch for tick 1003: both lost
        ["batch", 1004.0, 1004.0, 1004.1, [[1, "hub-b", ""], [2, "hub-b", ""]]],
        ["batch", 1005.0, 1005.0, 1005.3, [[1, "hub-a", ""], [2, "hub-a", ""]]],  # failed back (restart 1003.5)
        # the second kill (1005.5), between batches
        ["batch", 1006.0, 1006.0, 1006.9, [[1, "hub-b", ""], [2, "hub-b", ""]]],
        ["batch", 1007.0, 1007.0, 1007.05, [[1, "hub-b", "expired"], [2, "hub-b", ""]]],
    ]
    kills = [{"at": 1000.5, "restarted_at": 1003.5}, {"at": 1005.5}]

    result = hub_analyse(rows, kills, groups=2, period=1.0, started=999.0)

    assert result["ticks_lost_to_hub_failover"] == 5
    assert result["ticks_expected"] == 18  # ticks 999 to 1007, two groups
    assert (result["ok_master"], result["ok_backup"], result["failed"], result["not_executed"]) == (4, 8, 3, 3)
    assert result["failover_ticks"] == 8 and result["failed_before_kill"] == 1
    assert result["errors"] == {"boom": 1, EVERY_MEMBER: 1, "expired": 1}
    first, second = result["kills"]
    assert first == {"at_s": 1.5, "lost": 4, "in_batch": True, "failed": 1, "not_executed": 3, "ok_backup": 5,
                     "first_backup_s": 0.1, "first_backup_tick_s": -0.5, "failback_s": 1.8}
    assert second == {"at_s": 6.5, "lost": 1, "in_batch": False, "failed": 1, "not_executed": 0, "ok_backup": 3,
                      "first_backup_s": 1.4, "first_backup_tick_s": 0.5, "failback_s": None}
    assert result["batch_ms"] == {"p50": 100.0, "max": 900.0}


def test_a_clean_failover_loses_nothing_and_without_rows_there_is_nothing_to_count():
    rows = [
        ["batch", 10.0, 10.0, 10.05, [[1, "hub-a", ""]]],
        ["batch", 11.0, 11.0, 11.05, [[1, "hub-b", ""]]],
        ["batch", 12.0, 12.0, 12.05, [[1, "hub-b", ""]]],
    ]
    result = hub_analyse(rows, [{"at": 10.4}], groups=1, period=1.0)
    assert result["ticks_lost_to_hub_failover"] == 0 and result["failover_ticks"] == 2
    assert result["kills"][0]["first_backup_s"] == 0.65 and result["kills"][0]["in_batch"] is False
    empty = hub_analyse([], [{"at": 10.4}], groups=1, period=1.0)
    assert empty["ticks_expected"] == 0 and empty["kills"][0]["first_backup_s"] is None
    assert empty["batch_ms"] == {"p50": None, "max": None}
