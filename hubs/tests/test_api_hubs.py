"""The hubs API: /api/v1/hubs and /api/v1/projects/<id>/hubs (list, get, create, change, delete; the key write-only),
the actions (enable, disable, test connection, sync entities with a dry run) against real reference hubs, and
the entities and parameters of a hub (read)."""

from __future__ import annotations

import json
import time

import pytest
from django.test import Client

from api.testing import assert_error, token_client, user_with
from groups.models import Group
from hubs.client import hub_clients_close_all
from hubs.hubsim.faults import unreachable_url
from hubs.hubsim.server import serve_handler_in_thread, serve_in_thread
from hubs.hubsim.signals import format_ts
from hubs.hubsim.tree import demo_tree, walk
from hubs.models import Entity, Hub, Parameter, Project, RedundancySet
from hubs.services import hub_entities_sync

pytestmark = pytest.mark.django_db

KEY = "api-hub-test-key"
V1 = "/api/v1"


@pytest.fixture
def live_hub():
    with serve_in_thread(key=KEY, name="hub-x") as running:
        yield running
    hub_clients_close_all()


@pytest.fixture
def project():
    return Project.objects.create(name="plant")


@pytest.fixture
def hub(project, live_hub):
    return Hub.objects.create(project=project, name="hub-x", url=live_hub.url, api_key=KEY, timeout=2.0)


@pytest.fixture
def offline_hub(project):
    """A hub row whose address nothing listens on (for the endpoints that never call the hub)."""
    return Hub.objects.create(project=project, name="offline", url="ws://127.0.0.1:9/connect", api_key=KEY)


def post(client, url, body=None):
    return client.post(url, json.dumps(body) if body is not None else None, content_type="application/json")


def patch(client, url, body):
    return client.patch(url, json.dumps(body), content_type="application/json")


def paths(error: dict) -> list[str]:
    return [d["path"] for d in error["details"]]


def demo_counts() -> tuple[int, int]:
    entities = list(walk(demo_tree("hub-x")))
    return len(entities), sum(len(e["params"]) for e, _ in entities)


# --- list, get ---------------------------------------------------------------------------------------------


def test_hubs_are_listed_flat_and_by_project_with_filters_and_pages_and_never_their_key(project, offline_hub):
    other = Project.objects.create(name="other")
    Hub.objects.create(project=other, name="alpha", url="ws://10.0.0.1/connect", enabled=False)
    Hub.objects.create(project=project, name="beta", url="ws://10.0.0.2/connect")
    client = token_client(role="viewer")
    every = client.get(f"{V1}/hubs")
    assert every.status_code == 200, every.content
    assert [(h["project_name"], h["name"]) for h in every.json()["items"]] == [
        ("other", "alpha"), ("plant", "beta"), ("plant", "offline")]
    assert KEY.encode() not in every.content and "api_key" not in every.json()["items"][0]
    assert [h["has_key"] for h in every.json()["items"]] == [False, False, True]
    assert [h["name"] for h in client.get(f"{V1}/hubs?project={other.pk}").json()["items"]] == ["alpha"]
    assert [h["name"] for h in client.get(f"{V1}/hubs?enabled=false").json()["items"]] == ["alpha"]
    assert [h["name"] for h in client.get(f"{V1}/hubs?search=OFF").json()["items"]] == ["offline"]
    under = client.get(f"{V1}/projects/{project.pk}/hubs?limit=1&offset=1").json()
    assert under["count"] == 2 and [h["name"] for h in under["items"]] == ["offline"]
    assert_error(client.get(f"{V1}/projects/99999/hubs"), 404, "not_found")
    assert_error(client.get(f"{V1}/hubs?enabled=maybe"), 422, "invalid")


