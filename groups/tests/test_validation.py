"""One rule, one message: the admin (forms posted as a person would) and project import refuse the same bad
input with the same words (groups/validators.py, hubs/validators.py), and neither writes anything then."""

from __future__ import annotations

import copy
import json
from datetime import date, datetime, time

import pytest
from django import forms
from django.urls import reverse

from groups.models import Group, GroupKey
from hubs.models import Entity, Hub, Parameter, Project
from hubs.project_document import ProjectDocumentError
from hubs.services import project_import
from scripts_engine.models import Script, Sink

pytestmark = pytest.mark.django_db

LONG_KEY = "x" * 61  # its wide column would pass MAX_IDENTIFIER (60)
PUMP1_KEYS = ["flow", "P1", "p1", "p-1", "p_1", "id", "k_id", "tick", "ts", "quality", LONG_KEY]


def document(*, wide: bool = True) -> dict:
    """A valid project: hub-a with a synced tree, hub-b never synced, one group, a script, a (wide) sink."""
    return {
        "format": "hubsched.project/1",
        "name": "plant",
        "hubs": [
            {
                "name": "hub-a",
                "url": "ws://127.0.0.1:8765/connect",
                "entities": [
                    {"id": "plant", "children": [
                        {"id": "plant/pump1", "params": [{"key": key} for key in PUMP1_KEYS]},
                        {"id": "plant/pump2", "params": [{"key": "flow"}]},
                    ]},
                ],
                "groups": [{"name": "pumps", "trigger": "interval", "period": 1.0,
                            "keys": [{"entity": "plant/pump1", "key": "flow"}]}],
            },
            {"name": "hub-b", "url": "wss://hub-b.example/connect", "entities": [], "groups": []},
        ],
        "scripts": [{"name": "double", "code": "flow = flow * 2\n"}],
        "sinks": [{"name": "archive", "url": "sqlite:///var/never-written.sqlite3", "layout": "wide" if wide else "tall",
                   "table": "v"}],
    }


def snapshot() -> dict:
    return {model.__name__: sorted(map(repr, model.objects.values()))
            for model in (Project, Hub, Entity, Parameter, Group, GroupKey, Script, Sink)}


def import_refused(doc: dict) -> list[tuple[str, str]]:
    """The import's errors as (JSON path, message); the database is checked to be unchanged."""
    before = snapshot()
    with pytest.raises(ProjectDocumentError) as caught:
        project_import(raw=json.dumps(doc), replace=True)
    assert snapshot() == before
    return [tuple(error.split(": ", 1)) for error in caught.value.errors]


@pytest.fixture
def plant():
    return project_import(raw=json.dumps(document())).project


def admin_errors(response) -> list[str]:
    """Every error on an admin add/change page: the form's, each inline row's, each inline's own."""
    assert response.status_code == 200, f"not refused: {response.status_code}"
    found = [m for messages in response.context["adminform"].form.errors.values() for m in messages]
    for inline in response.context["inline_admin_formsets"]:
        found += list(inline.formset.non_form_errors())
        found += [m for form in inline.formset.forms for messages in form.errors.values() for m in messages]
    return found


def admin_refused(client, url: str, data: dict) -> list[str]:
    before = snapshot()
    errors = admin_errors(client.post(url, data))
    assert snapshot() == before
    return errors


def page_data(client, url: str) -> dict:
    """What the change page at ``url`` would post back unchanged: its form, its inlines' saved rows."""
    context = client.get(url).context
    data: dict = {}

    def add(form):
        for field in form:
            value, widget = field.value(), field.field.widget
            if isinstance(widget, forms.MultiWidget):
                parts = value if isinstance(value, list) else widget.decompress(value)
                for i, part in enumerate(parts):
                    data[f"{field.html_name}_{i}"] = part.isoformat() if isinstance(part, (date, time, datetime)) else part or ""
            elif isinstance(widget, forms.CheckboxInput):
                if value:
                    data[field.html_name] = "on"
            else:
                data[field.html_name] = "" if value is None else value

    add(context["adminform"].form)
    for inline in context["inline_admin_formsets"]:
        formset = inline.formset
        add(formset.management_form)
        data[f"{formset.prefix}-TOTAL_FORMS"] = len(formset.initial_forms)
        for form in formset.initial_forms:
            add(form)
    return data


