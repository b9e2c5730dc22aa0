"""A hub's TLS settings (CA bundle, client certificate and key, verification): the rules, the project document, the admin."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.urls import reverse

from hubs.models import Hub, Project
from hubs.project_document import ProjectDocumentError
from hubs.project_document.export import hub_tls_key_references
from hubs.services import project_export, project_import
from hubs.validators import TLS_CA_MESSAGE, TLS_KEY_MESSAGE, TLS_KEY_MISMATCH_MESSAGE, hub_tls_problems

from .tls_certs import make_pki

pytestmark = pytest.mark.django_db


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


@pytest.fixture
def hub(pki):
    project = Project.objects.create(name="plant")
    return Hub.objects.create(project=project, name="hub-a", url="wss://127.0.0.1:8765/connect", api_key="k",
                              tls_ca_bundle=pki.ca_pem, tls_client_cert=pki.client_cert_pem,
                              tls_client_key=pki.client_key_pem)


def document(**hub_fields) -> str:
    return json.dumps({"format": "hubsched.project/1", "name": "tls",
                       "hubs": [{"name": "hub-a", "url": "wss://10.0.0.1/connect", **hub_fields}]})


def import_errors(text: str, environ=None) -> list[str]:
    with pytest.raises(ProjectDocumentError) as caught:
        project_import(raw=text, environ=environ or {})
    return caught.value.errors


# -- the rules (hubs/validators.py)

def test_good_settings_and_empty_ones_have_no_problem(pki):
    assert hub_tls_problems(ca_pem=pki.ca_pem, cert_pem=pki.client_cert_pem, key_pem=pki.client_key_pem) == []
    assert hub_tls_problems() == []


def test_pem_that_does_not_parse_is_refused_with_a_clear_message_that_never_quotes_the_key(pki):
    broken_key = pki.client_key_pem.replace("\n", "", 3)[:-40] + "\n-----END PRIVATE KEY-----\n"
    problems = dict(hub_tls_problems(ca_pem="not a certificate", cert_pem=pki.client_cert_pem, key_pem=broken_key))
    assert problems == {"tls_ca_bundle": TLS_CA_MESSAGE, "tls_client_key": TLS_KEY_MESSAGE}
    assert "PEM" in TLS_CA_MESSAGE and broken_key[30:60] not in str(problems)


def test_a_key_that_is_not_the_certificates_key_is_refused(pki):
    assert hub_tls_problems(cert_pem=pki.client_cert_pem, key_pem=pki.server_key_pem) == [
        ("tls_client_key", TLS_KEY_MISMATCH_MESSAGE)]


def test_a_certificate_and_a_key_come_together(pki):
    assert [f for f, _ in hub_tls_problems(cert_pem=pki.client_cert_pem)] == ["tls_client_key"]
    assert [f for f, _ in hub_tls_problems(key_pem=pki.client_key_pem)] == ["tls_client_cert"]


def test_the_model_refuses_bad_pem_on_its_field(hub):
    hub.tls_ca_bundle = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValidationError) as caught:
        hub.full_clean()
    assert caught.value.message_dict["tls_ca_bundle"] == [TLS_CA_MESSAGE]


def test_the_hub_gives_the_client_its_tls_options_and_keeps_the_key_out_of_reprs(hub, pki):
    options = hub.tls_options()
    assert (options.ca_pem, options.cert_pem, options.key_pem, options.verify) == (
        pki.ca_pem, pki.client_cert_pem, pki.client_key_pem, True)
    assert "PRIVATE" not in repr(options) and "PRIVATE" not in repr(hub)
    options.context()  # loads
    hub.tls_verify = False
    assert hub.tls_insecure and not hub.tls_options().verify


def test_the_client_key_is_encrypted_at_rest(hub):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT tls_client_key FROM hubs_hub WHERE id = %s", [hub.pk])
        stored = cursor.fetchone()[0]
    assert stored.startswith("fernet:") and "PRIVATE" not in stored


# -- the project document

def test_export_writes_the_key_as_a_reference_and_the_certificates_in_clear(hub, pki):
    exported = json.loads(project_export(project=hub.project))["hubs"][0]
    assert exported["tls_client_key"] == "${HUB_HUB_A_TLS_KEY}"
    assert (exported["tls_ca_bundle"], exported["tls_client_cert"], exported["tls_verify"]) == (
        pki.ca_pem, pki.client_cert_pem, True)
    with_secrets = json.loads(project_export(project=hub.project, include_secrets=True))["hubs"][0]
    assert with_secrets["tls_client_key"] == pki.client_key_pem


def test_import_reads_the_referenced_key_from_the_environment_and_round_trips(hub, pki):
    text = project_export(project=hub.project)
    hub.project.delete()
    project_import(raw=text, environ={"HUB_HUB_A_KEY": "k", "HUB_HUB_A_TLS_KEY": pki.client_key_pem})
    imported = Hub.objects.get(name="hub-a")
    assert imported.tls_client_key == pki.client_key_pem and imported.tls_ca_bundle == pki.ca_pem
    assert project_export(project=imported.project) == text


def test_import_refuses_another_variable_in_the_key_field(pki):
    errors = import_errors(document(tls_client_cert=pki.client_cert_pem, tls_client_key="${HUB_HUB_A_KEY}"),
                           environ={"HUB_HUB_A_KEY": pki.client_key_pem})
    assert errors == ["hubs[0].tls_client_key: refused reference: this field takes only ${HUB_HUB_A_TLS_KEY}, the TLS "
                      'client key of hub "hub-a"; import reads no other environment variable']


def test_import_refuses_pem_that_does_not_parse_with_the_admins_message(pki):
    errors = import_errors(document(tls_ca_bundle="junk", tls_client_cert=pki.client_cert_pem, tls_client_key="junk"))
    assert errors == [f"hubs[0].tls_ca_bundle: {TLS_CA_MESSAGE}", f"hubs[0].tls_client_key: {TLS_KEY_MESSAGE}"]


def test_import_checks_a_referenced_key_once_it_is_read(pki):
    errors = import_errors(document(tls_client_cert=pki.client_cert_pem, tls_client_key="${HUB_HUB_A_TLS_KEY}"),
                           environ={"HUB_HUB_A_TLS_KEY": pki.server_key_pem})
    assert errors == [f"hubs[0].tls_client_key: {TLS_KEY_MISMATCH_MESSAGE}"]


def test_a_tls_key_variable_never_is_another_hubs_api_key_variable():
    refs = hub_tls_key_references(["a", "a tls"])
    assert refs["a tls"] == "HUB_A_TLS_TLS_KEY"
    assert refs["a"] != "HUB_A_TLS_KEY" and refs["a"].startswith("HUB_A_") and refs["a"].endswith("_TLS_KEY")


# -- the admin

@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    client.force_login(user)
    return client


def change_url(hub: Hub) -> str:
    return reverse("admin:hubs_hub_change", args=[hub.pk])


def form_data(hub: Hub, **changes) -> dict:
    data = {"project": hub.project_id, "name": hub.name, "url": hub.url, "api_key": "", "timeout": 3, "max_in_flight": 8,
            "enabled": "on", "tls_verify": "on", "tls_ca_bundle": hub.tls_ca_bundle,
            "tls_client_cert": hub.tls_client_cert, "tls_client_key": "",
            "groups-TOTAL_FORMS": 0, "groups-INITIAL_FORMS": 0}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_the_admin_never_renders_the_client_key_and_blank_keeps_it(staff, hub, pki):
    page = staff.get(change_url(hub)).content.decode()
    assert "PRIVATE KEY-----\n" not in page and pki.client_key_pem.splitlines()[1] not in page
    assert staff.post(change_url(hub), form_data(hub)).status_code == 302
    hub.refresh_from_db()
    assert hub.tls_client_key == pki.client_key_pem


def test_the_admin_clears_the_client_key_only_with_its_certificate(staff, hub):
    response = staff.post(change_url(hub), form_data(hub, clear_tls_client_key="on"))
    assert "a client certificate needs its client key" in response.content.decode()
    assert staff.post(change_url(hub), form_data(hub, clear_tls_client_key="on", tls_client_cert="")).status_code == 302
    hub.refresh_from_db()
    assert hub.tls_client_key == "" and hub.tls_client_cert == ""


def test_the_admin_refuses_pem_that_does_not_parse(staff, hub):
    response = staff.post(change_url(hub), form_data(hub, tls_ca_bundle="junk"))
    assert response.status_code == 200 and TLS_CA_MESSAGE in response.content.decode()


def test_verification_off_is_loud_in_the_admin(staff, hub):
    response = staff.post(change_url(hub), form_data(hub, tls_verify=None), follow=True)
    assert any("TLS certificate verification is OFF" in str(m) for m in response.context["messages"])
    assert "TLS certificate verification is OFF" in staff.get(change_url(hub)).content.decode()
    assert "NOT VERIFIED" in staff.get(reverse("admin:hubs_hub_changelist")).content.decode()


def test_a_viewer_sees_whether_a_client_key_is_set_never_the_key(client, hub, pki):
    viewer = get_user_model().objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_hub"))
    client.force_login(viewer)
    page = client.get(change_url(hub)).content.decode()
    assert "set (never shown)" in page
    assert pki.client_key_pem.splitlines()[1] not in page
