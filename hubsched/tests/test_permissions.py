"""Nobody in who does not belong: the roles, every API route, admin action and admin page by permission, and CSRF.

Each route and action is tried by an anonymous caller, by a staff user with no permission, by the role
just short of it, and by the role it belongs to.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group as AuthGroup, Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from groups.models import Group
from hubs.models import Hub, Project
from api.testing import user_with
from hubsched.roles import ROLES, project_import_permissions, role_permissions, roles_sync
from scripts_engine.models import DataSource, Script, Sink

pytestmark = pytest.mark.django_db

KEY_A = "s3cr3t-key-for-hub-a"
SINK_PASSWORD = "pg-pa55word"

VIEWER_EXPECTED = {
    "hubs.view_project", "hubs.view_hub", "hubs.view_entity", "hubs.view_parameter",
    "groups.view_group", "groups.view_groupkey", "groups.view_grouprun", "groups.view_groupstats",
    "groups.view_killrequest", "hubs.view_redundancyset", "hubs.view_huboffset", "hubs.view_redundancyevent",
    "scripts_engine.view_script", "scripts_engine.view_sink", "scripts_engine.view_datasource",
    "streams.view_consumeroffset", "streams.view_forwarder", "streams.view_quarantinedexecution", "streams.read_stream",
    # every user keeps their own API tokens (the admin and the API show them only their own)
    "api.view_apitoken", "api.add_apitoken", "api.delete_apitoken",
    "jobs.view_job", "jobs.view_jobrun", "jobs.view_jobstats",
    "alarms.view_alarmrule", "alarms.view_rulestate", "alarms.view_alarm", "alarms.view_alarmevent",
    "alarms.view_notificationroute", "alarms.view_notification", "alarms.view_notificationattempt",
}
OPERATOR_EXPECTED = VIEWER_EXPECTED | {"groups.run_group", "groups.enable_group", "groups.kill_group", "hubs.enable_hub",
                                       "streams.change_quarantinedexecution", "streams.delete_quarantinedexecution",
                                       "jobs.run_job", "jobs.kill_job", "jobs.enable_job",
                                       "alarms.acknowledge_alarm", "alarms.shelve_alarm"}
INTEGRATOR_EXPECTED = OPERATOR_EXPECTED | {
    f"{app}.{action}_{model}"
    for app, model in [("hubs", "project"), ("hubs", "hub"), ("hubs", "entity"), ("hubs", "parameter"), ("groups", "group"),
                       ("groups", "groupkey"), ("scripts_engine", "script"), ("scripts_engine", "sink"),
                       ("scripts_engine", "datasource"), ("hubs", "redundancyset"), ("hubs", "huboffset"), ("jobs", "job"),
                       ("alarms", "alarmrule")]
    for action in ("add", "change", "delete")
} | {"scripts_engine.debug_script", "hubs.write_hub", "alarms.add_notificationroute", "alarms.change_notificationroute",
     "alarms.delete_notificationroute"}


def held(role: str) -> set[str]:
    group = AuthGroup.objects.get(name=role)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


def client_of(user=None, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    if user is not None:
        client.force_login(user)
    return client


def sample_document() -> dict:
    """The smallest document an import takes: what is imported does not matter here, who imports does."""
    return {"format": "hubsched.project/1", "name": "plant", "description": "Pumps and boiler", "time_zone": "UTC",
            "hubs": [], "scripts": [], "sinks": [], "data_sources": []}


@pytest.fixture
def project():
    """A project with a keyed hub, two groups, a sink with a password, one without, a data source."""
    project = Project.objects.create(name="plant", description="Pumps and boiler")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:8765/connect", api_key=KEY_A)
    Group.objects.create(hub=hub, name="pumps", period=5.0)
    Group.objects.create(hub=hub, name="nightly", period=60.0, enabled=False)
    Sink.objects.create(project=project, name="archive", url=f"postgresql+psycopg2://writer:{SINK_PASSWORD}@db/values",
                        layout="wide", table="values_wide")
    Sink.objects.create(project=project, name="local", url="sqlite:///var/values.sqlite3", enabled=False)
    DataSource.objects.create(project=project, name="erp", url="mysql+pymysql://reader@erp/orders")
    return project


# --- the roles -------------------------------------------------------------------------------------------------


def test_migrate_has_set_up_the_four_roles():
    # no roles_sync() call here: the post_migrate receiver ran when the test database was migrated
    assert set(AuthGroup.objects.values_list("name", flat=True)) >= set(ROLES)
    assert held("viewer") == VIEWER_EXPECTED


def test_each_role_holds_exactly_what_it_should():
    assert held("viewer") == VIEWER_EXPECTED
    assert held("operator") == OPERATOR_EXPECTED
    assert held("integrator") == INTEGRATOR_EXPECTED
    every = {
        f"{app}.{codename}"
        for app, codename in Permission.objects.filter(content_type__app_label__in=["hubs", "scripts_engine", "groups", "streams", "api", "jobs", "alarms"])
        .values_list("content_type__app_label", "codename")
    }
    assert held("admin") == every
    assert {"hubs.export_secrets", "hubs.write_hub", "groups.delete_grouprun", "api.manage_apitoken"} <= held("admin")
    assert "api.manage_apitoken" not in held("integrator")
    # a shell job runs a program on the workers: only the admin role makes one
    assert "jobs.shell_job" in held("admin") and "jobs.shell_job" not in held("integrator")
    # secrets and hub writes are not implied by editing
    assert "hubs.export_secrets" not in held("integrator")
    assert "hubs.write_hub" not in held("operator")


def test_roles_sync_is_idempotent_and_takes_away_what_was_added_by_hand():
    before = {role: held(role) for role in ROLES}
    group_ids = dict(AuthGroup.objects.filter(name__in=ROLES).values_list("name", "pk"))
    viewer = AuthGroup.objects.get(name="viewer")
    viewer.permissions.add(Permission.objects.get(codename="export_secrets"))
    AuthGroup.objects.get(name="operator").permissions.remove(Permission.objects.get(codename="run_group"))
    counts = roles_sync()
    assert counts == {role: len(before[role]) for role in ROLES}
    roles_sync()
    assert {role: held(role) for role in ROLES} == before
    assert dict(AuthGroup.objects.filter(name__in=ROLES).values_list("name", "pk")) == group_ids
    assert AuthGroup.objects.filter(name__in=ROLES).count() == 4


def test_roles_sync_creates_the_roles_on_an_empty_database():
    AuthGroup.objects.all().delete()
    Permission.objects.filter(content_type__app_label="hubs").delete()
    roles_sync()
    assert held("admin") >= {"hubs.export_secrets", "hubs.view_project"}
    assert {role: held(role) for role in ROLES} == {role: set(perms) for role, perms in role_permissions().items()}


# --- the HTTP API ----------------------------------------------------------------------------------------------


def test_export_with_secrets_is_refused_to_a_staff_user_without_permissions(project):
    # the attack: a staff account without permissions exported every hub key
    response = client_of(user_with()).get(f"/api/projects/{project.pk}/export?include_secrets=1")
    assert response.status_code == 403 and KEY_A.encode() not in response.content
    assert denied_perms(response) == ["permission required: hubs.view_project", "permission required: hubs.export_secrets"]


def test_export_with_secrets_is_refused_to_a_viewer_never_downgraded(project):
    response = client_of(user_with(role="integrator")).get(f"/api/projects/{project.pk}/export?include_secrets=1")
    assert response.status_code == 403
    assert denied_perms(response) == ["permission required: hubs.export_secrets"]


def test_export_without_secrets_is_a_viewers_and_with_them_an_admins(project):
    viewer = client_of(user_with(role="viewer"))
    response = viewer.get(f"/api/projects/{project.pk}/export")
    assert response.status_code == 200 and KEY_A.encode() not in response.content
    response = client_of(user_with(role="admin")).get(f"/api/projects/{project.pk}/export?include_secrets=1")
    assert response.status_code == 200 and json.loads(response.content)["hubs"][0]["api_key"] == KEY_A


def test_export_of_an_unknown_project_says_401_or_403_before_404():
    assert client_of().get("/api/projects/999/export").status_code == 401
    assert client_of(user_with()).get("/api/projects/999/export").status_code == 403


def test_export_is_401_for_an_anonymous_caller(project):
    response = client_of().get(f"/api/projects/{project.pk}/export?include_secrets=1")
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"


def denied_perms(response) -> list[str]:
    """The permissions a 403 in the API's error shape names, one detail each."""
    return [detail["message"] for detail in response.json()["error"]["details"]]