def test_a_hub_is_got_with_its_counts_and_an_unknown_one_is_404(offline_hub):
    Group.objects.create(hub=offline_hub, name="g", period=5)
    Entity.objects.create(hub=offline_hub, path="plant", name="Plant")
    client = token_client(role="viewer")
    got = client.get(f"{V1}/hubs/{offline_hub.pk}").json()
    assert (got["name"], got["project"], got["has_key"], got["entity_count"], got["group_count"]) == (
        "offline", offline_hub.project_id, True, 1, 1)
    assert got["has_tls_client_key"] is False and got["tls_insecure"] is False
    assert_error(client.get(f"{V1}/hubs/99999"), 404, "not_found")


def test_the_schema_has_no_readable_secret():
    schema = token_client(role="viewer").get(f"{V1}/openapi.json").json()
    hub_out = schema["components"]["schemas"]["HubOut"]["properties"]
    assert {"has_key", "has_tls_client_key"} <= set(hub_out) and not {"api_key", "tls_client_key"} & set(hub_out)


# --- create, change, delete --------------------------------------------------------------------------------


def test_a_hub_is_created_with_its_key_stored_but_not_answered(project):
    client = token_client(role="integrator")
    made = post(client, f"{V1}/projects/{project.pk}/hubs",
                {"name": "hub-n", "url": "ws://10.10.20.8/connect", "api_key": "n-secret", "timeout": 3})
    assert made.status_code == 201, made.content
    assert made.json()["has_key"] is True and made.json()["timeout"] == 3.0 and made.json()["enabled"] is True
    assert b"n-secret" not in made.content
    assert Hub.objects.get(name="hub-n").api_key == "n-secret"


def test_a_bad_hub_is_422_at_each_field_by_the_models_rules_and_nothing_is_made(project):
    client = token_client(role="integrator")
    url = f"{V1}/projects/{project.pk}/hubs"
    bad = assert_error(post(client, url, {"name": "h", "url": "http://x", "timeout": 0,
                                          "tls_client_key": "-----BEGIN PRIVATE KEY-----not-a-key"}), 422, "invalid")
    assert sorted(paths(bad)) == ["timeout", "tls_client_cert", "tls_client_key", "url"]
    assert b"not-a-key" not in post(client, url, {"name": "h", "url": "ws://x/c", "tls_client_key": "not-a-key"}).content
    assert sorted(paths(assert_error(post(client, url, {"name": "h", "colour": "red"}), 422))) == ["colour", "url"]
    infinite = client.post(url, '{"name": "h", "url": "ws://x/c", "timeout": 1e999}', content_type="application/json")
    assert paths(assert_error(infinite, 422)) == ["timeout"]
    assert paths(assert_error(post(client, url, {"name": "h", "url": "ws://x/c", "redundancy_set": 99999}), 422)) == [
        "redundancy_set"]
    elsewhere = RedundancySet.objects.create(project=Project.objects.create(name="q"), name="pair")
    across = assert_error(post(client, url, {"name": "h", "url": "ws://x/c", "redundancy_set": elsewhere.pk}), 422)
    assert across["details"] == [{"path": "redundancy_set", "message": "must be a redundancy set of the hub's own project"}]
    assert not Hub.objects.exists()
    Hub.objects.create(project=project, name="h", url="ws://x/c")
    taken = assert_error(post(client, url, {"name": "h", "url": "ws://x/c"}), 422)
    assert "already exists" in taken["details"][0]["message"]
    assert_error(post(client, f"{V1}/projects/99999/hubs", {"name": "h", "url": "ws://x/c"}), 404)


def test_a_change_keeps_a_key_left_out_sets_a_new_one_and_clears_one_sent_empty(offline_hub):
    client = token_client(role="integrator")
    url = f"{V1}/hubs/{offline_hub.pk}"
    kept = patch(client, url, {"timeout": 7.5})
    assert kept.status_code == 200, kept.content
    assert kept.json()["timeout"] == 7.5 and kept.json()["has_key"] is True
    assert Hub.objects.get().api_key == KEY
    assert patch(client, url, {"api_key": "newer"}).json()["has_key"] is True and Hub.objects.get().api_key == "newer"
    assert patch(client, url, {"api_key": ""}).json()["has_key"] is False and Hub.objects.get().api_key == ""
    refused = assert_error(patch(client, url, {"url": "tcp://x", "timeout": 1.0}), 422)
    assert paths(refused) == ["url"] and Hub.objects.get().timeout == 7.5
    assert paths(assert_error(patch(client, url, {"timeout": None}), 422)) == ["timeout"]
    assert_error(patch(client, f"{V1}/hubs/99999", {"timeout": 1.0}), 404)


