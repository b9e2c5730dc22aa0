"""The value contract per execution: a hub value that breaks it fails its own execution, never its batch-mates."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest
import sqlalchemy as sa

from groups.execution import GroupRunError, client_for, execute_batch, values_check
from groups.models import Group, GroupKey, GroupRun
from groups.services import group_runs_execute
from scripts_engine.models import Sink
from scripts_engine.sinks import sink_engine, tall_table

TICK = datetime(2026, 11, 20, 10, 0, 10, tzinfo=timezone.utc)
GOOD = {"key": "flow", "value": 42.5, "ts": "2026-11-20T10:00:00.120Z", "quality": "good"}


def check(*items, max_value_bytes=1024, frame_bytes=0):
    return values_check(hub="hub-a", entity="plant/e1", values=list(items), max_value_bytes=max_value_bytes,
                        frame_bytes=frame_bytes)


def test_well_formed_values_pass():
    check(GOOD, {**GOOD, "quality": "uncertain"}, {**GOOD, "quality": "bad"}, {"key": "k", "value": None},
          {**GOOD, "value": "text"}, {**GOOD, "value": [1, {"a": "b"}]}, {**GOOD, "ts": "2026-11-20T10:00:00+02:00"},
          {**GOOD, "value": True}, {**GOOD, "value": 2**70}, {**GOOD, "value": "a literal \\u0000 is no NUL"})


@pytest.mark.parametrize(("item", "problem"), [
    ({**GOOD, "quality": "excellent-beyond-sixteen-characters"}, "quality 'excellent-beyond-sixteen-characters' is not good"),
    ({**GOOD, "quality": ["good"]}, "quality ['good'] is not good"),
    ({**GOOD, "quality": ""}, "quality '' is not good"),
    ({**GOOD, "ts": "2026-13-45T99:99:99Z"}, "ts '2026-13-45T99:99:99Z' is not an RFC 3339 timestamp"),
    ({**GOOD, "ts": 1234567890}, "ts 1234567890 is not an RFC 3339"),
    ({**GOOD, "ts": "9999-12-31T23:00:00-05:00"}, "is not an RFC 3339"),  # past year 9999 in UTC
    ({**GOOD, "ts": "0500-01-01T00:00:00Z"}, "is not an RFC 3339"),  # before MySQL's DATETIME
    ({**GOOD, "value": "nul\x00inside"}, "holds a NUL character"),
    ({**GOOD, "value": {"deep": [1, {"x": "a\x00"}]}}, "holds a NUL character"),
    ({**GOOD, "value": {"key\x00": 1}}, "holds a NUL character"),
    ({**GOOD, "value": "x" * 2000}, "the value's JSON is 2002 bytes, over the hub's limit of 1024 bytes"),
    ({**GOOD, "value": ["y" * 600, "z" * 600]}, "over the hub's limit of 1024 bytes"),
])
def test_a_value_breaking_the_contract_is_refused_with_what_and_where(item, problem):
    with pytest.raises(GroupRunError) as refused:
        check(GOOD, item)
    assert str(refused.value).startswith("hub 'hub-a', entity 'plant/e1', key 'flow': ")
    assert problem in str(refused.value)


def test_values_are_not_measured_when_their_answer_is_within_the_value_limit():
    big = {**GOOD, "value": "x" * 2000}
    with pytest.raises(GroupRunError):
        check(big, max_value_bytes=1024, frame_bytes=5000)  # the answer could hold a larger value
    assert check(big, max_value_bytes=4096, frame_bytes=3000) == 3000  # it could not: nothing measured
    assert check(GOOD, GOOD) == 200  # no frame: an estimate per value


def _group(hub, name, entity, keys):
    group = Group.objects.create(hub=hub, name=name, period=1.0)
    for position, key in enumerate(keys):
        GroupKey.objects.create(group=group, entity=entity, key=key, position=position)
    return group


def _stored(project) -> set[tuple[int, str, str]]:
    sink = Sink.objects.get(project=project)
    table = tall_table(sa.MetaData(), sink.table)
    with sink_engine(sink.url).connect() as conn:
        return {(r.group_id, r.entity, r.key) for r in conn.execute(sa.select(table.c.group_id, table.c.entity, table.c.key))}


@pytest.mark.parametrize("bad", [
    {"quality": "excellent-beyond-sixteen-characters"},
    {"value": "nul\x00byte"},
    {"ts": "2026-13-45T99:99:99Z"},
    {"value": "v" * 5000},
])
def test_one_bad_value_fails_its_execution_and_its_batch_mates_are_stored(project, make_hub, faulty_hub, bad, forward):
    hub_server = faulty_hub("bad_values", overrides={("plant/line1/pump2", "flow"): bad})
    hub = make_hub(hub_server.url)
    hub.max_value_bytes = 4096
    hub.save()
    groups = [_group(hub, f"g{i}", "plant/line1/pump1", ["flow", "pressure"]) for i in range(5)]
    poisoned = _group(hub, "poisoned", "plant/line1/pump2", ["flow", "pressure"])
    groups.insert(2, poisoned)
    hub.refresh_from_db()
    for g in groups:
        g.hub = hub
    outcomes = execute_batch(ticks=[(g, TICK) for g in groups])
    errors = {o.group.name: o.error for o in outcomes}
    assert "hub 'hub-a', entity 'plant/line1/pump2', key 'flow': " in errors.pop("poisoned")
    assert errors == {f"g{i}": "" for i in range(5)}
    now = datetime.now(timezone.utc)  # a tick of now: the worker's way fails a tick past its expiry unread
    group_runs_execute(runs=[(g.pk, now) for g in groups])  # the worker's way: into the log, then forwarded
    forward()
    assert _stored(project) == {(g.pk, "plant/line1/pump1", k) for g in groups if g is not poisoned for k in ("flow", "pressure")}
    assert dict(GroupRun.objects.values_list("group__name", "status")) == {
        **{f"g{i}": "ok" for i in range(5)}, "poisoned": "failed"}


def test_the_client_gets_the_hubs_frame_limit(project, make_hub, reference_hub, settings):
    hub = make_hub(reference_hub.url)
    assert client_for(hub).max_frame_bytes == settings.HUBSCHED_HUB_MAX_FRAME_BYTES
    hub.max_frame_bytes = 65536
    assert client_for(hub).max_frame_bytes == 65536


def test_the_check_costs_little_on_a_realistic_answer():
    """Not timed (no wall-clock asserts): the realistic answer of the micro-benchmark in docs/data-path.md passes."""
    answer = orjson.loads(orjson.dumps({"values": [
        {"key": f"k{n:03d}", "value": n * 1.5 if n % 10 else "text", "ts": "2026-11-20T10:00:00.100Z", "quality": "good"}
        for n in range(100)]}))
    assert check(*answer["values"], max_value_bytes=1 << 20, frame_bytes=9000) == 9000