def import_post(client, doc=None, query="", **extra):
    return client.post(f"/api/projects/import{query}", data=json.dumps(doc or sample_document()),
                       content_type="application/json", **extra)


@pytest.mark.parametrize("role, status", [(None, 403), ("viewer", 403), ("operator", 403), ("integrator", 201)])
def test_import_needs_the_add_permission_of_everything_a_document_holds(role, status):
    response = import_post(client_of(user_with(role=role)))
    assert response.status_code == status
    if status == 403:
        assert "permission required: hubs.add_project" in denied_perms(response)
        assert not Project.objects.exists()


def test_add_project_alone_does_not_import_hubs_scripts_and_sinks():
    response = import_post(client_of(user_with(perms=("hubs.add_project",))))
    assert response.status_code == 403
    assert denied_perms(response) == [f"permission required: {p}" for p in project_import_permissions(replace=False)
                                      if p != "hubs.add_project"]
    assert not Project.objects.exists()


def test_import_is_401_for_an_anonymous_caller():
    assert import_post(client_of()).status_code == 401


def test_import_with_replace_also_needs_change_and_delete(project):
    adder = client_of(user_with(perms=project_import_permissions(replace=False)))
    doc = sample_document()
    doc["description"] = "replaced"
    response = import_post(adder, doc, "?replace=1")
    assert response.status_code == 403
    assert "permission required: hubs.change_project" in denied_perms(response)
    assert "permission required: groups.delete_group" in denied_perms(response)
    assert Project.objects.get().description == "Pumps and boiler"
    assert import_post(client_of(user_with(role="integrator")), doc, "?replace=1").status_code == 201
    assert Project.objects.get().description == "replaced"


