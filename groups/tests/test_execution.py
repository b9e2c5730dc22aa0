"""One group execution end to end: poll a real hub, write back, store in a real SQL sink; and its faults."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from groups.models import Group, GroupKey, GroupRun, RunStatus
from groups.services import group_run
from hubs.hubsim.faults import unreachable_url
from hubsched.testing import mariadb_url, postgres_url
from scripts_engine.models import Sink
from scripts_engine.sinks import sink_engine, tall_table

TICK = datetime(2026, 11, 20, 10, 0, 10, tzinfo=timezone.utc)


def make_group(hub, name="pumps", keys=(("plant/line1/pump1", "flow", ""), ("plant/line1/pump1", "pressure", ""))):
    group = Group.objects.create(hub=hub, name=name, period=1.0)
    for position, (entity, key, alias) in enumerate(keys):
        GroupKey.objects.create(group=group, entity=entity, key=key, alias=alias, position=position)
    return group


def sink_rows(project) -> list[dict]:
    sink = Sink.objects.get(project=project)
    table = tall_table(sa.MetaData(), sink.table)
    with sink_engine(sink.url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.group_id, table.c.tick, table.c.entity, table.c.key))]


def test_it_stores_every_value_of_a_group_read_from_the_hub(project, make_hub, reference_hub):
    group = make_group(make_hub(reference_hub.url))
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert (run.status, run.error, run.values_count) == (RunStatus.OK, "", 2)
    rows = sink_rows(project)
    assert [(r["entity"], r["key"]) for r in rows] == [("plant/line1/pump1", "flow"), ("plant/line1/pump1", "pressure")]
    assert 30.0 < rows[0]["value_num"] < 60.0  # the reference hub's pump1 flow moves around 42 m3/h
    assert rows[0]["quality"] in {"good", "uncertain", "bad"} and rows[0]["ts"] is not None
    assert {r["tick"].replace(tzinfo=timezone.utc) for r in rows} == {TICK}
    group.stats.refresh_from_db()
    assert (group.stats.done, group.stats.values, group.stats.last_status) == (1, 2, RunStatus.OK)


def test_it_stores_values_that_are_not_numbers(project, make_hub, reference_hub):
    group = make_group(make_hub(reference_hub.url), keys=[("plant/line1/pump1", "alarms", ""), ("plant/line1/pump1", "mode", "")])
    assert group_run(group_id=group.pk, scheduled_for=TICK).status == RunStatus.OK
    by_key = {r["key"]: json.loads(r["value_json"]) for r in sink_rows(project)}
    assert isinstance(by_key["alarms"], list) and by_key["mode"] == "auto"


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_the_same_path_stores_in_postgresql_and_mariadb(project, make_hub, reference_hub, server):
    url = postgres_url() if server == "postgresql" else mariadb_url()
    table = f"hubsched_test_{server}"
    Sink.objects.filter(project=project).update(url=url, table=table)
    engine = sa.create_engine(url)
    tables = (table, f"{table}_executions")  # the values and their ledger (scripts_engine/sinks/tables.py)

    def drop() -> None:  # a ledger left behind would make the next run's tick "stored already"
        with engine.begin() as conn:
            for name in tables:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))

    drop()
    try:
        group = make_group(make_hub(reference_hub.url))
        assert group_run(group_id=group.pk, scheduled_for=TICK).status == RunStatus.OK
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE group_id = :g"), {"g": group.pk}).scalar() == 2
            assert conn.execute(sa.text(f"SELECT values_count FROM {tables[1]} WHERE group_id = :g"), {"g": group.pk}).scalar() == 2
    finally:
        drop()
    engine.dispose()


def test_an_unreachable_hub_fails_the_run_with_a_clear_error(project, make_hub):
    group = make_group(make_hub(unreachable_url(), timeout=1.0))
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.FAILED
    assert "hub 'hub-a'" in run.error and "connect" in run.error.lower()


def test_a_wrong_api_key_fails_the_run_and_never_shows_the_key(project, make_hub, reference_hub):
    group = make_group(make_hub(reference_hub.url, key="not-the-key-5f3a"))
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.FAILED and "401" in run.error
    assert "not-the-key-5f3a" not in run.error


def test_an_unknown_entity_fails_the_run_naming_it(project, make_hub, reference_hub):
    group = make_group(make_hub(reference_hub.url), keys=[("plant/line1/pump9", "flow", "")])
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.FAILED and "plant/line1/pump9" in run.error and "404" in run.error


def test_an_unknown_key_fails_the_run_naming_it(project, make_hub, reference_hub):
    group = make_group(make_hub(reference_hub.url), keys=[("plant/line1/pump1", "nope", "")])
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.FAILED and "nope" in run.error


def test_a_hub_slower_than_the_timeout_fails_the_run_as_a_timeout(project, make_hub, faulty_hub):
    slow = faulty_hub("slow", delay=3.0)
    group = make_group(make_hub(slow.url, timeout=0.5))
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.FAILED and "timeout" in run.error.lower()


def test_a_hub_that_sends_frames_that_are_not_json_still_gets_its_values_read(project, make_hub, faulty_hub):
    # hub protocol v1: a client must survive a frame that is not JSON; the real answer still arrives
    junk = faulty_hub("not_json")
    group = make_group(make_hub(junk.url))
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert (run.status, run.values_count) == (RunStatus.OK, 2)
    assert junk.faulty.faulted >= 1


def test_a_hub_that_closes_mid_request_fails_the_run_and_the_next_tick_recovers(project, make_hub, faulty_hub):
    closing = faulty_hub("close_mid_request", times=1)
    group = make_group(make_hub(closing.url))
    first = group_run(group_id=group.pk, scheduled_for=TICK)
    assert first.status == RunStatus.FAILED and "connection" in first.error.lower()
    second = group_run(group_id=group.pk, scheduled_for=TICK.replace(second=11))
    assert second.status == RunStatus.OK


def test_a_failing_hub_does_not_stop_another_group_on_a_good_hub(project, make_hub, reference_hub, faulty_hub):
    silent = faulty_hub("never_answer")
    bad = make_group(make_hub(silent.url, name="hub-silent", timeout=0.5), name="bad")
    good = make_group(make_hub(reference_hub.url, name="hub-good"), name="good")
    assert group_run(group_id=bad.pk, scheduled_for=TICK).status == RunStatus.FAILED
    assert group_run(group_id=good.pk, scheduled_for=TICK).status == RunStatus.OK
    assert GroupRun.objects.filter(status=RunStatus.OK, group=good).count() == 1


def test_a_sink_that_cannot_be_reached_keeps_the_values_in_the_log_and_its_forwarder_names_it(
        project, make_hub, reference_hub, forward):
    from scripts_engine.sinks import SinkError

    Sink.objects.filter(project=project).update(url="postgresql+psycopg2://u:pw-77@127.0.0.1:1/x", name="archive")
    group = make_group(make_hub(reference_hub.url))
    run = group_run(group_id=group.pk, scheduled_for=TICK)
    assert run.status == RunStatus.OK and run.values_count > 0  # acquired: durable in the log
    with pytest.raises(SinkError) as refused:
        forward()
    assert "archive" in refused.value.message and "pw-77" not in refused.value.message
