"""Triggers: the interval grid, six-field cron, once, the on-change deadband, and daylight saving."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from groups.scheduler.triggers import ChangeFilter, CronTrigger, IntervalTrigger, OnceTrigger, TriggerError

BERLIN = ZoneInfo("Europe/Berlin")


def ticks(trigger, start: float, count: int) -> list[float]:
    out, t = [], start
    for _ in range(count):
        t = trigger.next_after(t)
        out.append(t)
    return out


def local(t: float, tz=BERLIN) -> datetime:
    return datetime.fromtimestamp(t, tz)


def test_a_10_s_interval_sits_on_the_10_s_grid_of_the_project_time_zone():
    start = datetime(2026, 6, 1, 12, 0, 3, 250000, tzinfo=BERLIN).timestamp()
    got = [local(t) for t in ticks(IntervalTrigger.build(period=10, tz="Europe/Berlin", at=start), start, 3)]
    assert [(d.minute, d.second, d.microsecond) for d in got] == [(0, 10, 0), (0, 20, 0), (0, 30, 0)]


def test_an_offset_shifts_the_grid():
    start = datetime(2026, 6, 1, 12, 0, 0, tzinfo=BERLIN).timestamp()
    got = [local(t).second for t in ticks(IntervalTrigger.build(period=10, offset=3, tz="Europe/Berlin", at=start), start, 3)]
    assert got == [3, 13, 23]


def test_a_100_ms_interval_ticks_ten_times_a_second_on_exact_points():
    start = 1_800_000_000.05
    got = ticks(IntervalTrigger.build(period=0.1, at=start), start, 10)
    assert [round(t - 1_800_000_000, 6) for t in got] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_a_tick_exactly_now_is_not_returned_again():
    trig = IntervalTrigger.build(period=1)
    assert trig.next_after(1_800_000_000.0) == 1_800_000_001.0


def test_an_interval_below_100_ms_is_refused():
    with pytest.raises(TriggerError):
        IntervalTrigger.build(period=0.05)


def test_an_hourly_group_in_india_runs_on_the_local_hour():
    start = datetime(2026, 6, 1, 12, 10, tzinfo=ZoneInfo("Asia/Kolkata")).timestamp()
    got = local(IntervalTrigger.build(period=3600, tz="Asia/Kolkata", at=start).next_after(start), ZoneInfo("Asia/Kolkata"))
    assert (got.hour, got.minute) == (13, 0)


@pytest.mark.parametrize(
    "utc_change",
    [datetime(2026, 3, 29, 1, 0, tzinfo=timezone.utc), datetime(2026, 10, 25, 1, 0, tzinfo=timezone.utc)],
    ids=["spring-forward", "fall-back"],
)
@pytest.mark.parametrize("period", [10, 3600])
def test_daylight_saving_neither_skips_nor_doubles_an_interval_tick(utc_change, period):
    change = utc_change.timestamp()
    trig = IntervalTrigger.build(period=period, tz="Europe/Berlin", at=change)
    got = ticks(trig, change - 3 * period - 0.5, 6)
    assert [b - a for a, b in zip(got, got[1:])] == [period] * 5  # no gap, no repeat
    assert change in got
    # and every tick stays on the local wall-clock grid on both sides of the change
    assert all((local(t).minute * 60 + local(t).second) % period == 0 for t in got)
    assert {local(t).utcoffset() for t in got} == {local(change - 1).utcoffset(), local(change).utcoffset()}


def test_cron_with_seconds_fires_on_its_seconds():
    start = datetime(2026, 6, 1, 12, 0, 7, tzinfo=BERLIN).timestamp()
    got = [local(t).strftime("%H:%M:%S") for t in ticks(CronTrigger.build(expr="*/15 * * * * *", tz="Europe/Berlin"), start, 4)]
    assert got == ["12:00:15", "12:00:30", "12:00:45", "12:01:00"]


def test_cron_needs_six_fields():
    with pytest.raises(TriggerError):
        CronTrigger.build(expr="*/5 * * * *")
    with pytest.raises(TriggerError):
        CronTrigger.build(expr="*/5 * * * * banana")


def test_a_cron_time_inside_the_spring_gap_runs_once_right_after_it():
    trig = CronTrigger.build(expr="0 30 2 * * *", tz="Europe/Berlin")
    start = datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN).timestamp()
    got = [local(t).isoformat() for t in ticks(trig, start, 2)]
    assert got == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_a_fixed_cron_time_in_the_repeated_hour_runs_once():
    trig = CronTrigger.build(expr="0 30 2 * * *", tz="Europe/Berlin")
    start = datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN).timestamp()
    got = [local(t).isoformat() for t in ticks(trig, start, 2)]
    assert got == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


def test_an_hourly_wildcard_cron_keeps_elapsed_time_through_the_repeated_hour():
    trig = CronTrigger.build(expr="0 0 * * * *", tz="Europe/Berlin")
    start = datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN).timestamp()
    got = ticks(trig, start, 4)
    assert [b - a for a, b in zip(got, got[1:])] == [3600, 3600, 3600]  # 02:00 CEST, 02:00 CET: two real hours


def test_a_seconds_cron_neither_skips_nor_doubles_at_either_change():
    trig = CronTrigger.build(expr="*/20 * * * * *", tz="Europe/Berlin")
    for change in (datetime(2026, 3, 29, 1, 0, tzinfo=timezone.utc), datetime(2026, 10, 25, 1, 0, tzinfo=timezone.utc)):
        got = ticks(trig, change.timestamp() - 61, 6)
        assert [b - a for a, b in zip(got, got[1:])] == [20] * 5


def test_once_fires_once():
    trig = OnceTrigger(at=1_800_000_010.0)
    assert trig.next_after(1_800_000_000.0) == 1_800_000_010.0
    assert trig.next_after(1_800_000_010.0) is None


def test_a_change_inside_the_deadband_is_not_an_event():
    f = ChangeFilter(deadband=0.5)
    assert f.accept("pump1", [{"key": "p1", "value": 10.0}])  # first value
    assert not f.accept("pump1", [{"key": "p1", "value": 10.4}])
    assert not f.accept("pump1", [{"key": "p1", "value": 10.5}])  # exactly the deadband: not beyond it
    assert f.accept("pump1", [{"key": "p1", "value": 10.6}])
    assert not f.accept("pump1", [{"key": "p1", "value": 10.2}])  # compared with the last event (10.6)


def test_without_a_deadband_any_change_is_an_event_and_repeats_are_not():
    f = ChangeFilter()
    assert f.accept("e", [{"key": "state", "value": "run"}])
    assert not f.accept("e", [{"key": "state", "value": "run"}])
    assert f.accept("e", [{"key": "state", "value": "stop"}])
    assert f.accept("e", [{"key": "on", "value": True}])
    assert f.accept("e", [{"key": "on", "value": False}])