def test_sending_enabled_needs_the_enable_permission_besides(project, offline_hub):
    builder = token_client(user_with(perms=("hubs.add_hub", "hubs.change_hub")))
    assert "hubs.enable_hub" in assert_error(patch(builder, f"{V1}/hubs/{offline_hub.pk}", {"enabled": False}), 403)["message"]
    assert "hubs.enable_hub" in assert_error(post(builder, f"{V1}/projects/{project.pk}/hubs",
                                                  {"name": "n", "url": "ws://x/c", "enabled": False}), 403)["message"]
    assert Hub.objects.get().enabled is True
    assert patch(builder, f"{V1}/hubs/{offline_hub.pk}", {"timeout": 1.0}).status_code == 200


def test_delete_answers_what_went_with_the_hub(offline_hub):
    Group.objects.create(hub=offline_hub, name="g1", period=5)
    Group.objects.create(hub=offline_hub, name="g2", period=5)
    root = Entity.objects.create(hub=offline_hub, path="plant", name="Plant")
    Parameter.objects.create(entity=root, key="p1")
    client = token_client(role="integrator")
    gone = client.delete(f"{V1}/hubs/{offline_hub.pk}")
    assert gone.status_code == 200, gone.content
    body = gone.json()
    assert (body["name"], body["hubs"], body["groups"]) == ("offline", 1, 2)
    assert body["deleted"]["hubs.entity"] == 1 and body["deleted"]["hubs.parameter"] == 1
    assert not Hub.objects.exists() and not Group.objects.exists() and Project.objects.exists()
    assert_error(client.delete(f"{V1}/hubs/{offline_hub.pk}"), 404)


# --- enable, disable ---------------------------------------------------------------------------------------


def test_an_operator_disables_and_enables_a_hub_and_a_viewer_cannot(offline_hub):
    operator = token_client(role="operator")
    off = post(operator, f"{V1}/hubs/{offline_hub.pk}/disable")
    assert off.status_code == 200 and off.json()["enabled"] is False and Hub.objects.get().enabled is False
    assert post(operator, f"{V1}/hubs/{offline_hub.pk}/enable").json()["enabled"] is True
    assert "hubs.enable_hub" in assert_error(post(token_client(role="viewer"), f"{V1}/hubs/{offline_hub.pk}/disable"),
                                             403)["message"]
    assert Hub.objects.get().enabled is True
    assert_error(post(operator, f"{V1}/hubs/99999/enable"), 404)


# --- test connection ---------------------------------------------------------------------------------------


def test_a_connection_test_answers_what_get_info_says(hub):
    answer = post(token_client(role="viewer"), f"{V1}/hubs/{hub.pk}/test-connection")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["ok"] is True and body["error"] == ""
    assert (body["hub"], body["protocol"]) == ("hub-x", 1)
    assert {"getInfo", "ping", "getEntities", "getParams", "setEntityParams"} <= set(body["methods"])
    assert body["time"].endswith("Z") and body["round_trip_ms"] > 0 and body["clock_offset_ms"] is not None
    assert body["summary"].startswith("ok: hub 'hub-x', protocol 1")