@pytest.fixture
def script(project):
    return Script.objects.create(project=project, name="calc", code="p1 = p1 + 1\n")


def debug_post(client, script, body=None, **extra):
    return client.post(f"/api/scripts/{script.pk}/debug", data=json.dumps(body or {"bindings": {"p1": 1}}),
                       content_type="application/json", **extra)


def test_debug_is_401_for_an_anonymous_caller(script):
    response = debug_post(client_of(), script)
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"


@pytest.mark.parametrize("role, status", [(None, 403), ("viewer", 403), ("operator", 403), ("integrator", 200)])
def test_debug_needs_debug_script(role, status, script):
    response = debug_post(client_of(user_with(role=role)), script)
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"]["message"] == "permission required: scripts_engine.debug_script"
    else:
        assert response.json()["result"]["bindings"] == {"p1": 2}


def test_debug_of_a_script_the_user_may_not_see_is_a_404(script):
    response = debug_post(client_of(user_with(perms=("scripts_engine.debug_script",))), script)
    assert response.status_code == 404


@pytest.mark.parametrize("part, perm", [("write_back", "hubs.write_hub"), ("store", "groups.run_group"),
                                        ("live", "groups.view_group")])
def test_each_part_of_a_debug_request_that_writes_or_reads_a_hub_needs_its_permission(part, perm, script):
    everything_but = [p for p in role_permissions()["integrator"] if p != perm]
    user = user_with(perms=tuple(everything_but))
    body = {"bindings": {"p1": 1}, part: True, "group": Group.objects.get(name="pumps").pk}
    response = debug_post(client_of(user), script, body)
    assert response.status_code == 403 and response.json()["error"]["message"] == f"permission required: {perm}"
    assert response.json()["error"]["details"] == [{"path": "", "message": f"permission required: {perm}"}]


def test_an_integrator_gets_past_the_permission_checks_of_write_back_and_store(script):
    # no live group: the service refuses (400), so the request got past every permission
    response = debug_post(client_of(user_with(role="integrator")), script, {"bindings": {"p1": 1}, "write_back": True})
    assert response.status_code == 400 and "live" in response.json()["error"]["message"]


def test_status_needs_a_login_and_view_group(project):
    # the attack: anonymous GET /api/status showed hub errors
    response = client_of().get("/api/status")
    assert response.status_code == 401 and "groups" not in response.json()
    response = client_of(user_with()).get("/api/status")
    assert response.status_code == 403 and response.json()["error"]["message"] == "permission required: groups.view_group"
    response = client_of(user_with(role="viewer")).get("/api/status")
    assert response.status_code == 200 and {g["name"] for g in response.json()["groups"]} >= {"pumps", "nightly"}


