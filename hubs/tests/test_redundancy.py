"""Redundancy sets and offsets: the rules (one place for the admin and import), the project document, the admin."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.urls import reverse

from hubs.models import Hub, HubOffset, Project, RedundancyEvent, RedundancySet
from hubs.project_document import ProjectDocumentError
from hubs.services import project_export, project_import
from hubs.tests.test_project_document import sample_document

pytestmark = pytest.mark.django_db


def redundant_document() -> dict:
    doc = sample_document()
    doc["hubs"][0]["offsets"] = [{"entity": "plant/line1/pump1", "key": "flow", "add": -0.5, "factor": 1.02},
                                 {"entity": "", "key": "state", "add": 0.0, "factor": 1.0}]
    doc["redundancy_sets"] = [{"name": "line1", "mode": "master_backup", "failback_after_s": 12.5,
                               "threshold_abs": 0.5, "threshold_percent": None,
                               "key_thresholds": {"flow": {"abs": 0.2}, "pressure": {"abs": None, "percent": 2.5}},
                               "disagree_ticks": 4, "members": ["hub-b", "hub-a"]}]
    return doc


def errors_of(doc: dict) -> list[str]:
    with pytest.raises(ProjectDocumentError) as caught:
        project_import(raw=json.dumps(doc))
    return caught.value.errors


def test_a_set_and_its_offsets_survive_export_and_import_byte_for_byte():
    project = project_import(raw=json.dumps(redundant_document())).project
    members = list(Hub.objects.filter(redundancy_set__name="line1").order_by("redundancy_priority").values_list("name", flat=True))
    assert members == ["hub-b", "hub-a"]  # the master first
    assert HubOffset.objects.get(hub__name="hub-a", key="flow").factor == 1.02
    text = project_export(project=project, include_secrets=True)
    exported = json.loads(text)
    assert exported["redundancy_sets"] == [{"name": "line1", "mode": "master_backup", "failback_after_s": 12.5,
                                            "threshold_abs": 0.5, "threshold_percent": None,
                                            "key_thresholds": {"flow": {"abs": 0.2},
                                                               "pressure": {"abs": None, "percent": 2.5}},
                                            "disagree_ticks": 4, "members": ["hub-b", "hub-a"]}]
    assert exported["hubs"][0]["offsets"][0] == {"entity": "", "key": "state", "add": 0.0, "factor": 1.0}
    project.delete()
    again = project_import(raw=text).project
    assert project_export(project=again, include_secrets=True) == text


def test_replacing_swaps_the_master_and_drops_what_the_document_dropped():
    project_import(raw=json.dumps(redundant_document()))
    doc = redundant_document()
    doc["redundancy_sets"][0]["members"] = ["hub-a", "hub-b"]
    doc["hubs"][0]["offsets"] = doc["hubs"][0]["offsets"][:1]
    project_import(raw=json.dumps(doc), replace=True)
    assert dict(Hub.objects.values_list("name", "redundancy_priority")) == {"hub-a": 0, "hub-b": 1}
    assert list(HubOffset.objects.values_list("key", flat=True)) == ["flow"]
    doc.pop("redundancy_sets")
    project_import(raw=json.dumps(doc), replace=True)
    assert not RedundancySet.objects.exists()
    assert set(Hub.objects.values_list("redundancy_set", "redundancy_priority")) == {(None, 0)}


def test_the_document_says_what_is_wrong_and_where():
    doc = redundant_document()
    doc["hubs"][0]["offsets"].append({"entity": "plant/line1/pump1", "key": "flow", "factor": 0})
    doc["redundancy_sets"] += [
        {"name": "line1", "members": ["hub-a"]},
        {"name": "other", "failback_after_s": 1, "members": ["hub-z", "hub-b", "hub-b"]},
    ]
    assert errors_of(doc) == [
        'hubs[0].offsets[2].key: duplicate offset of key "flow" on entity "plant/line1/pump1"',
        "hubs[0].offsets[2].factor: must not be 0 (it would erase the value)",
        'redundancy_sets[1].name: duplicate name "line1"',
        "redundancy_sets[2].members[0]: no hub named 'hub-z' in this project",
        "redundancy_sets[2].members[1]: hub 'hub-b' is already a member of redundancy set 'line1'",
        "redundancy_sets[2].members[2]: hub 'hub-b' is a member twice",
    ]
    assert not Project.objects.exists()


def test_the_schema_refuses_a_set_without_members_and_an_unknown_mode():
    doc = redundant_document()
    doc["redundancy_sets"][0].update(members=[], mode="hot")
    assert errors_of(doc) == [
        'redundancy_sets[0].members: must hold at least 1 item',
        'redundancy_sets[0].mode: must be one of "master_backup", "parallel"',
    ]


def test_the_model_refuses_a_member_of_another_project_and_a_role_taken():
    project_import(raw=json.dumps(redundant_document()))
    hub_a = Hub.objects.get(name="hub-a")
    hub_a.redundancy_priority = 0  # hub-b's: the master
    with pytest.raises(ValidationError) as caught:
        hub_a.full_clean()
    assert caught.value.message_dict["redundancy_priority"] == [
        "priority 0 (the master's) is already hub 'hub-b''s in this set; each member has its own"]
    other = Project.objects.create(name="elsewhere")
    stranger = Hub(project=other, name="x", url="ws://127.0.0.1:1/connect",
                   redundancy_set=RedundancySet.objects.get(name="line1"), redundancy_priority=5)
    with pytest.raises(ValidationError) as caught:
        stranger.full_clean()
    assert caught.value.message_dict["redundancy_set"] == ["must be a redundancy set of the hub's own project"]


def test_an_offset_with_factor_zero_is_refused_and_numbers_only_are_corrected():
    project_import(raw=json.dumps(redundant_document()))
    offset = HubOffset(hub=Hub.objects.get(name="hub-a"), key="p1", factor=0.0)
    with pytest.raises(ValidationError) as caught:
        offset.full_clean()
    assert caught.value.message_dict["factor"] == ["must not be 0 (it would erase the value)"]
    offset.factor, offset.add = 2.0, 1.0
    assert [offset.apply(v) for v in (3, 1.5, True, "7", None)] == [7.0, 4.0, True, "7", None]


@pytest.mark.parametrize("name", ["redundancyset", "huboffset"])
def test_the_admin_lists_need_the_view_permission(client, name):
    project_import(raw=json.dumps(redundant_document()))
    user = get_user_model().objects.create_user("someone", password="pw-someone-123", is_staff=True)
    client.force_login(user)
    page = reverse(f"admin:hubs_{name}_changelist")
    assert client.get(page).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename=f"view_{name}"))
    response = client.get(page)
    assert response.status_code == 200
    assert ("hub-b, hub-a" if name == "redundancyset" else "plant/line1/pump1") in response.content.decode()


def test_the_set_page_shows_its_members_master_first_and_cannot_delete_them(admin_client):
    project_import(raw=json.dumps(redundant_document()))
    rset = RedundancySet.objects.get(name="line1")
    page = admin_client.get(reverse("admin:hubs_redundancyset_change", args=[rset.pk])).content.decode()
    assert page.index("hub-b") < page.index("hub-a", page.index("members"))
    assert "members-0-DELETE" not in page


def test_disagreement_events_are_listed_read_only_for_who_may_view_them(client):
    from datetime import UTC, datetime

    project_import(raw=json.dumps(redundant_document()))
    RedundancyEvent.objects.create(redundancy_set=RedundancySet.objects.get(), master="hub-b", member="hub-a",
                                   entity="plant/line1/pump1", key="flow", master_value=41.5, member_value=47.25,
                                   raised_at=datetime(2026, 11, 20, 10, tzinfo=UTC))
    user = get_user_model().objects.create_user("someone", password="pw-someone-123", is_staff=True)
    client.force_login(user)
    page = reverse("admin:hubs_redundancyevent_changelist")
    assert client.get(page).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_redundancyevent"))
    listing = client.get(page).content.decode()
    assert "47.25" in listing and "41.5" in listing
    event = RedundancyEvent.objects.get()
    assert client.post(reverse("admin:hubs_redundancyevent_change", args=[event.pk]), {"key": "x"}).status_code == 403


def test_per_key_thresholds_are_checked_by_one_rule_in_the_document_and_the_model():
    doc = redundant_document()
    doc["redundancy_sets"][0]["key_thresholds"] = {"flow": {"abs": float("inf")}}
    assert errors_of(doc) == ["redundancy_sets[0].key_thresholds.flow: abs must be a number, 0 or more, or null"]
    project = Project.objects.create(name="plant")
    rset = RedundancySet(project=project, name="line1", key_thresholds={"flow": {}, "speed": {"percent": -1}})
    with pytest.raises(ValidationError) as refused:
        rset.full_clean()
    assert refused.value.message_dict["key_thresholds"] == [
        'flow: must be an object with "abs", "percent" or both', "speed: percent must be a number, 0 or more, or null"]