def test_a_connection_test_measures_the_hubs_clock_offset(project):
    async def an_hour_behind(ws):  # a hub whose clock is one hour slow: getInfo only
        async for message in ws:
            request = json.loads(message)
            await ws.send(json.dumps({"id": request["id"], "result": {
                "hub": "slow-clock", "protocol": 1, "methods": ["getInfo", "ping"], "time": format_ts(time.time() - 3600)}}))

    with serve_handler_in_thread(an_hour_behind) as running:
        hub = Hub.objects.create(project=project, name="slow-clock", url=running.url, timeout=2.0)
        body = post(token_client(role="viewer"), f"{V1}/hubs/{hub.pk}/test-connection").json()
    hub_clients_close_all()
    assert body["ok"] is True and body["methods"] == ["getInfo", "ping"]
    # an hour is 3,600,000 ms; a minute either way covers any round trip
    assert -3_660_000 < body["clock_offset_ms"] < -3_540_000


def test_a_failed_connection_test_says_why_in_words_and_never_the_key(hub, project):
    hub.api_key = "the-wrong-key"
    hub.save()
    client = token_client(role="viewer")
    wrong = post(client, f"{V1}/hubs/{hub.pk}/test-connection")
    assert wrong.status_code == 200
    assert wrong.json()["ok"] is False and "401" in wrong.json()["error"] and b"the-wrong-key" not in wrong.content
    assert wrong.json()["methods"] is None and wrong.json()["round_trip_ms"] is None
    nobody = Hub.objects.create(project=project, name="nobody", url=unreachable_url(), timeout=1.0)
    down = post(client, f"{V1}/hubs/{nobody.pk}/test-connection").json()
    assert down["ok"] is False and down["error"] and down["summary"].startswith("failed: ")


# --- sync entities -----------------------------------------------------------------------------------------


def test_a_dry_run_answers_what_a_sync_would_do_and_changes_nothing(hub):
    entities, params = demo_counts()
    client = token_client(role="integrator")
    dry = post(client, f"{V1}/hubs/{hub.pk}/sync?dry_run=true")
    assert dry.status_code == 200, dry.content
    body = dry.json()
    assert body["dry_run"] is True and len(body["added"]) == entities + params and not body["changed"] + body["removed"]
    assert "plant/line1/pump1" in body["added"] and "plant/line1/pump1.speed_sp" in body["added"]
    assert not Entity.objects.exists() and not Parameter.objects.exists()
    applied = post(client, f"{V1}/hubs/{hub.pk}/sync").json()
    assert applied["dry_run"] is False and applied["added"] == body["added"]
    assert Entity.objects.filter(hub=hub).count() == entities and Parameter.objects.filter(entity__hub=hub).count() == params
    assert post(client, f"{V1}/hubs/{hub.pk}/sync?dry_run=true").json()["summary"] == "0 added, 0 changed, 0 removed"


def test_a_dry_run_shows_what_changed_and_what_would_be_removed_and_leaves_it(hub):
    hub_entities_sync(hub=hub)
    pump = Entity.objects.get(hub=hub, path="plant/line1/pump1")
    pump.name = "renamed here"
    pump.save()
    stale = Entity.objects.create(hub=hub, parent=pump, path="plant/line1/pump1/old", name="old")
    Parameter.objects.filter(entity=pump, key="mode").delete()
    body = post(token_client(role="integrator"), f"{V1}/hubs/{hub.pk}/sync?dry_run=1").json()
    assert (body["added"], body["changed"], body["removed"]) == (
        ["plant/line1/pump1.mode"], ["plant/line1/pump1"], ["plant/line1/pump1/old"])
    assert Entity.objects.get(pk=pump.pk).name == "renamed here" and Entity.objects.filter(pk=stale.pk).exists()
    assert not Parameter.objects.filter(entity=pump, key="mode").exists()


def test_a_sync_of_a_hub_that_cannot_be_read_is_502_and_changes_nothing(hub):
    hub_entities_sync(hub=hub)
    before = Entity.objects.count()
    Hub.objects.filter(pk=hub.pk).update(api_key="")  # no key: the hub answers 401
    hub_clients_close_all()
    error = assert_error(post(token_client(role="integrator"), f"{V1}/hubs/{hub.pk}/sync"), 502, "hub_error")
    assert "nothing changed" in error["message"] and "401" in error["message"]
    assert Entity.objects.count() == before


