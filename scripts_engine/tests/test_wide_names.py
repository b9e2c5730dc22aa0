"""Wide layout names (docs/data-path.md, "Wide layout names"): the names that would lose values are refused
(a shared column, a shared table, a column too long), reserved ones are mapped to ``k_<name>`` and stored whole."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from scripts_engine.sinks import ExecutionValues, SinkTarget, sink_engine, sink_write, wide_table_name
from scripts_engine.sinks.tables import (
    MAX_IDENTIFIER,
    WIDE_RESERVED,
    wide_column_name,
    wide_columns_problems,
    wide_table_collisions,
)

TICK = datetime(2026, 12, 1, 8, 0, 0, tzinfo=timezone.utc)
TS = "2026-12-01T08:00:00.250Z"


def test_reserved_keys_map_to_k_columns_and_every_other_key_to_its_identifier():
    assert WIDE_RESERVED == {"id", "tick", "ts", "quality"}
    assert [wide_column_name(k) for k in ("id", "tick", "ts", "quality", "ID", "Quality ")] == [
        "k_id", "k_tick", "k_ts", "k_quality", "k_id", "k_quality"]
    assert [wide_column_name(k) for k in ("flow", "P1", "p-1", "1st", "ticks")] == ["flow", "p1", "p_1", "c_1st", "ticks"]


@pytest.mark.parametrize("keys, column", [
    (["P1", "p1"], "p1"),
    (["p-1", "p_1"], "p_1"),
    (["id", "k_id"], "k_id"),
    (["flow", "flow"], "flow"),  # one key on two entities
], ids=["case", "punctuation", "mapped-reserved", "same-key"])
def test_two_keys_with_one_column_are_refused_naming_both(keys, column):
    labels = [f"e{i}.{key}" for i, key in enumerate(keys)]
    assert wide_columns_problems(keys, labels) == [
        (1, f'e0.{keys[0]} and e1.{keys[1]} would share the wide column "{column}" (a wide sink stores one column per '
            "parameter key, lower case, other characters as _): one value of every execution would be lost")]


def test_a_column_longer_than_the_identifier_limit_is_refused_and_one_at_the_limit_is_taken():
    assert wide_columns_problems(["x" * MAX_IDENTIFIER, "y" * (MAX_IDENTIFIER + 1)]) == [
        (1, f'{"y" * 61}: its wide column "{"y" * 61}" is longer than 60 characters (a column name of PostgreSQL and MySQL '
            "is at most 63)")]


def test_keys_with_distinct_columns_have_no_problem():
    assert wide_columns_problems(["flow", "P1", "p-2", "id", "tick", "ts", "quality", "k_flow"]) == []


def test_groups_of_one_table_are_found_and_named_by_the_earlier_one():
    groups = [("a_b", "c"), ("x", "y"), ("a", "b_c"), ("Hub-A", "Pumps"), ("hub_a", "pumps"), ("hub a", "pumps 2")]
    assert wide_table_collisions(prefix="v", groups=groups) == [(2, 0, "v_a_b_c"), (4, 3, "v_hub_a_pumps")]


def test_groups_whose_names_differ_only_past_the_identifier_limit_share_a_table():
    long = "g" * 80
    assert wide_table_collisions(prefix="v", groups=[("h", long + "1"), ("h", long + "2")]) == [(1, 0, wide_table_name("v", "h", long))]


# --- on real sinks: what the rules let through is stored completely --------------------------------------------------------------


def execution(hub: str, group: str, values: dict, group_id: int = 1) -> ExecutionValues:
    items = [{"key": key, "value": value, "ts": TS, "quality": "good"} for key, value in values.items()]
    return ExecutionValues(tick=TICK, project="plant", hub=hub, group_id=group_id, group=group, values=[("plant/pump1", items)])


def rows(url: str, name: str) -> list[dict]:
    engine = sink_engine(url)
    table = sa.Table(name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def test_a_group_with_reserved_keys_is_stored_whole_in_k_columns(sink_url, table_prefix):
    values = {"id": 7.0, "tick": 8.0, "ts": "stamp", "quality": "bad-ish", "flow": 42.5, "P2": 1.0, "p-3": [1, 2]}
    assert wide_columns_problems(list(values)) == []  # what the group validators let through
    target = SinkTarget(name="wide", url=sink_url, table=table_prefix, layout="wide")
    sink_write(target=target, executions=[execution("hub-a", "pumps", values)])
    [row] = rows(sink_url, wide_table_name(table_prefix, "hub-a", "pumps"))
    assert row["tick"].replace(tzinfo=timezone.utc) == TICK and row["quality"] == "good"
    assert {key: row[wide_column_name(key)] for key in values} == {
        "id": 7.0, "tick": 8.0, "ts": '"stamp"', "quality": '"bad-ish"', "flow": 42.5, "P2": 1.0, "p-3": "[1,2]"}


def test_groups_the_rules_let_through_write_tables_of_their_own(sink_url, table_prefix):
    groups = [("a_b", "c"), ("a", "b_d"), ("A-B", "c 2")]
    assert wide_table_collisions(prefix=table_prefix, groups=groups) == []
    target = SinkTarget(name="wide", url=sink_url, table=table_prefix, layout="wide")
    sink_write(target=target, executions=[execution(hub, group, {"flow": float(i)}, group_id=i) for i, (hub, group) in enumerate(groups)])
    stored = [[float(r["flow"]) for r in rows(sink_url, wide_table_name(table_prefix, hub, group))] for hub, group in groups]
    assert stored == [[0.0], [1.0], [2.0]]


def test_a_name_a_script_made_that_meets_a_key_in_one_column_fails_the_execution_instead_of_dropping_a_value(sink_url, table_prefix):
    from scripts_engine.sinks import SinkError

    target = SinkTarget(name="wide", url=sink_url, table=table_prefix, layout="wide")
    items = [{"key": "flow", "value": 1.0, "ts": TS, "quality": "good"}]
    derived = [{"key": "Flow", "value": 2.0, "ts": TS, "quality": "good"}]  # bound by a script: entity ""
    bad = ExecutionValues(tick=TICK, project="plant", hub="hub-a", group_id=1, group="pumps",
                          values=[("plant/pump1", items), ("", derived)])
    with pytest.raises(SinkError, match="column flow would hold both 'flow' and 'Flow'") as caught:
        sink_write(target=target, executions=[bad])
    assert caught.value.refused and caught.value.permanent