def group_form(hub: Hub, *, name: str = "new", keys=(("plant/pump1", "flow", ""),), **fields) -> dict:
    data = {"hub": hub.pk, "name": name, "enabled": "on", "script": "", "trigger": "interval", "period": "1", "offset": "0",
            "expires": "", "cron": "", "run_at_0": "", "run_at_1": "", "deadband": "",
            "keys-TOTAL_FORMS": len(keys), "keys-INITIAL_FORMS": 0}
    for i, (entity, key, alias) in enumerate(keys):
        data.update({f"keys-{i}-position": i, f"keys-{i}-entity": entity, f"keys-{i}-key": key, f"keys-{i}-alias": alias})
    data.update(fields)
    return data


def add_group_doc(doc: dict, *, hub: int = 0, keys=(("plant/pump1", "flow", ""),), **fields) -> dict:
    doc = copy.deepcopy(doc)
    group = {"name": "new", "trigger": "interval", "period": 1.0,
             "keys": [{"entity": e, "key": k, "alias": a} for e, k, a in keys], **fields}
    doc["hubs"][hub]["groups"].append(group)
    return doc


GROUP_ADD = reverse("admin:groups_group_add")
HUB_ADD = reverse("admin:hubs_hub_add")
NEW = "hubs[0].groups[1]"  # where add_group_doc puts the group


def same_message(import_errors: list[tuple[str, str]], path: str, admin: list[str]) -> str:
    """The one import message at ``path``, checked to be among the admin's."""
    messages = [message for at, message in import_errors if at == path]
    assert len(messages) == 1, import_errors
    assert messages[0] in admin, (messages[0], admin)
    return messages[0]


# --- (a) the hub URL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://10.10.20.8/connect", "ws:///connect", "ws://", "wss://hub:notaport/x"])
def test_it_refuses_a_hub_url_that_is_not_ws_or_wss_with_a_host_in_admin_and_import_alike(admin_client, plant, url):
    doc = document()
    doc["hubs"][1]["url"] = url
    refused = import_refused(doc)
    admin = admin_refused(admin_client, HUB_ADD, {
        "project": plant.pk, "name": "hub-c", "url": url, "api_key": "", "timeout": "2", "max_in_flight": "8", "enabled": "on",
        "groups-TOTAL_FORMS": 0, "groups-INITIAL_FORMS": 0})
    message = same_message(refused, "hubs[1].url", admin)
    assert message.startswith("must be a WebSocket URL: ws:// or wss://")


def test_a_hub_url_with_ws_or_wss_and_a_host_is_taken(admin_client, plant):
    response = admin_client.post(HUB_ADD, {
        "project": plant.pk, "name": "hub-c", "url": "WSS://[::1]:9000/connect", "api_key": "", "timeout": "2",
        "max_in_flight": "8", "enabled": "on", "groups-TOTAL_FORMS": 0, "groups-INITIAL_FORMS": 0})
    assert response.status_code == 302, admin_errors(response)


# --- (b) a key the hub does not have -------------------------------------------------------------------------


@pytest.mark.parametrize("entity, key, words", [
    ("plant/pump1", "nope", "plant/pump1.nope names no entity parameter of this hub"),
    ("plant/pump9", "p9", "plant/pump9.p9 names no entity of this hub"),
])
def test_it_refuses_a_group_key_the_synced_hub_lacks_in_admin_and_import_alike(admin_client, plant, entity, key, words):
    refused = import_refused(add_group_doc(document(), keys=[("plant/pump1", "flow", ""), (entity, key, "")]))
    admin = admin_refused(admin_client, GROUP_ADD, group_form(Hub.objects.get(name="hub-a"),
                                                              keys=[("plant/pump1", "flow", ""), (entity, key, "")]))
    assert same_message(refused, f"{NEW}.keys[1]", admin) == words


def test_a_key_of_a_hub_never_synced_is_taken_by_admin_and_import_alike(admin_client, plant):
    # Nothing says what such a hub has: both accept the key; a key it lacks then fails the group's runs.
    project_import(raw=json.dumps(add_group_doc(document(), hub=1, keys=[("any/where", "p9", "")])), replace=True)
    assert GroupKey.objects.filter(group__hub__name="hub-b", entity="any/where", key="p9").exists()
    response = admin_client.post(GROUP_ADD, group_form(Hub.objects.get(name="hub-b"), name="other", keys=[("else/where", "p8", "")]))
    assert response.status_code == 302, admin_errors(response)
    assert GroupKey.objects.filter(group__name="other", entity="else/where", key="p8").exists()


def test_the_standalone_key_admin_refuses_a_key_the_hub_lacks_too(admin_client, plant):
    pumps = Group.objects.get(name="pumps")
    admin = admin_refused(admin_client, reverse("admin:groups_groupkey_add"),
                          {"group": pumps.pk, "entity": "plant/pump1", "key": "nope", "alias": "", "position": 1})
    assert admin == ["plant/pump1.nope names no entity parameter of this hub"]