def test_a_viewer_may_dry_run_a_sync_but_not_apply_it(hub):
    viewer = token_client(role="viewer")
    assert post(viewer, f"{V1}/hubs/{hub.pk}/sync?dry_run=true").status_code == 200
    assert "hubs.change_hub" in assert_error(post(viewer, f"{V1}/hubs/{hub.pk}/sync"), 403)["message"]
    assert not Entity.objects.exists()


# --- entities and parameters -------------------------------------------------------------------------------


@pytest.fixture
def synced(hub):
    hub_entities_sync(hub=hub)
    return hub


def test_entities_are_listed_by_id_searched_filtered_and_paged(synced):
    client = token_client(role="viewer")
    url = f"{V1}/hubs/{synced.pk}/entities"
    every = client.get(url).json()
    assert every["count"] == demo_counts()[0]
    assert [e["path"] for e in every["items"]] == sorted(e["path"] for e in every["items"])
    roots = client.get(url + "?parent=").json()["items"]
    assert [(e["path"], e["parent"], e["depth"]) for e in roots] == [("plant", None, 0)]
    children = client.get(url + "?parent=plant/line1").json()["items"]
    assert {e["path"] for e in children} >= {"plant/line1/pump1", "plant/line1/pump2"}
    assert all(e["parent"] == "plant/line1" for e in children)
    pumps = client.get(url + "?type=pump").json()["items"]
    assert pumps and all(e["type"] == "pump" for e in pumps) and all(e["param_count"] > 0 for e in pumps)
    assert [e["path"] for e in client.get(url + "?path=plant/line1/pump1").json()["items"]] == ["plant/line1/pump1"]
    assert {e["path"] for e in client.get(url + "?search=PUMP2").json()["items"]} >= {"plant/line1/pump2"}
    assert len(client.get(url + "?limit=2").json()["items"]) == 2
    assert_error(client.get(f"{V1}/hubs/99999/entities"), 404)


def test_an_entity_is_got_with_its_parameters_and_only_under_its_own_hub(synced, offline_hub):
    client = token_client(role="viewer")
    pump = Entity.objects.get(hub=synced, path="plant/line1/pump1")
    got = client.get(f"{V1}/hubs/{synced.pk}/entities/{pump.pk}").json()
    assert got["path"] == "plant/line1/pump1" and got["parent"] == "plant/line1"
    speed = next(p for p in got["params"] if p["key"] == "speed_sp")
    assert (speed["entity"], speed["type"], speed["unit"], speed["writable"]) == ("plant/line1/pump1", "number", "rpm", True)
    assert_error(client.get(f"{V1}/hubs/{offline_hub.pk}/entities/{pump.pk}"), 404)
    assert_error(client.get(f"{V1}/hubs/{synced.pk}/entities/99999"), 404)


def test_parameters_are_listed_filtered_and_got(synced, offline_hub):
    client = token_client(role="viewer")
    url = f"{V1}/hubs/{synced.pk}/parameters"
    assert client.get(url).json()["count"] == demo_counts()[1]
    writable = client.get(url + "?writable=true&limit=1000").json()["items"]
    assert writable and all(p["writable"] for p in writable)
    of_pump = client.get(url + "?entity=plant/line1/pump1").json()["items"]
    assert {p["key"] for p in of_pump} >= {"flow", "speed_sp", "mode"} and {p["entity"] for p in of_pump} == {"plant/line1/pump1"}
    assert all(p["type"] == "number" for p in client.get(url + "?type=number&limit=1000").json()["items"])
    assert [p["key"] for p in client.get(url + "?entity=plant/line1/pump1&search=SPEED_").json()["items"]] == ["speed_sp"]
    assert "type" in paths(assert_error(client.get(url + "?type=colour"), 422))
    speed = Parameter.objects.get(entity__hub=synced, entity__path="plant/line1/pump1", key="speed_sp")
    assert client.get(f"{url}/{speed.pk}").json()["key"] == "speed_sp"
    assert_error(client.get(f"{V1}/hubs/{offline_hub.pk}/parameters/{speed.pk}"), 404)