# --- CSRF ------------------------------------------------------------------------------------------------------


def csrf_token(client) -> str:
    client.get(reverse("admin:index"))  # an admin page (its logout form) sets the csrftoken cookie, as for a browser
    return client.cookies["csrftoken"].value


def test_a_cross_site_import_without_the_csrf_token_is_refused():
    # the attack: a page on the same site posted a project with the victim's session cookie
    client = client_of(user_with(role="integrator"), csrf=True)
    refused = import_post(client)
    assert refused.status_code == 403
    assert "X-CSRFToken" in refused.json()["error"]["message"]  # the API's error shape, saying what is missing
    assert import_post(client, HTTP_ORIGIN="http://evil.example").status_code == 403
    assert not Project.objects.exists()


def test_an_import_with_the_csrf_token_works():
    client = client_of(user_with(role="integrator"), csrf=True)
    assert import_post(client, HTTP_X_CSRFTOKEN=csrf_token(client)).status_code == 201


def test_a_cross_site_debug_run_without_the_csrf_token_is_refused(script):
    client = client_of(user_with(role="integrator"), csrf=True)
    assert debug_post(client, script).status_code == 403
    token = csrf_token(client)
    assert debug_post(client, script, HTTP_X_CSRFTOKEN=token, HTTP_ORIGIN="http://evil.example").status_code == 403
    assert debug_post(client, script, HTTP_X_CSRFTOKEN=token).status_code == 200


def test_no_view_of_hubsched_is_csrf_exempt():
    from django.urls import get_resolver

    def walk(patterns):
        for pattern in patterns:
            if hasattr(pattern, "url_patterns"):
                yield from walk(pattern.url_patterns)
            else:
                yield pattern.callback

    ours = [view for view in walk(get_resolver().url_patterns)
            if view.__module__.split(".")[0] in ("hubs", "groups", "scripts_engine", "hubsched", "streams", "api", "jobs",
                                                     "alarms")]
    assert ours and not [view for view in ours if getattr(view, "csrf_exempt", False)]


# --- the admin: actions --------------------------------------------------------------------------------------