# --- (c) a group with no keys --------------------------------------------------------------------------------


def test_it_refuses_a_group_without_keys_in_admin_and_import_alike(admin_client, plant):
    refused = import_refused(add_group_doc(document(), keys=[]))
    admin = admin_refused(admin_client, GROUP_ADD, group_form(Hub.objects.get(name="hub-a"), keys=[]))
    assert same_message(refused, f"{NEW}.keys", admin) == "a group needs at least one key (it would read nothing)"


def test_removing_every_key_of_a_saved_group_is_refused(admin_client, plant):
    pumps = Group.objects.get(name="pumps")
    url = reverse("admin:groups_group_change", args=[pumps.pk])
    data = page_data(admin_client, url)
    data["keys-0-DELETE"] = "on"
    assert "a group needs at least one key (it would read nothing)" in admin_refused(admin_client, url, data)


def test_a_group_added_on_the_hub_page_has_no_keys_and_is_refused(admin_client, plant):
    hub = Hub.objects.get(name="hub-a")
    url = reverse("admin:hubs_hub_change", args=[hub.pk])
    data = page_data(admin_client, url)
    data.update({"groups-TOTAL_FORMS": data["groups-TOTAL_FORMS"] + 1, "groups-1-name": "new", "groups-1-trigger": "interval",
                 "groups-1-period": "1", "groups-1-offset": "0", "groups-1-cron": "", "groups-1-run_at_0": "",
                 "groups-1-run_at_1": "", "groups-1-script": "", "groups-1-enabled": "on", "groups-1-hub": hub.pk})
    errors = admin_refused(admin_client, url, data)
    assert any(e.startswith("a group needs at least one key (it would read nothing)") for e in errors), errors


# --- (d) wide layout names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("first, second, column", [
    (("plant/pump1", "P1"), ("plant/pump1", "p1"), "p1"),
    (("plant/pump1", "p-1"), ("plant/pump1", "p_1"), "p_1"),
    (("plant/pump1", "id"), ("plant/pump1", "k_id"), "k_id"),  # id is stored as k_id: that column is taken
    (("plant/pump1", "flow"), ("plant/pump2", "flow"), "flow"),  # the column is the key's, whatever the alias
], ids=["case", "punctuation", "mapped-reserved", "two-entities"])
def test_it_refuses_two_keys_sharing_a_wide_column_in_admin_and_import_alike(admin_client, plant, first, second, column):
    keys = [(*first, "a"), (*second, "b")]
    refused = import_refused(add_group_doc(document(), keys=keys))
    admin = admin_refused(admin_client, GROUP_ADD, group_form(Hub.objects.get(name="hub-a"), keys=keys))
    message = same_message(refused, f"{NEW}.keys[1]", admin)
    assert message.startswith(f"{first[0]}.{first[1]} and {second[0]}.{second[1]} would share the wide column \"{column}\"")


def test_it_refuses_a_key_whose_wide_column_is_too_long_in_admin_and_import_alike(admin_client, plant):
    refused = import_refused(add_group_doc(document(), keys=[("plant/pump1", LONG_KEY, "long")]))
    admin = admin_refused(admin_client, GROUP_ADD, group_form(Hub.objects.get(name="hub-a"), keys=[("plant/pump1", LONG_KEY, "long")]))
    assert "is longer than 60 characters" in same_message(refused, f"{NEW}.keys[0]", admin)


def test_reserved_keys_are_taken_they_are_stored_as_k_columns(admin_client, plant):
    keys = [("plant/pump1", key, "") for key in ("id", "tick", "ts", "quality")]
    project_import(raw=json.dumps(add_group_doc(document(), keys=keys)), replace=True)
    response = admin_client.post(GROUP_ADD, group_form(Hub.objects.get(name="hub-a"), name="other", keys=keys))
    assert response.status_code == 302, admin_errors(response)


def test_the_same_keys_are_taken_when_no_sink_is_wide(admin_client):
    project_import(raw=json.dumps(add_group_doc(document(wide=False), keys=[("plant/pump1", "P1", ""), ("plant/pump1", "p1", "b")])))
    response = admin_client.post(GROUP_ADD, group_form(Hub.objects.get(name="hub-a"), name="other",
                                                       keys=[("plant/pump1", "p-1", ""), ("plant/pump1", "p_1", "")]))
    assert response.status_code == 302, admin_errors(response)


