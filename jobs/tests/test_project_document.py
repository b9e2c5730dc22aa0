"""Jobs in the project document: schema, rules at their JSON paths, upsert by name, round trip, who may import them."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from hubs.models import Project
from hubs.project_document import ProjectDocumentError
from hubs.project_document.importer import document_import_permissions
from hubs.services import project_export, project_import
from hubsched.roles import project_import_permissions
from jobs.models import Job, JobRun, JobRunStatus
from scripts_engine.models import Script

pytestmark = pytest.mark.django_db


def document() -> dict:
    """A project with one job of each kind and trigger; the job fields left out take the model defaults."""
    return {
        "format": "hubsched.project/1", "name": "plant",
        "scripts": [{"name": "tidy", "code": "x = 1\n"}, {"name": "report", "code": "y = 2\n"}],
        "jobs": [
            {"name": "export", "trigger": "cron", "cron": "0 20 2 * * *", "kind": "shell",
             "argv": ["bash", "scripts/export.sh", "--all"], "working_directory": "exports",
             "environment": {"TARGET": "archive"}, "timeout": 600.0, "retries": 2, "overlap": "replace"},
            {"name": "ping", "title": "Tell the ERP", "trigger": "interval", "period": 30.0, "offset": 5.0, "kind": "http",
             "method": "PUT", "url": "https://erp.example.com/hook", "headers": {"X-Source": "hubsched"},
             "body": {"plant": "a", "n": [1, 2]}, "success_codes": "200-299,304", "misfire": "run_late",
             "misfire_grace": 120.0, "enabled": False},
            {"name": "tidy-up", "trigger": "once", "run_at": "2030-01-31T09:00:00+01:00", "kind": "script",
             "script": "tidy", "timeout": None, "output_limit_kib": 128},
        ],
    }


def imported(doc: dict, **kwargs):
    return project_import(raw=json.dumps(doc), **kwargs)


def refusal(doc: dict, **kwargs) -> list[str]:
    with pytest.raises(ProjectDocumentError) as caught:
        imported(doc, **kwargs)
    return caught.value.errors


def test_jobs_are_imported_with_every_field():
    project = imported(document()).project
    export, ping, tidy = Job.objects.filter(project=project).order_by("name")
    assert (export.kind, export.trigger, export.cron, export.argv) == ("shell", "cron", "0 20 2 * * *",
                                                                      ["bash", "scripts/export.sh", "--all"])
    assert (export.environment, export.working_directory, export.timeout, export.retries, export.overlap) == (
        {"TARGET": "archive"}, "exports", 600.0, 2, "replace")
    assert (ping.method, ping.url, ping.headers, ping.body, ping.success_codes) == (
        "PUT", "https://erp.example.com/hook", {"X-Source": "hubsched"}, {"plant": "a", "n": [1, 2]}, "200-299,304")
    assert (ping.title, ping.period, ping.offset, ping.misfire, ping.misfire_grace, ping.enabled) == (
        "Tell the ERP", 30.0, 5.0, "run_late", 120.0, False)
    assert tidy.script == Script.objects.get(project=project, name="tidy")
    assert tidy.run_at == datetime(2030, 1, 31, 8, 0, tzinfo=UTC)
    assert (tidy.timeout, tidy.output_limit_kib, tidy.retry_backoff) == (None, 128, 10.0)


def test_export_import_into_an_empty_database_export_gives_the_same_document():
    first = project_export(project=imported(document()).project)
    assert [job["name"] for job in json.loads(first)["jobs"]] == ["export", "ping", "tidy-up"]
    assert json.loads(first)["jobs"][2]["run_at"] == "2030-01-31T08:00:00Z"
    # jobs first: Job.script is PROTECT, which refuses the project's cascade into its scripts (reported to the lead)
    Job.objects.all().delete()
    Project.objects.all().delete()
    second = project_export(project=project_import(raw=first).project)
    assert second == first


def test_an_unchanged_job_is_not_saved_again_on_replace():
    project = imported(document()).project
    before = dict(Job.objects.filter(project=project).values_list("name", "updated_at"))
    imported(document(), replace=True)
    assert dict(Job.objects.filter(project=project).values_list("name", "updated_at")) == before


BAD = [
    (lambda d: d["jobs"][1].update(kind="shell", argv=[""]), "jobs[1].argv[0]: the program is empty"),
    (lambda d: d["jobs"][0].update(argv=[]), "jobs[0].argv: a shell job needs an argument vector"),
    (lambda d: d["jobs"][0].update(argv=["bash", 3]), "jobs[0].argv[1]: expected a string"),
    (lambda d: d["jobs"][0].update(environment={"1BAD": "x"}), "jobs[0].environment.1BAD: not a variable name"),
    (lambda d: d["jobs"][1].update(url="ftp://erp/hook"), "jobs[1].url: expected an http:// or https:// URL"),
    (lambda d: d["jobs"][1].update(method="BREW"), "jobs[1].method: expected one of GET, POST"),
    (lambda d: d["jobs"][1].update(headers={"Bad Name": "x"}), "jobs[1].headers.Bad Name: not a header name"),
    (lambda d: d["jobs"][1].update(success_codes="600"), "jobs[1].success_codes: expected HTTP status codes"),
    (lambda d: d["jobs"][0].update(cron="every night"), "jobs[0].cron: "),
    (lambda d: d["jobs"][1].update(period=0.01), "jobs[1].period: "),
    (lambda d: d["jobs"][2].update(run_at="tomorrow"), "jobs[2].run_at: must be an RFC 3339 date and time"),
    (lambda d: d["jobs"][2].update(run_at=None), "jobs[2].run_at: "),
    (lambda d: d["jobs"][2].update(script="missing"), 'jobs[2].script: no script named "missing" in this document'),
    (lambda d: d["jobs"][2].update(script=None), "jobs[2].script: a script job needs a script of its project"),
    (lambda d: d["jobs"].append({**d["jobs"][0]}), 'jobs[3].name: duplicate name "export"'),
    (lambda d: d["jobs"][0].update(colour="red"), "jobs[0].colour: unknown field"),
    (lambda d: d["jobs"][0].update(kind="python"), "jobs[0].kind: must be one of"),
    (lambda d: d["jobs"][0].update(trigger="on_change"), "jobs[0].trigger: must be one of"),
    (lambda d: d["jobs"][0].update(retries=21), "jobs[0].retries: must be at most 20"),
    (lambda d: d["jobs"][0].update(timeout=0.0), "jobs[0].timeout: must be at least 0.1"),
    (lambda d: d["jobs"][0].update(output_limit_kib=0), "jobs[0].output_limit_kib: must be at least 1"),
    (lambda d: d["jobs"][0].pop("kind"), "jobs[0].kind: is required"),
]


@pytest.mark.parametrize("change, expected", BAD, ids=[expected.split(":")[0] for _, expected in BAD])
def test_a_bad_job_field_is_refused_at_its_path_and_nothing_is_written(change, expected):
    doc = document()
    change(doc)
    errors = refusal(doc)
    assert any(error.startswith(expected) for error in errors), errors
    assert not Project.objects.exists() and not Job.objects.exists() and not Script.objects.exists()


def test_a_refused_replace_changes_no_job():
    imported(document())
    before = project_export(project=Project.objects.get())
    doc = document()
    doc["jobs"][1]["url"] = "not a url"
    doc["jobs"] = doc["jobs"][1:]  # would delete "export" too
    assert any(e.startswith("jobs[0].url:") for e in refusal(doc, replace=True))
    assert project_export(project=Project.objects.get()) == before


def test_a_replace_updates_kept_jobs_in_place_and_deletes_the_dropped_one_with_its_runs():
    imported(document())
    ping = Job.objects.get(name="ping")
    export = Job.objects.get(name="export")
    JobRun.objects.create(job=ping, scheduled_for=datetime(2026, 1, 1, tzinfo=UTC), status=JobRunStatus.OK)
    JobRun.objects.create(job=export, scheduled_for=datetime(2026, 1, 1, tzinfo=UTC), status=JobRunStatus.RUNNING)
    doc = document()
    doc["jobs"] = [job for job in doc["jobs"] if job["name"] != "export"]
    doc["jobs"][0]["period"] = 90.0
    imported(doc, replace=True)
    assert sorted(Job.objects.values_list("name", flat=True)) == ["ping", "tidy-up"]
    kept = Job.objects.get(name="ping")
    assert kept.pk == ping.pk and kept.period == 90.0 and kept.runs.count() == 1
    assert not JobRun.objects.filter(job_id=export.pk).exists()


def test_a_replace_may_drop_a_script_a_kept_job_moves_away_from():
    imported(document())
    doc = document()
    doc["scripts"] = [s for s in doc["scripts"] if s["name"] != "tidy"]
    doc["jobs"][2]["script"] = "report"
    imported(doc, replace=True)
    assert Job.objects.get(name="tidy-up").script.name == "report"
    assert sorted(Script.objects.values_list("name", flat=True)) == ["report"]


def test_a_script_a_job_needs_cannot_be_dropped():
    imported(document())
    doc = document()
    doc["scripts"] = [s for s in doc["scripts"] if s["name"] != "tidy"]
    assert 'jobs[2].script: no script named "tidy" in this document' in refusal(doc, replace=True)
    assert Job.objects.get(name="tidy-up").script.name == "tidy"


# --- who may import jobs ------------------------------------------------------------------------------------


def test_an_import_takes_the_job_permissions_and_shell_job_only_for_a_shell_job():
    base = project_import_permissions(replace=False)
    assert "jobs.add_job" in base and "jobs.delete_job" in project_import_permissions(replace=True)
    http_only = document()
    http_only["jobs"] = http_only["jobs"][1:]
    assert document_import_permissions(raw=json.dumps(http_only), replace=False) == base
    assert document_import_permissions(raw=json.dumps(document()), replace=True) == (
        *project_import_permissions(replace=True), "jobs.shell_job")
    assert document_import_permissions(raw=b"not json", replace=False) == base


def user_with(*perms: str):
    user = get_user_model().objects.create_user("integrator", password="pw-123456", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def api_import(user, doc: dict):
    client = Client()
    client.force_login(user)
    return client.post("/api/projects/import", data=json.dumps(doc), content_type="application/json")


def test_the_api_refuses_a_shell_job_to_a_user_without_shell_job_and_writes_nothing():
    user = user_with(*project_import_permissions(replace=False))
    response = api_import(user, document())
    assert response.status_code == 403
    assert [d["message"] for d in response.json()["error"]["details"]] == ["permission required: jobs.shell_job"]
    assert not Project.objects.exists() and not Job.objects.exists()
    http_only = document()
    http_only["jobs"] = http_only["jobs"][1:]
    assert api_import(user, http_only).status_code == 201
    assert sorted(Job.objects.values_list("name", flat=True)) == ["ping", "tidy-up"]


def test_the_api_imports_a_shell_job_for_a_user_with_shell_job():
    user = user_with(*project_import_permissions(replace=False, shell=True))
    assert api_import(user, document()).status_code == 201
    assert Job.objects.get(name="export").kind == "shell"


def test_the_api_refuses_jobs_to_a_user_without_the_job_permissions():
    user = user_with(*(p for p in project_import_permissions(replace=False) if p != "jobs.add_job"))
    response = api_import(user, document())
    assert response.status_code == 403
    assert [d["message"] for d in response.json()["error"]["details"]] == ["permission required: jobs.add_job"]
    assert not Project.objects.exists()


def test_the_admin_import_page_refuses_a_shell_job_without_shell_job_and_writes_nothing():
    client = Client()
    client.force_login(user_with(*project_import_permissions(replace=False), "hubs.view_project"))
    upload = SimpleUploadedFile("plant.json", json.dumps(document()).encode(), content_type="application/json")
    response = client.post(reverse("admin:hubs_project_import"), {"document": upload})
    assert response.status_code == 200
    assert response.context["errors"] == ["permission required: jobs.shell_job"]
    assert not Project.objects.exists()


def test_the_document_is_not_changed_by_the_import():
    doc = document()
    kept = copy.deepcopy(doc)
    imported(doc)
    assert doc == kept
