"""/api/v1/jobs through the test client with API tokens: every endpoint, bad input at its path, 401, 403, 404."""

from __future__ import annotations

from datetime import datetime, timedelta
from unittest import mock

import pytest
from django.utils import timezone

from api.testing import assert_error, token_client, user_with
from hubs.models import Project
from jobs.models import Job, JobRun, JobRunStatus
from jobs.services import SHELL_REFUSED

pytestmark = pytest.mark.django_db


@pytest.fixture
def project():
    return Project.objects.create(name="plant", time_zone="Europe/Berlin")


@pytest.fixture
def admin():
    return token_client(role="admin")


@pytest.fixture
def http_job(project):
    return Job.objects.create(project=project, name="ping", kind="http", url="http://127.0.0.1:9/ping",
                              headers={"Authorization": "Bearer secret-value"}, period=10.0)


def shell_body(project, name="export", **fields):
    return {"project": project.pk, "name": name, "kind": "shell", "argv": ["bash", "scripts/x.sh"], "period": 5.0,
            **fields}


def test_it_creates_a_shell_job_and_answers_it_with_its_next_tick(admin, project):
    response = admin.post("/api/v1/jobs", shell_body(project), content_type="application/json")
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["name"] == "export" and job["argv"] == ["bash", "scripts/x.sh"] and job["project_name"] == "plant"
    assert job["next_fire_at"] is not None
    assert job["stats"] == {"dispatched": 0, "missed": 0, "failures": 0, "last_run_at": None}
    assert Job.objects.get(pk=job["id"]).argv == ["bash", "scripts/x.sh"]


def test_a_broken_rule_is_answered_422_at_its_path(admin, project):
    response = admin.post("/api/v1/jobs", shell_body(project, argv=[""]), content_type="application/json")
    error = assert_error(response, 422, "invalid")
    assert {"path": "argv[0]", "message": "the program is empty"} in error["details"], error
    assert not Job.objects.exists()


def test_an_unknown_field_is_refused(admin, project):
    error = assert_error(admin.post("/api/v1/jobs", shell_body(project, colour="red"),
                                    content_type="application/json"), 422)
    assert [d["path"] for d in error["details"]] == ["colour"]


def test_a_shell_job_needs_the_shell_permission(project):
    integrator = token_client(role="integrator")  # add_job, but not shell_job
    error = assert_error(integrator.post("/api/v1/jobs", shell_body(project), content_type="application/json"), 403)
    assert error["message"] == SHELL_REFUSED
    body = {"project": project.pk, "name": "ping", "kind": "http", "url": "http://127.0.0.1:9/"}
    assert integrator.post("/api/v1/jobs", body, content_type="application/json").status_code == 201


def test_header_values_are_masked_and_three_stars_keep_the_stored_value(admin, http_job):
    job = admin.get(f"/api/v1/jobs/{http_job.pk}").json()
    assert job["headers"] == {"Authorization": "***"}
    response = admin.patch(f"/api/v1/jobs/{http_job.pk}", {"headers": {"Authorization": "***", "X-A": "1"},
                                                           "title": "Ping"}, content_type="application/json")
    assert response.status_code == 200, response.content
    http_job.refresh_from_db()
    assert http_job.headers == {"Authorization": "Bearer secret-value", "X-A": "1"} and http_job.title == "Ping"
    assert b"secret-value" not in response.content
    error = assert_error(admin.patch(f"/api/v1/jobs/{http_job.pk}", {"headers": {"X-B": "***"}},
                                     content_type="application/json"), 422)
    assert error["details"][0]["path"] == "headers.X-B"


def test_a_change_that_breaks_a_rule_changes_nothing(admin, http_job):
    error = assert_error(admin.patch(f"/api/v1/jobs/{http_job.pk}", {"url": "ftp://x"},
                                     content_type="application/json"), 422)
    assert error["details"][0]["path"] == "url"
    http_job.refresh_from_db()
    assert http_job.url == "http://127.0.0.1:9/ping"


def test_it_lists_jobs_with_filters_and_pages(admin, project, http_job):
    Job.objects.create(project=project, name="export", kind="shell", argv=["true"], enabled=False)
    body = admin.get("/api/v1/jobs?limit=1").json()
    assert body["count"] == 2 and len(body["items"]) == 1 and body["items"][0]["name"] == "export"
    assert [j["name"] for j in admin.get("/api/v1/jobs?kind=http").json()["items"]] == ["ping"]
    assert [j["name"] for j in admin.get("/api/v1/jobs?enabled=false").json()["items"]] == ["export"]
    assert [j["name"] for j in admin.get("/api/v1/jobs?search=PIN").json()["items"]] == ["ping"]
    assert admin.get(f"/api/v1/jobs?project={project.pk + 1}").json()["count"] == 0


def test_delete_answers_what_went_with_the_job(admin, http_job):
    JobRun.objects.create(job=http_job, scheduled_for=timezone.now(), status=JobRunStatus.OK)
    response = admin.delete(f"/api/v1/jobs/{http_job.pk}")
    assert response.status_code == 200 and response.json() == {"id": http_job.pk, "runs": 1}
    assert not Job.objects.exists()
    assert_error(admin.delete(f"/api/v1/jobs/{http_job.pk}"), 404, "not_found")