def changelist(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def action_names(client, model) -> set[str]:
    response = client.get(changelist(model))
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action at all is offered
    return {name for name, _label in form.fields["action"].choices if name} if form else set()


# (model, action, the role just short of it, the role it belongs to)
ACTIONS = [
    (Project, "export_documents", None, "viewer"),
    (Project, "export_documents_with_secrets", "integrator", "admin"),
    (Hub, "test_connection", None, "viewer"),
    (Hub, "sync_entities", "operator", "integrator"),
    (Hub, "enable", "viewer", "operator"),
    (Hub, "disable", "viewer", "operator"),
    (Group, "run_now", "viewer", "operator"),
    (Group, "enable", "viewer", "operator"),
    (Group, "disable", "viewer", "operator"),
    (Sink, "enable", "operator", "integrator"),
    (Sink, "disable", "operator", "integrator"),
]


@pytest.mark.parametrize("model, name, short, role", ACTIONS, ids=lambda v: getattr(v, "__name__", v))
def test_each_admin_action_is_offered_only_to_the_role_it_belongs_to(model, name, short, role, project):
    assert name in action_names(client_of(user_with(role=role)), model)
    if short:
        assert name not in action_names(client_of(user_with(role=short)), model)
    # a staff user without permissions does not even see the list
    assert client_of(user_with()).get(changelist(model)).status_code == 403
    assert client_of().get(changelist(model)).status_code == 302  # to the login page


def post_action(client, model, name, objects):
    return client.post(changelist(model), {"action": name, "_selected_action": [o.pk for o in objects]})


def test_export_with_secrets_posted_by_an_integrator_downloads_nothing(project):
    response = post_action(client_of(user_with(role="integrator")), Project, "export_documents_with_secrets", [project])
    assert response.status_code == 302 and KEY_A.encode() not in response.content
    assert response.get("Content-Type", "").startswith("text/html")
    response = post_action(client_of(user_with(role="admin")), Project, "export_documents_with_secrets", [project])
    assert json.loads(response.content)["hubs"][0]["api_key"] == KEY_A


def test_export_with_secrets_posted_by_a_staff_user_without_permissions_is_403(project):
    response = post_action(client_of(user_with()), Project, "export_documents_with_secrets", [project])
    assert response.status_code == 403 and KEY_A.encode() not in response.content


def test_hub_disable_and_group_run_now_posted_by_a_viewer_change_nothing(project, settings):
    from hubsched.celery import app

    viewer = client_of(user_with(role="viewer"))
    hub = Hub.objects.get(name="hub-a")
    post_action(viewer, Hub, "disable", [hub])
    assert Hub.objects.get(pk=hub.pk).enabled
    pumps = Group.objects.get(name="pumps")
    post_action(viewer, Group, "disable", [pumps])
    assert Group.objects.get(pk=pumps.pk).enabled
    app.conf.task_always_eager = True
    try:
        post_action(viewer, Group, "run_now", [pumps])
    finally:
        app.conf.task_always_eager = False
    assert not pumps.runs.exists()
    post_action(client_of(user_with(role="operator")), Hub, "disable", [hub])
    assert not Hub.objects.get(pk=hub.pk).enabled


def test_sink_enable_posted_by_an_operator_changes_nothing(project):
    local = Sink.objects.get(name="local")
    post_action(client_of(user_with(role="operator")), Sink, "enable", [local])
    assert not Sink.objects.get(pk=local.pk).enabled
    post_action(client_of(user_with(role="integrator")), Sink, "enable", [local])
    assert Sink.objects.get(pk=local.pk).enabled


def test_beat_entry_actions_need_the_beat_change_permission(project):
    from django_celery_beat.models import PeriodicTask

    viewer = user_with(perms=("django_celery_beat.view_periodictask",))
    assert not {"enable_tasks", "disable_tasks", "toggle_tasks"} & action_names(client_of(viewer), PeriodicTask)
    changer = user_with(perms=("django_celery_beat.view_periodictask", "django_celery_beat.change_periodictask"), name="beat")
    assert {"enable_tasks", "disable_tasks", "toggle_tasks"} <= action_names(client_of(changer), PeriodicTask)


# --- the admin: the import page --------------------------------------------------------------------------------


def import_page_post(client, replace=False):
    upload = SimpleUploadedFile("plant.json", json.dumps(sample_document()).encode(), "application/json")
    data = {"document": upload, **({"replace": "on"} if replace else {})}
    return client.post(reverse("admin:hubs_project_import"), data)


def test_the_import_page_sends_an_anonymous_caller_to_the_login():
    response = client_of().get(reverse("admin:hubs_project_import"))
    assert response.status_code == 302 and reverse("admin:login") in response["Location"]


@pytest.mark.parametrize("role", [None, "viewer", "operator"])
def test_the_import_page_is_403_without_add_project(role):
    client = client_of(user_with(role=role))
    assert client.get(reverse("admin:hubs_project_import")).status_code == 403
    assert import_page_post(client).status_code == 403
    assert not Project.objects.exists()


def test_the_import_page_imports_for_an_integrator():
    client = client_of(user_with(role="integrator"))
    assert client.get(reverse("admin:hubs_project_import")).status_code == 200
    assert import_page_post(client).status_code == 302
    assert Project.objects.filter(name="plant").exists()


def test_the_import_page_replaces_only_with_change_and_delete(project):
    client = client_of(user_with(perms=(*project_import_permissions(replace=False), "hubs.view_project")))
    response = import_page_post(client, replace=True)
    assert response.status_code == 200 and "replace: permission required: hubs.change_project" in response.content.decode()
    assert import_page_post(client_of(user_with(role="integrator")), replace=True).status_code == 302


# --- the admin: database URLs are write-only ---------------------------------------------------------------------


def change_page(model, obj) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[obj.pk])


def sink_data(sink, **changes) -> dict:
    data = {"project": sink.project_id, "name": sink.name, "url": sink.url, "layout": sink.layout, "table": sink.table,
            "enabled": "on" if sink.enabled else ""}
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