def two_hubs(doc: dict, *, second_groups: list) -> dict:
    """hub a_b with group c, and hub a with ``second_groups``: a_b/c and a/b_c both make table v_a_b_c."""
    doc = copy.deepcopy(doc)
    doc["hubs"] = doc["hubs"][:1] + [
        {"name": "a_b", "url": "ws://10.0.0.1/connect", "groups": [
            {"name": "c", "trigger": "interval", "keys": [{"entity": "e", "key": "p1"}]}]},
        {"name": "a", "url": "ws://10.0.0.2/connect", "groups": second_groups},
    ]
    return doc


TABLE_WORDS = ('group "b_c" of hub "a" would share the wide table "v_a_b_c" of sink "archive" with group "c" of hub "a_b": '
               "the rows of one would be dropped; rename one of them")


def test_it_refuses_two_groups_sharing_a_wide_table_in_admin_and_import_alike(admin_client):
    b_c = {"name": "b_c", "trigger": "interval", "keys": [{"entity": "e", "key": "p1"}]}
    refused = import_refused(two_hubs(document(), second_groups=[b_c]))
    assert not Project.objects.exists()
    project_import(raw=json.dumps(two_hubs(document(), second_groups=[])))
    admin = admin_refused(admin_client, GROUP_ADD, group_form(Hub.objects.get(name="a"), name="b_c", keys=[("e", "p1", "")]))
    assert same_message(refused, "hubs[2].groups[0].name", admin) == TABLE_WORDS


def test_it_refuses_a_hub_rename_that_makes_two_groups_share_a_wide_table(admin_client):
    doc = two_hubs(document(), second_groups=[{"name": "b_c", "trigger": "interval", "keys": [{"entity": "e", "key": "p1"}]}])
    doc["hubs"][1]["name"] = "a_x"
    project_import(raw=json.dumps(doc))
    hub = Hub.objects.get(name="a_x")
    url = reverse("admin:hubs_hub_change", args=[hub.pk])
    data = page_data(admin_client, url)
    data["name"] = "a_b"
    errors = admin_refused(admin_client, url, data)  # on the name (Hub.clean) and on the group's row (Group.clean)
    assert set(errors) == {'group "c" of hub "a_b" would share the wide table "v_a_b_c" of sink "archive" with group "b_c" of hub "a": '
                      "the rows of one would be dropped; rename one of them"}


def test_it_refuses_making_a_sink_wide_while_groups_would_lose_values(admin_client):
    doc = add_group_doc(document(wide=False), keys=[("plant/pump1", "P1", ""), ("plant/pump1", "p1", "b")])
    project = project_import(raw=json.dumps(doc)).project
    sink = Sink.objects.get(project=project)
    url = reverse("admin:scripts_engine_sink_change", args=[sink.pk])
    data = page_data(admin_client, url)
    data["layout"] = "wide"
    errors = admin_refused(admin_client, url, data)
    assert errors == ['group "new" of hub "hub-a": plant/pump1.P1 and plant/pump1.p1 would share the wide column "p1" '
                      "(a wide sink stores one column per parameter key, lower case, other characters as _): "
                      "one value of every execution would be lost"]


# --- the group rules that were there before: same words now ---------------------------------------------------


@pytest.mark.parametrize("fields, form_fields, path, words", [
    ({"trigger": "cron", "cron": ""}, {"trigger": "cron", "cron": ""}, "cron", "a cron trigger needs a cron expression"),
    ({"trigger": "cron", "cron": "*/5 * * * *"}, {"trigger": "cron", "cron": "*/5 * * * *"}, "cron",
     "not a six-field cron expression (seconds first, e.g. */5 * * * * *)"),
    ({"trigger": "once", "run_at": None}, {"trigger": "once"}, "run_at", "a once trigger needs run_at"),
    ({"period": 0.05}, {"period": "0.05"}, "period", "must be at least 0.1 seconds"),
], ids=["cron-missing", "cron-five-fields", "once-without-run-at", "period"])
def test_it_refuses_a_trigger_without_its_fields_in_admin_and_import_alike(admin_client, plant, fields, form_fields, path, words):
    refused = import_refused(add_group_doc(document(), **fields))
    admin = admin_refused(admin_client, GROUP_ADD, group_form(Hub.objects.get(name="hub-a"), **form_fields))
    assert same_message(refused, f"{NEW}.{path}", admin) == words


def test_the_admin_refuses_a_script_of_another_project(admin_client, plant):
    other = Project.objects.create(name="other")
    script = Script.objects.create(project=other, name="theirs", code="")
    admin = admin_refused(admin_client, GROUP_ADD, group_form(Hub.objects.get(name="hub-a"), script=script.pk))
    assert "script 'theirs' belongs to another project than hub 'hub-a'" in admin
