"""Write-back through a real reference hub: the demo's doubling script, a group's path, and a live debug session."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from groups.models import Group, GroupKey, RunStatus
from hubs.demo import DOUBLING_SCRIPT
from hubs.project_document.importer import entity_tree_write
from hubs.hubsim.tree import demo_tree
from hubs.models import Hub
from scripts_engine.models import Script, Sink

BURNER = "plant/utilities/boiler/burner"
TICK = datetime(2026, 11, 20, 10, 0, 5, tzinfo=timezone.utc)


@pytest.fixture
def burner_group(project, reference_hub, tmp_path):
    Sink.objects.create(project=project, name="main", url=f"sqlite:///{tmp_path / 'values.sqlite3'}")
    hub = Hub.objects.create(project=project, name="hub-a", url=reference_hub.url, api_key="test-key", timeout=2.0)
    entity_tree_write(hub=hub, tree=demo_tree("hub-a"))
    script = Script.objects.create(project=project, name="double-stage", code=DOUBLING_SCRIPT)
    group = Group.objects.create(hub=hub, name="burner-stage", period=5.0, script=script)
    GroupKey.objects.create(group=group, entity=BURNER, key="stage", alias="stage")
    return group


def hub_stage(group) -> int:
    from hubs.client import hub_client

    client = hub_client(group.hub.url, group.hub.api_key, timeout=2.0)
    return {v["key"]: v["value"] for v in client.get_entity_params(BURNER, ["stage"])}["stage"]


def test_the_demo_doubling_script_writes_back_through_the_hub(burner_group):
    from groups.services import group_run

    assert hub_stage(burner_group) == 1
    for expected in (2, 4, 8):
        run = group_run(group_id=burner_group.pk, scheduled_for=TICK.replace(second=expected))
        assert (run.status, run.error) == (RunStatus.OK, "")
        assert hub_stage(burner_group) == expected


def test_a_debug_session_on_live_values_writes_nothing_unless_asked(staff_client, burner_group):
    url = f"/api/scripts/{burner_group.script_id}/debug"
    body = {"live": True, "group": burner_group.pk, "breakpoints": [2]}
    answer = staff_client.post(url, data=json.dumps(body), content_type="application/json").json()
    assert answer["stops"][0]["bindings"] == {"stage": 1}
    assert answer["result"]["bindings"]["stage"] == 2 and answer["written"] == {}
    assert hub_stage(burner_group) == 1

    body["write_back"] = True
    answer = staff_client.post(url, data=json.dumps(body), content_type="application/json").json()
    assert answer["written"] == {BURNER: {"stage": 2}}
    assert hub_stage(burner_group) == 2


def test_a_debug_session_stores_every_binding_only_when_asked(staff_client, burner_group):
    import sqlalchemy as sa

    sink = Sink.objects.get(project=burner_group.hub.project)
    url = f"/api/scripts/{burner_group.script_id}/debug"
    answer = staff_client.post(url, data=json.dumps({"live": True, "group": burner_group.pk, "store": True}),
                               content_type="application/json").json()
    assert answer["stored"] == 1 and answer["written"] == {}
    engine = sa.create_engine(sink.url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(f"SELECT entity, key, value_num FROM {sink.table}"))]
    engine.dispose()
    assert rows == [(BURNER, "stage", 2.0)]
    assert hub_stage(burner_group) == 1