def test_the_sink_change_page_shows_the_url_masked_and_the_list_too(project):
    client = client_of(user_with(role="integrator"))
    archive = Sink.objects.get(name="archive")
    page = client.get(change_page(Sink, archive)).content.decode()
    assert SINK_PASSWORD not in page and "postgresql+psycopg2://writer:***@db/values" in page
    assert 'name="local_infile"' in page
    listing = client.get(changelist(Sink)).content.decode()
    assert SINK_PASSWORD not in listing and "writer:***@db" in listing


def test_a_sink_url_submitted_with_the_mask_keeps_the_stored_password(project):
    client = client_of(user_with(role="integrator"))
    archive = Sink.objects.get(name="archive")
    response = client.post(change_page(Sink, archive), sink_data(archive, url="postgresql+psycopg2://writer:***@db/other",
                                                                 local_infile="on"))
    assert response.status_code == 302, response.content.decode()[:2000]
    archive.refresh_from_db()
    assert archive.url == f"postgresql+psycopg2://writer:{SINK_PASSWORD}@db/other" and archive.local_infile


def test_a_sink_url_pointed_at_another_host_with_the_mask_is_refused(project):
    client = client_of(user_with(role="integrator"))
    archive = Sink.objects.get(name="archive")
    response = client.post(change_page(Sink, archive), sink_data(archive, url="postgresql+psycopg2://writer:***@evil/values"))
    page = response.content.decode()
    assert response.status_code == 200 and "type the secret again" in page and SINK_PASSWORD not in page
    assert Sink.objects.get(pk=archive.pk).url == f"postgresql+psycopg2://writer:{SINK_PASSWORD}@db/values"


def test_a_new_sink_password_typed_in_full_is_stored_and_never_echoed(project):
    client = client_of(user_with(role="integrator"))
    archive = Sink.objects.get(name="archive")
    # an error elsewhere on the form re-renders it: the password just typed is masked too
    response = client.post(change_page(Sink, archive), sink_data(archive, url="postgresql+psycopg2://writer:n3w-pw@db/values",
                                                                 layout="nonsense"))
    assert response.status_code == 200 and "n3w-pw" not in response.content.decode()
    response = client.post(change_page(Sink, archive), sink_data(archive, url="postgresql+psycopg2://writer:n3w-pw@db/values"))
    assert response.status_code == 302
    assert Sink.objects.get(pk=archive.pk).url == "postgresql+psycopg2://writer:n3w-pw@db/values"


def test_the_data_source_form_masks_its_url_and_shows_writable_and_allow_ddl(project):
    client = client_of(user_with(role="integrator"))
    erp = DataSource.objects.get(name="erp")
    erp.url = "mysql+pymysql://reader:erp-pw@erp/orders"
    erp.save()
    page = client.get(change_page(DataSource, erp)).content.decode()
    assert "erp-pw" not in page and "mysql+pymysql://reader:***@erp/orders" in page
    assert 'name="writable"' in page and 'name="allow_ddl"' in page
    listing = client.get(changelist(DataSource)).content.decode()
    assert "erp-pw" not in listing and "reader:***@erp" in listing
    data = {"project": erp.project_id, "name": "erp", "url": "mysql+pymysql://reader:***@erp/orders", "writable": "on"}
    assert client.post(change_page(DataSource, erp), data).status_code == 302
    erp.refresh_from_db()
    assert erp.url == "mysql+pymysql://reader:erp-pw@erp/orders" and erp.writable and not erp.allow_ddl


def test_a_viewer_sees_the_sink_page_but_cannot_change_it(project):
    client = client_of(user_with(role="viewer"))
    archive = Sink.objects.get(name="archive")
    page = client.get(change_page(Sink, archive)).content.decode()
    assert SINK_PASSWORD not in page
    response = client.post(change_page(Sink, archive), sink_data(archive, url="sqlite:///x"))
    assert response.status_code == 403
    assert Sink.objects.get(pk=archive.pk).url.endswith("@db/values")


def test_a_viewer_never_sees_the_hub_key_nor_a_sink_password_on_view_only_pages(project):
    client = client_of(user_with(role="viewer"))
    hub = Hub.objects.get(name="hub-a")
    page = client.get(change_page(Hub, hub)).content.decode()
    assert KEY_A not in page and "set (never shown)" in page
    page = client.get(change_page(DataSource, DataSource.objects.get(name="erp"))).content.decode()
    assert "mysql+pymysql://***@erp/orders" in page
