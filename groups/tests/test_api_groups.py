"""/api/v1/groups: list, get, create, change, delete, bulk, and the actions (run now, enable, disable, kill)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from django.test import Client
from django_celery_beat.models import PeriodicTask, PeriodicTasks

from api.testing import assert_error, token_client
from groups import execution
from groups.models import Group, GroupKey, KillRequest
from groups.scheduler.source import group_specs
from groups.services import group_schedule_sync
from hubs.hubsim.tree import demo_tree
from hubs.models import Hub, Project
from hubs.project_document.importer import entity_tree_write
from scripts_engine.models import Script, Sink

pytestmark = pytest.mark.django_db

PUMP = "plant/line1/pump1"


@pytest.fixture
def hub(db):
    project = Project.objects.create(name="plant", time_zone="Europe/Berlin")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:1/", api_key="hub-secret-key")
    entity_tree_write(hub=hub, tree=demo_tree("hub-a"))
    return hub


@pytest.fixture
def integrator():
    return token_client(role="integrator")


def body(hub, name="pumps", **fields):
    doc = {"hub": hub.pk, "name": name, "period": 1.0,
           "keys": [{"entity": PUMP, "key": "flow"}, {"entity": PUMP, "key": "pressure", "alias": "p"}]}
    doc.update(fields)
    return doc


def post(client, path, data):
    return client.post(path, data, content_type="application/json")


def patch(client, path, data):
    return client.patch(path, data, content_type="application/json")


def mirror_fields(task: PeriodicTask) -> dict:
    return {"name": task.name, "task": task.task, "kwargs": task.kwargs, "enabled": task.enabled,
            "expire_seconds": task.expire_seconds, "interval": task.interval_id, "crontab": task.crontab_id,
            "clocked": task.clocked_id, "one_off": task.one_off}


def assert_schedule_right(group: Group) -> None:
    """The group's PeriodicTask is what group_schedule_sync (the admin's save) makes of it: syncing changes nothing."""
    group = Group.objects.select_related("hub__project", "periodic_task").get(pk=group.pk)
    before = mirror_fields(group.periodic_task)
    group_schedule_sync(group=group)
    assert mirror_fields(PeriodicTask.objects.get(pk=group.periodic_task_id)) == before


# --- create, get, list ---------------------------------------------------------------------------------------


def test_a_group_is_created_with_its_keys_in_order_and_scheduled(hub, integrator):
    made = post(integrator, "/api/v1/groups", body(hub, expires=3.0, execution_timeout=2.5))
    assert made.status_code == 201, made.content
    doc = made.json()
    assert doc["keys"] == [{"entity": PUMP, "key": "flow", "alias": ""}, {"entity": PUMP, "key": "pressure", "alias": "p"}]
    assert (doc["project"], doc["hub"], doc["trigger"], doc["period"], doc["expires"], doc["execution_timeout"]) == (
        hub.project_id, hub.pk, "interval", 1.0, 3.0, 2.5)
    assert doc["stats"]["dispatched"] == 0 and doc["stats"]["last_status"] is None
    group = Group.objects.get(pk=doc["id"])
    assert doc["periodic_task"] == group.periodic_task_id and group.periodic_task.enabled
    assert group.periodic_task.interval.every == 1 and group.periodic_task.expire_seconds == 3
    assert_schedule_right(group)
    assert "hub-secret-key" not in made.content.decode()
    got = integrator.get(f"/api/v1/groups/{group.pk}")
    assert got.status_code == 200 and got.json() == doc


@pytest.mark.parametrize("fields, kind", [
    ({"trigger": "cron", "cron": "*/5 * * * * *"}, "crontab"),
    ({"trigger": "once", "run_at": "2030-01-01T00:00:00Z"}, "clocked"),
    ({"trigger": "on_change", "deadband": 0.5}, None),
])
def test_every_trigger_gets_the_schedule_the_admin_gives_it(hub, integrator, fields, kind):
    made = post(integrator, "/api/v1/groups", body(hub, **fields))
    assert made.status_code == 201, made.content
    group = Group.objects.select_related("periodic_task").get(pk=made.json()["id"])
    if kind is None:
        assert group.periodic_task is None and made.json()["deadband"] == 0.5
        return
    assert getattr(group.periodic_task, kind) is not None
    if kind == "crontab":
        assert str(group.periodic_task.crontab.timezone) == "Europe/Berlin"
    assert_schedule_right(group)


def test_a_bad_group_is_refused_with_each_problem_at_its_path_and_nothing_is_written(hub, integrator):
    bad = body(hub, period=0.01, trigger="cron", cron="every minute", execution_timeout=0,
               keys=[{"entity": PUMP, "key": "flow"}, {"entity": "plant/nowhere", "key": "x"},
                     {"entity": PUMP, "key": "flow"}, {"entity": PUMP, "key": "nope"}])
    error = assert_error(post(integrator, "/api/v1/groups", bad), 422, "invalid")
    paths: dict[str, list[str]] = {}
    for detail in error["details"]:
        paths.setdefault(detail["path"], []).append(detail["message"])
    assert paths["period"] == ["must be at least 0.1 seconds"]
    assert "six-field" in paths["cron"][0] and paths["execution_timeout"][0].startswith("The execution timeout")
    assert paths["keys[1].entity"] == ["plant/nowhere.x names no entity of this hub"]
    assert paths["keys[3].key"] == [f"{PUMP}.nope names no entity parameter of this hub"]
    assert paths["keys[2]"] == [f"{PUMP}.flow is listed twice", 'binding name "flow" is used twice in this group']
    assert not Group.objects.exists() and not PeriodicTask.objects.exists()


def test_a_group_needs_a_key_a_known_hub_and_a_name_free_in_its_hub(hub, integrator):
    error = assert_error(post(integrator, "/api/v1/groups", body(hub, keys=[])), 422)
    assert error["details"] == [{"path": "keys", "message": "a group needs at least one key (it would read nothing)"}]
    error = assert_error(post(integrator, "/api/v1/groups", {**body(hub), "hub": 999999}), 422)
    assert error["details"][0]["path"] == "hub" and "999999" in error["details"][0]["message"]
    assert post(integrator, "/api/v1/groups", body(hub)).status_code == 201
    error = assert_error(post(integrator, "/api/v1/groups", body(hub)), 422)
    assert error["details"] == [{"path": "name", "message": "Group with this Hub and Name already exists."}]


def test_unknown_fields_and_wrong_types_are_refused_with_their_path(hub, integrator):
    error = assert_error(post(integrator, "/api/v1/groups", body(hub, colour="red")), 422)
    assert any(d["path"] == "colour" for d in error["details"])
    error = assert_error(post(integrator, "/api/v1/groups", body(hub, keys=[{"entity": PUMP}])), 422)
    assert any(d["path"] == "keys[0].key" for d in error["details"]), error


def test_nul_characters_non_finite_numbers_and_ids_past_64_bits_are_refused(hub, integrator):
    error = assert_error(post(integrator, "/api/v1/groups", body(hub, name="a\x00b")), 422)
    assert error["details"][0]["path"] == "name" and error["details"][0]["message"].endswith("Null characters are not allowed.")
    nan = integrator.post("/api/v1/groups", '{"hub": %d, "name": "n", "period": NaN, "keys": []}' % hub.pk,
                          content_type="application/json")
    assert assert_error(nan, 422)["details"][0]["path"] == "period"
    assert assert_error(post(integrator, "/api/v1/groups", {**body(hub), "hub": 2**64}), 422)["details"][0]["path"] == "hub"
    assert assert_error(integrator.get(f"/api/v1/groups/{2**64}"), 422)["details"][0]["path"] == "group_id"
    assert not Group.objects.exists()


def test_long_names_and_periods_still_get_their_schedule(hub, integrator):
    hub.name = "h" * 200
    hub.save()
    made = post(integrator, "/api/v1/groups", body(hub, name="g" * 200, period=3000.5, expires=1e12))
    assert made.status_code == 201, made.content
    task = Group.objects.get(pk=made.json()["id"]).periodic_task
    assert len(task.name) == 200 and task.name.startswith(f"hubsched group {made.json()['id']}: ")
    assert (task.interval.every, task.interval.period, task.expire_seconds) == (3000, "seconds", 2**31 - 1)


def test_a_script_of_another_project_is_refused(hub, integrator):
    other = Project.objects.create(name="other")
    script = Script.objects.create(project=other, name="s", code="pass")
    error = assert_error(post(integrator, "/api/v1/groups", body(hub, script=script.pk)), 422)
    assert error["details"][0]["path"] == "script" and "another project" in error["details"][0]["message"]


def test_the_list_filters_searches_and_paginates(hub, integrator):
    hub_b = Hub.objects.create(project=hub.project, name="hub-b", url="ws://127.0.0.1:1/")
    for name in ("alpha", "beta", "gamma"):
        assert post(integrator, "/api/v1/groups", body(hub, name=name)).status_code == 201
    assert post(integrator, "/api/v1/groups", body(hub_b, name="delta", trigger="cron", cron="0 * * * * *",
                                                    enabled=False)).status_code == 201
    page = integrator.get("/api/v1/groups?limit=2&offset=1").json()
    assert (page["count"], page["limit"], page["offset"]) == (4, 2, 1)
    assert [g["name"] for g in page["items"]] == ["beta", "gamma"]

    def names(query):
        response = integrator.get(f"/api/v1/groups?{query}")
        assert response.status_code == 200, response.content
        return [g["name"] for g in response.json()["items"]]

    assert names(f"hub={hub_b.pk}") == ["delta"]
    assert names("enabled=false") == ["delta"]
    assert names("trigger=interval&search=AL") == ["alpha"]
    assert names(f"project={hub.project_id}&search=a") == ["alpha", "beta", "gamma", "delta"]
    assert names("project=999999") == []
    assert_error(integrator.get("/api/v1/groups?limit=0"), 422)


def test_reading_needs_view_group_and_a_login(hub):
    assert_error(Client().get("/api/v1/groups"), 401, "not_authenticated")
    error = assert_error(token_client(role=None).get("/api/v1/groups"), 403, "permission_denied")
    assert "groups.view_group" in error["message"]
    viewer = token_client(role="viewer")
    assert viewer.get("/api/v1/groups").status_code == 200
    assert_error(viewer.get("/api/v1/groups/999999"), 404, "not_found")


def test_writing_needs_the_groups_permissions(hub):
    viewer = token_client(role="viewer")
    error = assert_error(post(viewer, "/api/v1/groups", body(hub)), 403)
    assert "groups.add_group" in error["message"]
    group_id = post(token_client(role="integrator"), "/api/v1/groups", body(hub)).json()["id"]
    assert "groups.change_group" in assert_error(patch(viewer, f"/api/v1/groups/{group_id}", {"period": 2}), 403)["message"]
    assert "groups.delete_group" in assert_error(viewer.delete(f"/api/v1/groups/{group_id}"), 403)["message"]
    assert_error(Client().post("/api/v1/groups", body(hub), content_type="application/json"), 401)
    assert Group.objects.count() == 1


# --- change, delete --------------------------------------------------------------------------------------------


def test_a_change_applies_the_fields_given_and_the_schedule_follows(hub, integrator):
    group_id = post(integrator, "/api/v1/groups", body(hub)).json()["id"]
    changed = patch(integrator, f"/api/v1/groups/{group_id}", {"period": 5, "expires": None, "name": "pumps-5s"})
    assert changed.status_code == 200, changed.content
    doc = changed.json()
    assert (doc["period"], doc["name"], len(doc["keys"])) == (5.0, "pumps-5s", 2)  # keys kept
    group = Group.objects.select_related("periodic_task__interval").get(pk=group_id)
    assert group.periodic_task.interval.every == 5 and group.periodic_task.name.endswith("hub-a/pumps-5s")
    to_cron = patch(integrator, f"/api/v1/groups/{group_id}", {"trigger": "cron", "cron": "0 */2 * * * *"})
    assert to_cron.status_code == 200, to_cron.content
    assert_schedule_right(Group.objects.get(pk=group_id))


def test_a_change_with_keys_replaces_them_as_a_whole(hub, integrator):
    group_id = post(integrator, "/api/v1/groups", body(hub)).json()["id"]
    keys = [{"entity": "plant/line1/pump2", "key": "speed_sp", "alias": "sp"}, {"entity": PUMP, "key": "flow"}]
    changed = patch(integrator, f"/api/v1/groups/{group_id}", {"keys": keys})
    assert changed.status_code == 200, changed.content
    assert changed.json()["keys"] == [{**keys[0]}, {**keys[1], "alias": ""}]
    assert list(GroupKey.objects.filter(group_id=group_id).order_by("position").values_list("key", flat=True)) == ["speed_sp", "flow"]


def test_moving_a_group_to_another_hub_checks_its_keys_against_that_hubs_tree(hub, integrator):
    group_id = post(integrator, "/api/v1/groups", body(hub)).json()["id"]
    other = Hub.objects.create(project=hub.project, name="hub-b", url="ws://127.0.0.1:1/")
    entity_tree_write(hub=other, tree=[{"id": "elsewhere", "params": [{"key": "flow", "type": "number"}]}])
    error = assert_error(patch(integrator, f"/api/v1/groups/{group_id}", {"hub": other.pk}), 422)
    assert [d["path"] for d in error["details"]] == ["keys[0].entity", "keys[1].entity"]
    moved = patch(integrator, f"/api/v1/groups/{group_id}", {"hub": other.pk, "keys": [{"entity": "elsewhere", "key": "flow"}]})
    assert moved.status_code == 200, moved.content
    assert moved.json()["hub"] == other.pk
    assert Group.objects.get(pk=group_id).periodic_task.name.endswith("hub-b/pumps")


def test_a_bad_change_is_refused_and_changes_nothing(hub, integrator):
    group_id = post(integrator, "/api/v1/groups", body(hub)).json()["id"]
    post(integrator, "/api/v1/groups", body(hub, name="taken"))
    error = assert_error(patch(integrator, f"/api/v1/groups/{group_id}",
                               {"name": "taken", "trigger": "once", "keys": [{"entity": PUMP, "key": "zz"}]}), 422)
    assert {d["path"] for d in error["details"]} == {"name", "run_at", "keys[0].key"}
    group = Group.objects.get(pk=group_id)
    assert (group.name, group.trigger, group.keys.count()) == ("pumps", "interval", 2)
    assert_error(patch(integrator, "/api/v1/groups/999999", {"period": 2}), 404)
    assert_error(patch(integrator, f"/api/v1/groups/{group_id}", {"period": None}), 422)


def test_a_group_is_deleted_with_its_schedule(hub, integrator):
    group_id = post(integrator, "/api/v1/groups", body(hub)).json()["id"]
    task_id = Group.objects.get(pk=group_id).periodic_task_id
    assert integrator.delete(f"/api/v1/groups/{group_id}").status_code == 204
    assert not Group.objects.exists() and not PeriodicTask.objects.filter(pk=task_id).exists()
    assert_error(integrator.delete(f"/api/v1/groups/{group_id}"), 404)


# --- bulk --------------------------------------------------------------------------------------------------------


def bulk_items(hub, n, keys=3):
    params = ["flow", "pressure", "speed_sp", "running", "starts", "mode", "state", "alarms"]
    return [{"hub": hub.pk, "name": f"g{i:04d}", "period": [1.0, 2.0, 0.5][i % 3],
             "keys": [{"entity": f"plant/line{1 + k % 2}/pump1", "key": params[k // 2], "alias": f"k{k}"}
                      for k in range(keys)]}
            for i in range(n)]


def test_bulk_create_makes_every_group_with_its_keys_and_schedule_in_one_request(hub, integrator):
    mark = PeriodicTasks.last_change()
    items = bulk_items(hub, 40)
    items[5] = {**items[5], "trigger": "on_change"}
    items[6] = {**items[6], "trigger": "cron", "cron": "*/10 * * * * *"}
    made = post(integrator, "/api/v1/groups/bulk", {"groups": items})
    assert made.status_code == 201, made.content
    ids = made.json()["ids"]
    assert made.json()["count"] == 40 == len(ids)
    assert list(Group.objects.filter(pk__in=ids).order_by("pk").values_list("name", flat=True)) == [i["name"] for i in items]
    assert GroupKey.objects.filter(group_id__in=ids).count() == 120
    assert PeriodicTask.objects.filter(hubsched_group__in=ids).count() == 39  # not the on-change one
    for group in Group.objects.filter(pk__in=ids).exclude(trigger="on_change"):
        assert_schedule_right(group)
    assert PeriodicTasks.last_change() != mark  # beat's change mark moved
    specs = {s.id: s for s in group_specs(ids=ids)}
    assert all(s.active for s in specs.values()) and specs[ids[2]].period == 0.5


def test_the_beat_schedulers_source_follows_bulk_create_disable_and_delete(hub, integrator):
    from groups.scheduler.engine import Engine
    from groups.scheduler.source import GroupSource

    engine = Engine(publish=lambda *args: None)
    source = GroupSource(engine)
    assert source.load() == 0
    ids = post(integrator, "/api/v1/groups/bulk", {"groups": bulk_items(hub, 20)}).json()["ids"]
    source.poll()
    assert sorted(engine.specs) == sorted(ids) and all(spec.active for spec in engine.specs.values())
    post(integrator, "/api/v1/groups/bulk/disable", {"ids": ids[:5]})
    source.poll()
    assert [engine.specs[i].active for i in ids] == [False] * 5 + [True] * 15
    post(integrator, "/api/v1/groups/bulk/delete", {"ids": ids[10:]})
    source.poll()
    assert sorted(engine.specs) == sorted(ids[:10])


def test_a_bulk_create_with_one_bad_group_writes_nothing_and_names_the_item(hub, integrator):
    items = bulk_items(hub, 12)
    items[7]["keys"][2] = {"entity": "plant/nowhere", "key": "flow"}
    items[9]["name"] = items[3]["name"]  # the same name twice in the request
    error = assert_error(post(integrator, "/api/v1/groups/bulk", {"groups": items}), 422, "invalid")
    assert error["details"] == [
        {"path": "groups[7].keys[2].entity", "message": "plant/nowhere.flow names no entity of this hub"},
        {"path": "groups[9].name", "message": "Group with this Hub and Name already exists."},
    ]
    assert not Group.objects.exists() and not GroupKey.objects.exists() and not PeriodicTask.objects.exists()
    items = bulk_items(hub, 3)
    items[1]["extra"] = 1
    error = assert_error(post(integrator, "/api/v1/groups/bulk", {"groups": items}), 422)
    assert any(d["path"] == "groups[1].extra" for d in error["details"]), error


def test_a_thousand_groups_of_ten_keys_go_in_one_request(hub, integrator):
    items = bulk_items(hub, 1000, keys=10)
    made = post(integrator, "/api/v1/groups/bulk", {"groups": items})
    assert made.status_code == 201, made.content[:500]
    assert Group.objects.count() == 1000 and GroupKey.objects.count() == 10_000
    assert PeriodicTask.objects.filter(hubsched_group__isnull=False, enabled=True).count() == 1000
    assert_error(post(integrator, "/api/v1/groups/bulk", {"groups": bulk_items(hub, 1001, keys=1)}), 413, "too_large")


def test_a_bulk_create_over_the_limit_is_refused(hub, integrator, monkeypatch):
    from groups import services

    monkeypatch.setattr(services, "GROUPS_BULK_MAX", 5)
    assert_error(post(integrator, "/api/v1/groups/bulk", {"groups": bulk_items(hub, 6)}), 413, "too_large")
    assert post(integrator, "/api/v1/groups/bulk", {"groups": bulk_items(hub, 5)}).status_code == 201


def test_bulk_create_sees_wide_tables_shared_within_the_request(hub, integrator):
    Sink.objects.create(project=hub.project, name="wide", url="sqlite:///:memory:", layout="wide", table="t")
    items = bulk_items(hub, 2, keys=1)
    items[0]["name"], items[1]["name"] = "a-b", "a_b"  # one wide table name
    error = assert_error(post(integrator, "/api/v1/groups/bulk", {"groups": items}), 422)
    assert [d["path"] for d in error["details"]] == ["groups[1].name"]
    assert "wide table" in error["details"][0]["message"]


def test_bulk_disable_and_enable_by_filter_and_by_ids_keep_the_schedules_right(hub, integrator):
    hub_b = Hub.objects.create(project=hub.project, name="hub-b", url="ws://127.0.0.1:1/")
    ids = post(integrator, "/api/v1/groups/bulk", {"groups": bulk_items(hub, 10) + bulk_items(hub_b, 5)}).json()["ids"]
    mark = PeriodicTasks.last_change()
    done = post(integrator, "/api/v1/groups/bulk/disable", {"filter": {"hub": hub.pk}})
    assert done.json() == {"matched": 10, "changed": 10}
    assert PeriodicTasks.last_change() != mark
    tasks = dict(PeriodicTask.objects.filter(hubsched_group__in=ids).values_list("hubsched_group", "enabled"))
    assert [tasks[i] for i in ids] == [False] * 10 + [True] * 5
    specs = {s.id: s.active for s in group_specs(ids=ids)}
    assert [specs[i] for i in ids] == [False] * 10 + [True] * 5
    for group in Group.objects.filter(pk__in=ids[:3] + ids[-2:]):
        assert_schedule_right(group)
    again = post(integrator, "/api/v1/groups/bulk/enable", {"ids": ids[:4] + [999999]})
    assert again.json() == {"matched": 4, "changed": 4}
    assert list(Group.objects.filter(enabled=True, hub=hub).order_by("pk").values_list("pk", flat=True)) == ids[:4]
    Hub.objects.filter(pk=hub.pk).update(enabled=False)  # the hub off: its groups' entries stay off when enabled
    post(integrator, "/api/v1/groups/bulk/enable", {"filter": {}})
    assert not PeriodicTask.objects.get(hubsched_group=ids[5]).enabled
    assert PeriodicTask.objects.get(hubsched_group=ids[-1]).enabled


def test_bulk_delete_removes_groups_and_their_schedules(hub, integrator):
    ids = post(integrator, "/api/v1/groups/bulk", {"groups": bulk_items(hub, 8)}).json()["ids"]
    done = post(integrator, "/api/v1/groups/bulk/delete", {"filter": {"search": "g000"}})
    assert done.json() == {"matched": 8, "changed": 8}
    assert not Group.objects.exists() and not PeriodicTask.objects.filter(hubsched_group__isnull=False).exists()
    assert not PeriodicTask.objects.filter(name__startswith="hubsched group").exists()
    assert ids


def test_a_bulk_selection_needs_ids_or_a_filter_and_the_permission(hub, integrator):
    assert_error(post(integrator, "/api/v1/groups/bulk/disable", {}), 422)
    assert_error(post(integrator, "/api/v1/groups/bulk/disable", {"ids": [1], "filter": {}}), 422)
    viewer = token_client(role="viewer")
    assert "groups.enable_group" in assert_error(post(viewer, "/api/v1/groups/bulk/disable", {"ids": []}), 403)["message"]
    assert "groups.delete_group" in assert_error(post(token_client(role="operator"), "/api/v1/groups/bulk/delete",
                                                      {"ids": []}), 403)["message"]
    assert "groups.add_group" in assert_error(post(viewer, "/api/v1/groups/bulk", {"groups": []}), 403)["message"]
    assert_error(Client().post("/api/v1/groups/bulk/enable", {"ids": []}, content_type="application/json"), 401)


# --- actions -------------------------------------------------------------------------------------------------------


def test_enable_and_disable_switch_one_group_and_its_schedule(hub, integrator):
    group_id = post(integrator, "/api/v1/groups", body(hub)).json()["id"]
    operator = token_client(role="operator")
    off = post(operator, f"/api/v1/groups/{group_id}/disable", {})
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert not Group.objects.get(pk=group_id).periodic_task.enabled
    on = post(operator, f"/api/v1/groups/{group_id}/enable", {})
    assert on.json()["enabled"] is True and Group.objects.get(pk=group_id).periodic_task.enabled
    assert_error(post(token_client(role="viewer"), f"/api/v1/groups/{group_id}/disable", {}), 403)
    assert_error(post(operator, "/api/v1/groups/999999/enable", {}), 404)


def test_run_now_queues_one_execution(hub, integrator, django_capture_on_commit_callbacks):
    group_id = post(integrator, "/api/v1/groups", body(hub, enabled=False)).json()["id"]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        queued = post(token_client(role="operator"), f"/api/v1/groups/{group_id}/run", {})
    assert queued.status_code == 202 and queued.json() == {"queued": 1}
    assert len(callbacks) == 1  # group_run.delay(group_id) once the request's transaction commits
    assert "groups.run_group" in assert_error(post(token_client(role="viewer"), f"/api/v1/groups/{group_id}/run", {}), 403)["message"]
    assert_error(post(token_client(role="operator"), "/api/v1/groups/999999/run", {}), 404)


def test_kill_with_nothing_running_answers_409_and_the_old_path_is_its_alias(hub, integrator, monkeypatch):
    monkeypatch.setattr(execution, "KILL_PICKUP_S", 0.2)
    group_id = post(integrator, "/api/v1/groups", body(hub)).json()["id"]
    operator = token_client(role="operator")
    error = assert_error(post(operator, f"/api/v1/groups/{group_id}/kill", {}), 409, "conflict")
    assert error["message"] == f"nothing was running: no worker was executing group {group_id}"
    old = post(operator, f"/api/groups/{group_id}/kill", {})
    assert assert_error(old, 409, "conflict") == error
    assert old["Deprecation"] == "true"
    assert old["Link"] == f'</api/v1/groups/{group_id}/kill>; rel="successor-version"'
    assert KillRequest.objects.filter(group_id=group_id).count() == 2
    tick = datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat().replace("+", "%2B")
    assert_error(post(operator, f"/api/v1/groups/{group_id}/kill?scheduled_for={tick}", {}), 409)
    assert_error(post(operator, f"/api/v1/groups/{group_id}/kill?scheduled_for=2026-01-01T00:00:00", {}), 422)
    assert_error(post(operator, f"/api/v1/groups/{group_id}/kill?scheduled_for=soon", {}), 422)
    assert_error(post(operator, "/api/v1/groups/999999/kill", {}), 404)
    assert "groups.kill_group" in assert_error(post(token_client(role="viewer"), f"/api/v1/groups/{group_id}/kill", {}), 403)["message"]
    assert_error(Client().post(f"/api/groups/{group_id}/kill"), 401)