# --- who may: 401, 403, 404 for every endpoint -------------------------------------------------------------

ENDPOINTS = [
    ("get", "/hubs", None, "hubs.view_hub"),
    ("get", "/projects/{project}/hubs", None, "hubs.view_hub"),
    ("post", "/projects/{project}/hubs", {"name": "n", "url": "ws://x/c"}, "hubs.add_hub"),
    ("get", "/hubs/{hub}", None, "hubs.view_hub"),
    ("patch", "/hubs/{hub}", {"timeout": 1.0}, "hubs.change_hub"),
    ("delete", "/hubs/{hub}", None, "hubs.delete_hub"),
    ("post", "/hubs/{hub}/enable", None, "hubs.enable_hub"),
    ("post", "/hubs/{hub}/disable", None, "hubs.enable_hub"),
    ("post", "/hubs/{hub}/test-connection", None, "hubs.view_hub"),
    ("post", "/hubs/{hub}/sync", None, "hubs.change_hub"),
    ("post", "/hubs/{hub}/sync?dry_run=true", None, "hubs.view_hub"),
    ("get", "/hubs/{hub}/entities", None, "hubs.view_entity"),
    ("get", "/hubs/{hub}/entities/{entity}", None, "hubs.view_entity"),
    ("get", "/hubs/{hub}/parameters", None, "hubs.view_parameter"),
    ("get", "/hubs/{hub}/parameters/{parameter}", None, "hubs.view_parameter"),
]


def _call(client, method, url, body):
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, json.dumps(body), content_type="application/json")


@pytest.mark.parametrize("method, url, body, perm", ENDPOINTS)
def test_each_hub_endpoint_is_401_anonymous_403_without_its_permission_and_404_for_an_unknown_id(
        offline_hub, method, url, body, perm):
    entity = Entity.objects.create(hub=offline_hub, path="plant", name="Plant")
    parameter = Parameter.objects.create(entity=entity, key="p1")
    ids = {"project": offline_hub.project_id, "hub": offline_hub.pk, "entity": entity.pk, "parameter": parameter.pk}
    target = V1 + url.format(**ids)
    assert_error(_call(Client(), method, target, body), 401, "not_authenticated")
    error = assert_error(_call(token_client(role=None), method, target, body), 403, "permission_denied")
    assert perm in error["message"]
    assert Hub.objects.filter(pk=offline_hub.pk, enabled=True, timeout=5.0).exists()
    if "{" in url:
        unknown = V1 + url.format(**{name: 99999 for name in ids})
        assert_error(_call(token_client(role="admin"), method, unknown, body), 404, "not_found")


def test_lists_make_the_same_few_queries_however_many_rows(project, django_assert_max_num_queries):
    client = token_client(role="viewer")
    for n in range(30):
        hub = Hub.objects.create(project=project, name=f"h{n:02d}", url="ws://x/c", api_key=KEY)
    parent = None
    for n in range(30):
        parent = Entity.objects.create(hub=hub, parent=parent, path=f"e{n:02d}" if parent is None else f"{parent.path}/e{n:02d}")
        Parameter.objects.create(entity=parent, key="p")
    client.get(f"{V1}/hubs")  # the token's first use writes last_used_at
    for url in (f"{V1}/hubs", f"{V1}/hubs/{hub.pk}/entities", f"{V1}/hubs/{hub.pk}/parameters",
                f"{V1}/projects", f"{V1}/hubs/{hub.pk}/entities/{parent.pk}"):
        with django_assert_max_num_queries(8):
            response = client.get(url)
        assert response.status_code == 200, (url, response.content)