def test_run_now_answers_202_with_the_tick(admin, http_job, django_capture_on_commit_callbacks):
    with mock.patch("jobs.tasks.job_run_now.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        response = admin.post(f"/api/v1/jobs/{http_job.pk}/run")
    assert response.status_code == 202, response.content
    assert delay.call_args.args[0] == http_job.pk
    sent = datetime.fromisoformat(delay.call_args.args[1])
    answered = datetime.fromisoformat(response.json()["scheduled_for"].replace("Z", "+00:00"))
    assert abs((sent - answered).total_seconds()) < 0.001  # Django's JSON encoder keeps milliseconds


def test_enable_and_disable(admin, http_job):
    assert admin.post(f"/api/v1/jobs/{http_job.pk}/disable").json()["enabled"] is False
    assert admin.post(f"/api/v1/jobs/{http_job.pk}/disable").json()["next_fire_at"] is None
    assert admin.post(f"/api/v1/jobs/{http_job.pk}/enable").json()["enabled"] is True


def test_runs_come_newest_first_with_their_logs(admin, http_job):
    now = timezone.now()
    for i in range(7):
        JobRun.objects.create(job=http_job, scheduled_for=now - timedelta(seconds=i), status=JobRunStatus.OK,
                              stdout=f"out {i}", stdout_bytes=5, started_at=now, finished_at=now + timedelta(seconds=2))
    body = admin.get(f"/api/v1/jobs/{http_job.pk}/runs?limit=5").json()
    assert body["count"] == 7 and [r["stdout"] for r in body["items"]] == [f"out {i}" for i in range(5)]
    run = body["items"][0]
    assert run["duration_s"] == 2.0 and run["stdout_bytes"] == 5 and set(run) >= {
        "status", "scheduled_for", "started_at", "finished_at", "attempts", "exit_code", "http_status", "error",
        "worker", "requested_by", "killed_by", "stderr", "stderr_bytes"}
    assert admin.get(f"/api/v1/jobs/{http_job.pk}/runs?status=failed").json()["count"] == 0
    assert assert_error(admin.get(f"/api/v1/jobs/{http_job.pk}/runs?status=nope"), 422)["details"][0]["path"] == "status"
    assert admin.get(f"/api/v1/jobs/{http_job.pk}/runs/{run['id']}").json()["id"] == run["id"]
    assert_error(admin.get(f"/api/v1/jobs/{http_job.pk}/runs/{run['id'] + 1000}"), 404)


def test_kill_asks_the_worker_and_is_409_when_nothing_runs(admin, http_job):
    running = JobRun.objects.create(job=http_job, scheduled_for=timezone.now(), status=JobRunStatus.RUNNING)
    response = admin.post(f"/api/v1/jobs/{http_job.pk}/runs/{running.pk}/kill")
    assert response.status_code == 202, response.content
    assert response.json()["kill_requested_at"] is not None and response.json()["killed_by"] == admin.user.username
    done = JobRun.objects.create(job=http_job, scheduled_for=timezone.now() - timedelta(hours=1), status="ok")
    assert_error(admin.post(f"/api/v1/jobs/{http_job.pk}/runs/{done.pk}/kill"), 409, "conflict")


def test_without_credentials_every_endpoint_is_401(client, http_job):
    assert_error(client.get("/api/v1/jobs"), 401)
    assert_error(client.get(f"/api/v1/jobs/{http_job.pk}/runs/1/tail"), 401)


@pytest.mark.parametrize("method,path,perm", [
    ("get", "/api/v1/jobs", "jobs.view_job"),
    ("get", "/api/v1/jobs/{id}", "jobs.view_job"),
    ("patch", "/api/v1/jobs/{id}", "jobs.change_job"),
    ("delete", "/api/v1/jobs/{id}", "jobs.delete_job"),
    ("post", "/api/v1/jobs/{id}/run", "jobs.run_job"),
    ("post", "/api/v1/jobs/{id}/enable", "jobs.enable_job"),
    ("get", "/api/v1/jobs/{id}/runs", "jobs.view_job"),
    ("post", "/api/v1/jobs/{id}/runs/1/kill", "jobs.kill_job"),
    ("get", "/api/v1/jobs/{id}/runs/1/tail", "jobs.view_job"),
])
def test_a_user_without_the_permission_gets_403_naming_it(http_job, method, path, perm):
    nobody = token_client(user_with(role=None))
    kwargs = {"content_type": "application/json", "data": {}} if method == "patch" else {}
    error = assert_error(getattr(nobody, method)(path.format(id=http_job.pk), **kwargs), 403, "permission_denied")
    assert perm in error["message"]


def test_an_unknown_job_is_404(admin):
    assert_error(admin.get("/api/v1/jobs/999999"), 404)
    assert_error(admin.post("/api/v1/jobs/999999/run"), 404)


def test_the_scheduler_lists_the_jobs_due_and_the_next_fire_time(admin, project):
    Job.objects.create(project=project, name="fast", kind="http", url="http://127.0.0.1:9/", period=2.0)
    Job.objects.create(project=project, name="off", kind="http", url="http://127.0.0.1:9/", period=1.0, enabled=False)
    body = admin.get("/api/v1/scheduler?within=10").json()
    jobs = body["jobs"]
    assert jobs["next_fire_at"] is not None and jobs["next_job"]["name"] == "fast"
    assert {t["name"] for t in jobs["ticks"]} == {"fast"} and 4 <= len(jobs["ticks"]) <= 6
    assert jobs["ticks"][0]["at"] == jobs["next_fire_at"] and jobs["ticks_truncated"] is False


def test_the_scheduler_leaves_jobs_out_for_a_user_who_may_not_see_them(project):
    only_groups = token_client(user_with(role=None, perms=("groups.view_group",)))
    assert only_groups.get("/api/v1/scheduler").json()["jobs"] is None


def test_a_script_that_does_not_exist_is_422_at_script(admin, project):
    body = {"project": project.pk, "name": "s", "kind": "script", "script": 999999}
    error = assert_error(admin.post("/api/v1/jobs", body, content_type="application/json"), 422)
    assert error["details"][0]["path"] == "script"
