"""The projects API: GET /api/projects/<id>/export and POST /api/projects/import, by permission (hubsched/roles.py)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group as AuthGroup
from django.test import Client

from hubs.models import Hub, Project
from hubs.services import project_import
from hubs.tests.test_project_document import KEY_A, sample_document

pytestmark = pytest.mark.django_db


def role_client(role: str, *, username: str | None = None, **client_options) -> Client:
    user = get_user_model().objects.create_user(username or role, password="pw-staff-123", is_staff=True)
    user.groups.add(AuthGroup.objects.get(name=role))
    client = Client(**client_options)
    client.force_login(user)
    return client


@pytest.fixture
def staff_client():
    """An integrator: exports without secrets, imports and replaces."""
    return role_client("integrator")


@pytest.fixture
def project():
    return project_import(raw=json.dumps(sample_document())).project


def post_document(client, body, query=""):
    return client.post(f"/api/projects/import{query}", data=body, content_type="application/json")


def test_export_returns_the_document_without_secrets(staff_client, project):
    response = staff_client.get(f"/api/projects/{project.pk}/export")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert 'filename="plant.json"' in response["Content-Disposition"]
    doc = json.loads(response.content)
    assert doc["format"] == "hubsched.project/1" and doc["hubs"][0]["api_key"] == "${HUB_HUB_A_KEY}"
    assert KEY_A.encode() not in response.content


def test_export_includes_secrets_when_an_admin_asks(project):
    response = role_client("admin").get(f"/api/projects/{project.pk}/export?include_secrets=1")
    assert json.loads(response.content)["hubs"][0]["api_key"] == KEY_A


def test_export_refuses_secrets_to_an_integrator_rather_than_leave_them_out(staff_client, project):
    response = staff_client.get(f"/api/projects/{project.pk}/export?include_secrets=1")
    assert response.status_code == 403 and response.json() == {"errors": ["permission required: hubs.export_secrets"]}


def test_export_of_an_unknown_project_is_404(staff_client):
    assert staff_client.get("/api/projects/999/export").status_code == 404


def test_import_creates_the_project_and_answers_201(staff_client):
    response = post_document(staff_client, json.dumps(sample_document()))
    assert response.status_code == 201
    body = response.json()
    assert body["created"] is True and Project.objects.get(pk=body["id"]).name == "plant"


def test_import_needs_the_csrf_token_with_the_session():
    client = role_client("integrator", username="bot", enforce_csrf_checks=True)
    assert post_document(client, json.dumps(sample_document())).status_code == 403
    assert not Project.objects.exists()
    client.get("/admin/")  # an admin page sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post("/api/projects/import", data=json.dumps(sample_document()), content_type="application/json",
                           HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201


def test_a_bad_document_is_400_with_every_error_and_changes_nothing(staff_client, project):
    doc = sample_document()
    doc["description"] = "should not land"
    doc["hubs"][1]["groups"][0]["period"] = 0
    doc["hubs"][0]["colour"] = "red"
    response = post_document(staff_client, json.dumps(doc), "?replace=1")
    assert response.status_code == 400
    assert response.json() == {"errors": ["hubs[0].colour: unknown field", "hubs[1].groups[0].period: must be greater than 0"]}
    assert Project.objects.get().description == "Pumps and boiler"


def test_import_of_an_existing_project_needs_replace(staff_client, project):
    response = post_document(staff_client, json.dumps(sample_document()))
    assert response.status_code == 400
    assert "already exists" in response.json()["errors"][0]
    doc = sample_document()
    doc["hubs"][0]["timeout"] = 9.0
    response = post_document(staff_client, json.dumps(doc), "?replace=1")
    assert response.status_code == 201 and response.json() == {"id": project.pk, "name": "plant", "created": False}
    assert Hub.objects.get(name="hub-a").timeout == 9.0


def test_import_of_not_json_is_400(staff_client):
    response = post_document(staff_client, "not json")
    assert response.status_code == 400 and response.json()["errors"][0].startswith("document: not JSON")


def test_a_document_past_the_size_limit_is_400(staff_client, settings):
    settings.HUBSCHED_PROJECT_DOCUMENT_MAX_BYTES = 1000
    doc = sample_document()
    doc["description"] = "x" * 5000
    response = post_document(staff_client, json.dumps(doc))
    assert response.status_code == 400
    assert response.json()["errors"] == ["document: 1001 bytes is larger than the limit of 1000 bytes"]
    assert not Project.objects.exists()


def test_a_document_larger_than_djangos_upload_limit_is_still_read(staff_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    assert post_document(staff_client, json.dumps(sample_document())).status_code == 201


@pytest.mark.parametrize("method, url", [("get", "/api/projects/1/export"), ("post", "/api/projects/import")])
def test_anonymous_callers_get_401_and_users_without_the_permission_403(client, project, method, url):
    assert getattr(client, method)(url).status_code == 401
    for username, staff in (("plain", False), ("staff", True)):
        user = get_user_model().objects.create_user(username, password="pw-plain-123", is_staff=staff)
        client.force_login(user)
        response = getattr(client, method)(url)
        assert response.status_code == 403 and response.json()["errors"][0].startswith("permission required: hubs.")


def test_export_answers_only_get_and_import_only_post(staff_client, project):
    assert staff_client.post(f"/api/projects/{project.pk}/export").status_code == 405
    assert staff_client.get("/api/projects/import").status_code == 405
