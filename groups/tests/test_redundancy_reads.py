"""Master/backup reads against real reference hubs: failover within the tick, failback, offsets, bad quality."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from groups.execution import execute_batch
from groups.models import Group, GroupKey
from groups.redundancy import redundancy_forget
from hubs.hubsim.faults import unreachable_url
from hubs.hubsim.server import serve_in_thread
from hubs.models import HubOffset, RedundancySet

from .conftest import HUB_KEY

TICK = datetime(2026, 11, 20, 10, 0, 10, tzinfo=timezone.utc)
PUMP = "plant/line1/pump1"


@pytest.fixture(autouse=True)
def fresh_health():
    redundancy_forget()
    yield
    redundancy_forget()


def redundant_pair(project, make_hub, master_url, backup_url, *, failback_after_s=30.0):
    master = make_hub(master_url, name="hub-a", timeout=1.0)
    backup = make_hub(backup_url, name="hub-b", timeout=1.0)
    rset = RedundancySet.objects.create(project=project, name="pumps", failback_after_s=failback_after_s)
    master.redundancy_set, master.redundancy_priority = rset, 0
    backup.redundancy_set, backup.redundancy_priority = rset, 1
    master.save()
    backup.save()
    group = Group.objects.create(hub=master, name="pumps", period=1.0)
    for position, key in enumerate(("speed_sp", "flow")):
        GroupKey.objects.create(group=group, entity=PUMP, key=key, position=position)
    return master, backup, group


def tick(group_pk: int, when: datetime = TICK):
    group = Group.objects.select_related("hub__project", "script").prefetch_related("keys").get(pk=group_pk)
    (outcome,) = execute_batch(ticks=[(group, when)])
    return outcome


def served(outcome) -> str:
    assert outcome.error == "", outcome.error
    return outcome.served_by.name


def test_a_group_whose_hub_is_in_no_set_is_read_as_before(project, make_hub, reference_hub):
    hub = make_hub(reference_hub.url)
    group = Group.objects.create(hub=hub, name="plain", period=1.0)
    GroupKey.objects.create(group=group, entity=PUMP, key="speed_sp", position=0)
    outcome = tick(group.pk)
    assert outcome.error == "" and outcome.served_by is None
    assert outcome.read[0][1][0]["value"] == 1450.0


def test_the_backup_serves_the_tick_its_unreachable_master_failed(project, make_hub):
    with serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        _, _, group = redundant_pair(project, make_hub, unreachable_url(), backup_hub.url)
        outcome = tick(group.pk)
        assert served(outcome) == "hub-b"
        assert [(item["key"], item["value"]) for item in outcome.read[0][1]][0] == ("speed_sp", 1450.0)
        assert outcome.values == 2
        # the next tick goes to the backup directly: it serves until the master has been healthy for a while
        assert served(tick(group.pk)) == "hub-b"


def test_a_master_stopped_between_ticks_loses_no_tick_to_the_failover(project, make_hub):
    with serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        with serve_in_thread(key=HUB_KEY, name="hub-a") as master_hub:
            _, _, group = redundant_pair(project, make_hub, master_hub.url, backup_hub.url)
            master_hub.state.write(master_hub.state.entities[PUMP], {"speed_sp": 1200.0})  # tells the two apart
            first = tick(group.pk)
            assert served(first) == "hub-a" and first.read[0][1][0]["value"] == 1200.0
        # the master is gone; the very next tick is still stored, from the backup
        outcome = tick(group.pk)
        assert served(outcome) == "hub-b" and outcome.read[0][1][0]["value"] == 1450.0


def test_it_fails_back_to_the_master_only_after_it_was_healthy_for_failback_after_s(project, make_hub):
    with serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        with serve_in_thread(key=HUB_KEY, name="hub-a") as master_hub:
            port = master_hub.port
            _, _, group = redundant_pair(project, make_hub, master_hub.url, backup_hub.url, failback_after_s=1.0)
            assert served(tick(group.pk)) == "hub-a"
        assert served(tick(group.pk)) == "hub-b"
        with serve_in_thread(key=HUB_KEY, name="hub-a", port=port):
            back_at = time.monotonic()
            seen = []
            while time.monotonic() - back_at < 15:
                seen.append((time.monotonic() - back_at, served(tick(group.pk))))
                if seen[-1][1] == "hub-a":
                    break
                time.sleep(0.1)
        assert seen[-1][1] == "hub-a", seen
        assert seen[0][1] == "hub-b"  # not at once: the master must first answer, then stay healthy 1 s
        assert seen[-1][0] >= 1.0, seen


def test_it_stays_on_the_backup_while_the_failback_time_has_not_passed(project, make_hub):
    with serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        with serve_in_thread(key=HUB_KEY, name="hub-a") as master_hub:
            port = master_hub.port
            _, _, group = redundant_pair(project, make_hub, master_hub.url, backup_hub.url, failback_after_s=3600)
            assert served(tick(group.pk)) == "hub-a"
        assert served(tick(group.pk)) == "hub-b"
        with serve_in_thread(key=HUB_KEY, name="hub-a", port=port):
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                assert served(tick(group.pk)) == "hub-b"
                time.sleep(0.1)


def test_a_bad_quality_read_of_the_master_is_read_again_from_the_backup(project, make_hub, faulty_hub):
    master_hub = faulty_hub("bad_values", overrides={(PUMP, "flow"): {"quality": "bad"}})
    with serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        _, _, group = redundant_pair(project, make_hub, master_hub.url, backup_hub.url)
        outcome = tick(group.pk)
        assert served(outcome) == "hub-b"
        assert outcome.read[0][1][1]["key"] == "flow" and outcome.read[0][1][1].get("quality") != "bad"


def test_when_every_member_is_bad_the_bad_read_is_stored_rather_than_none(project, make_hub, faulty_hub):
    overrides = {(PUMP, "flow"): {"quality": "bad"}}
    master_hub = faulty_hub("bad_values", overrides=overrides)
    backup_hub = faulty_hub("bad_values", overrides=overrides)
    _, _, group = redundant_pair(project, make_hub, master_hub.url, backup_hub.url)
    outcome = tick(group.pk)
    assert served(outcome) == "hub-a" and outcome.read[0][1][1]["quality"] == "bad"


def test_every_member_unreachable_fails_the_tick_naming_them(project, make_hub):
    _, _, group = redundant_pair(project, make_hub, unreachable_url(), unreachable_url())
    outcome = tick(group.pk)
    assert "redundancy set 'pumps': every member failed (tried hub-a, hub-b)" in outcome.error


def test_the_serving_members_offsets_correct_its_numbers(project, make_hub):
    with serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        master, backup, group = redundant_pair(project, make_hub, unreachable_url(), backup_hub.url)
        HubOffset.objects.create(hub=backup, entity=PUMP, key="speed_sp", factor=2.0, add=-100.0)
        HubOffset.objects.create(hub=master, entity="", key="speed_sp", add=1e6)  # the master's, not applied
        outcome = tick(group.pk)
        assert served(outcome) == "hub-b"
        assert outcome.read[0][1][0] == {**outcome.read[0][1][0], "key": "speed_sp", "value": 2800.0}
        assert backup_hub.state.read(PUMP, "speed_sp") == 1450.0  # the hub's own value is left alone


def parallel_pair(project, make_hub, master_hub, backup_hub, **options):
    master, backup, group = redundant_pair(project, make_hub, master_hub.url, backup_hub.url)
    RedundancySet.objects.filter(pk=master.redundancy_set_id).update(mode="parallel", **options)
    GroupKey.objects.filter(group=group, key="flow").delete()  # moving: two hubs read it a few ms apart
    return master, backup, group


def set_speed(running_hub, value: float) -> None:
    running_hub.state.write(running_hub.state.entities[PUMP], {"speed_sp": value})


def test_parallel_stores_the_masters_values_and_raises_a_disagreement_after_n_ticks_then_clears_it(project, make_hub):
    from hubs.models import RedundancyEvent

    with serve_in_thread(key=HUB_KEY, name="hub-a") as master_hub, serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        _, _, group = parallel_pair(project, make_hub, master_hub, backup_hub, threshold_abs=5.0, disagree_ticks=3)
        set_speed(backup_hub, 1453.0)  # within the threshold: agrees
        for second in range(3):
            assert served(tick(group.pk, TICK.replace(second=second))) == "hub-a"
        assert not RedundancyEvent.objects.exists()
        set_speed(backup_hub, 1500.0)
        for second in range(3, 5):
            outcome = tick(group.pk, TICK.replace(second=second))
            assert served(outcome) == "hub-a" and outcome.read[0][1][0]["value"] == 1450.0  # the master's is stored
        assert not RedundancyEvent.objects.exists()  # two ticks: not yet
        tick(group.pk, TICK.replace(second=5))
        event = RedundancyEvent.objects.get()
        assert (event.master, event.member, event.entity, event.key) == ("hub-a", "hub-b", PUMP, "speed_sp")
        assert (event.master_value, event.member_value, event.cleared_at) == (1450.0, 1500.0, None)
        assert event.raised_at == TICK.replace(second=5)
        tick(group.pk, TICK.replace(second=6))
        assert RedundancyEvent.objects.count() == 1  # still the one event
        set_speed(backup_hub, 1450.0)
        tick(group.pk, TICK.replace(second=7))
        event.refresh_from_db()
        assert event.cleared_at == TICK.replace(second=7)


def test_parallel_compares_a_members_values_after_its_offset(project, make_hub):
    from hubs.models import RedundancyEvent

    with serve_in_thread(key=HUB_KEY, name="hub-a") as master_hub, serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        _, backup, group = parallel_pair(project, make_hub, master_hub, backup_hub, threshold_percent=1.0, disagree_ticks=1)
        set_speed(backup_hub, 725.0)
        HubOffset.objects.create(hub=backup, entity=PUMP, key="speed_sp", factor=2.0)
        tick(group.pk)
        assert not RedundancyEvent.objects.exists()
        redundancy_forget()
        HubOffset.objects.filter(hub=backup).delete()
        tick(group.pk, TICK.replace(second=1))
        assert RedundancyEvent.objects.get().member_value == 725.0


def test_parallel_fails_over_to_the_backup_like_master_backup(project, make_hub):
    with serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        with serve_in_thread(key=HUB_KEY, name="hub-a") as master_hub:
            _, _, group = parallel_pair(project, make_hub, master_hub, backup_hub)
            assert served(tick(group.pk)) == "hub-a"
        assert served(tick(group.pk, TICK.replace(second=1))) == "hub-b"


@pytest.mark.django_db(transaction=True)
def test_a_tick_the_backup_served_is_stored_through_the_log_with_the_backups_name(project, make_hub, forward,
                                                                                  tmp_path):
    """The serving member travels with the outcome (its log record's ``served_by``) to the sinks: the tall
    layout's ``hub`` column and the wide layout's ``_hub`` column name it; the wide table stays the group's."""
    import sqlalchemy as sa

    from groups.models import GroupRun
    from groups.services import group_runs_execute
    from scripts_engine.models import Sink, SinkLayout

    wide_url = f"sqlite:///{tmp_path / 'wide.sqlite3'}"
    Sink.objects.create(project=project, name="wide", url=wide_url, layout=SinkLayout.WIDE)
    with serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        with serve_in_thread(key=HUB_KEY, name="hub-a") as master_hub:
            _, _, group = redundant_pair(project, make_hub, master_hub.url, backup_hub.url)
            now = datetime.now(timezone.utc).replace(microsecond=0)  # due now: a scheduled tick expires
            group_runs_execute(runs=[(group.pk, now)])
        group_runs_execute(runs=[(group.pk, now.replace(microsecond=1))])  # the master is gone: the backup serves
    forward()
    assert sorted(GroupRun.objects.values_list("status", "error")) == [("ok", ""), ("ok", "")]
    tall = sa.create_engine(Sink.objects.get(name="main").url)
    with tall.connect() as conn:
        rows = conn.execute(sa.text("SELECT tick, hub FROM hubsched_values WHERE key = 'flow' ORDER BY tick")).all()
    assert [hub for _, hub in rows] == ["hub-a", "hub-b"]
    wide = sa.create_engine(wide_url)
    with wide.connect() as conn:
        (table,) = [name for name in sa.inspect(conn).get_table_names() if name.startswith("hubsched_values")]
        assert table.startswith("hubsched_values_hub_a_")  # the group's hub names the table, whoever served
        assert conn.execute(sa.text(f'SELECT "_hub" FROM "{table}" ORDER BY tick')).scalars().all() == ["hub-a", "hub-b"]
    tall.dispose()
    wide.dispose()


def test_parallel_a_keys_own_threshold_replaces_the_sets(project, make_hub):
    from hubs.models import RedundancyEvent

    with serve_in_thread(key=HUB_KEY, name="hub-a") as master_hub, serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        _, _, group = parallel_pair(project, make_hub, master_hub, backup_hub, threshold_abs=5.0, disagree_ticks=1,
                                    key_thresholds={"speed_sp": {"abs": 100.0}})
        set_speed(backup_hub, 1500.0)  # 50 apart: beyond the set's 5, within the key's own 100
        tick(group.pk)
        assert not RedundancyEvent.objects.exists()
        set_speed(backup_hub, 1600.0)
        tick(group.pk, TICK.replace(second=1))
        assert RedundancyEvent.objects.get().member_value == 1600.0


def test_while_a_backup_serves_a_scripts_write_back_goes_to_the_backup(project, make_hub):
    from scripts_engine.models import Script

    with serve_in_thread(key=HUB_KEY, name="hub-b") as backup_hub:
        _, _, group = redundant_pair(project, make_hub, unreachable_url(), backup_hub.url)
        GroupKey.objects.filter(group=group, key="speed_sp").update(alias="sp")
        group.script = Script.objects.create(project=project, name="nudge", code="sp = sp + 1")
        group.save()
        outcome = tick(group.pk)
        assert served(outcome) == "hub-b"  # the master is down: a write to it would fail the tick
        assert backup_hub.state.read(PUMP, "speed_sp") == 1451.0
