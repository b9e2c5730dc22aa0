"""The jobs admin, used as a person would: who may save a shell job, and the permission-checked actions."""

from __future__ import annotations

from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from hubs.models import Project
from jobs.admin import output_text
from jobs.models import Job, JobRun, JobRunStatus
from jobs.services import SHELL_REFUSED

pytestmark = pytest.mark.django_db


def user_with(*perms: str, name: str = "person"):
    user = get_user_model().objects.create_user(name, password="pw-123456", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def client_of(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def project():
    return Project.objects.create(name="plant")


@pytest.fixture
def http_job(project):
    return Job.objects.create(project=project, name="ping", kind="http", url="https://example.com/hook", argv=[])


def job_form(project, **fields) -> dict:
    data = {
        "project": project.pk, "name": "export", "title": "", "trigger": "interval", "period": "60", "offset": "0",
        "cron": "", "run_at_0": "", "run_at_1": "", "kind": "shell", "argv": '["bash", "export.sh"]',
        "working_directory": "", "environment": "{}", "method": "POST", "url": "", "headers": "{}", "body": "null",
        "success_codes": "200-299", "script": "", "timeout": "3600", "retries": "0", "retry_backoff": "10",
        "overlap": "forbid", "misfire": "skip", "misfire_grace": "60", "output_limit_kib": "64", "enabled": "on",
        "runs-TOTAL_FORMS": "0", "runs-INITIAL_FORMS": "0", "runs-MIN_NUM_FORMS": "0", "runs-MAX_NUM_FORMS": "0",
    }
    data.update(fields)
    return data


def actions_of(response) -> list[str]:
    form = response.context.get("action_form") if response.context else None
    return [name for name, _label in form.fields["action"].choices if name] if form else []


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


INTEGRATOR = ("jobs.add_job", "jobs.change_job", "jobs.view_job", "hubs.view_project")


def test_a_viewer_sees_jobs_and_runs_but_no_action_and_cannot_change(client, project, http_job):
    run = JobRun.objects.create(job=http_job, scheduled_for=timezone.now(), status=JobRunStatus.RUNNING)
    c = client_of(client, user_with("jobs.view_job", "jobs.view_jobrun"))
    listing = c.get(reverse("admin:jobs_job_changelist"))
    assert listing.status_code == 200 and "ping" in listing.content.decode()
    assert ">every 60 s<" in listing.content.decode() and '<td class="field-last_status">running</td>' in listing.content.decode()
    assert actions_of(listing) == []
    assert actions_of(c.get(reverse("admin:jobs_jobrun_changelist"))) == []
    page = c.get(reverse("admin:jobs_job_change", args=[http_job.pk]))
    assert page.status_code == 200 and not page.context["has_change_permission"]
    changed = c.post(reverse("admin:jobs_job_change", args=[http_job.pk]), job_form(project, name="renamed", kind="http"))
    assert changed.status_code == 403
    assert Job.objects.get(pk=http_job.pk).name == "ping"
    killed = c.post(reverse("admin:jobs_jobrun_changelist"), {"action": "kill", "_selected_action": [run.pk]})
    assert killed.status_code in (200, 302)
    assert JobRun.objects.get(pk=run.pk).kill_requested_at is None


def test_an_integrator_without_shell_job_cannot_save_a_shell_job(client, project):
    c = client_of(client, user_with(*INTEGRATOR))
    response = c.post(reverse("admin:jobs_job_add"), job_form(project))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["kind"] == [SHELL_REFUSED]
    assert not Job.objects.exists()


def test_an_integrator_without_shell_job_can_save_an_http_job_but_not_turn_it_into_a_shell_job(client, project):
    c = client_of(client, user_with(*INTEGRATOR))
    response = c.post(reverse("admin:jobs_job_add"), job_form(project, kind="http", argv="[]",
                                                                url="https://example.com/hook"))
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    job = Job.objects.get(name="export")
    assert job.kind == "http" and job.url == "https://example.com/hook"
    turned = c.post(reverse("admin:jobs_job_change", args=[job.pk]), job_form(project))
    assert turned.status_code == 200 and turned.context["adminform"].form.errors["kind"] == [SHELL_REFUSED]
    assert Job.objects.get(pk=job.pk).kind == "http"


def test_an_integrator_without_shell_job_cannot_change_a_shell_job_even_into_another_kind(client, project):
    job = Job.objects.create(project=project, name="export", kind="shell", argv=["bash", "export.sh"])
    c = client_of(client, user_with(*INTEGRATOR))
    response = c.post(reverse("admin:jobs_job_change", args=[job.pk]),
                      job_form(project, kind="http", argv="[]", url="https://example.com/hook"))
    assert response.status_code == 200 and response.context["adminform"].form.errors["kind"] == [SHELL_REFUSED]
    assert Job.objects.get(pk=job.pk).kind == "shell"


def test_with_shell_job_the_integrator_saves_a_shell_job(client, project):
    c = client_of(client, user_with(*INTEGRATOR, "jobs.shell_job"))
    response = c.post(reverse("admin:jobs_job_add"), job_form(project))
    assert response.status_code == 302
    assert Job.objects.get(name="export").argv == ["bash", "export.sh"]


def test_the_job_form_shows_the_job_rules_beside_their_fields(client, project):
    c = client_of(client, user_with(*INTEGRATOR, "jobs.shell_job"))
    response = c.post(reverse("admin:jobs_job_add"), job_form(project, argv='[" "]'))
    assert response.status_code == 200
    assert "argv[0]: the program is empty" in response.context["adminform"].form.errors["argv"]
    assert not Job.objects.exists()


def test_run_now_calls_the_service_after_commit_for_a_user_with_run_job(client, project, http_job,
                                                                       django_capture_on_commit_callbacks):
    c = client_of(client, user_with("jobs.view_job", "jobs.run_job"))
    listing = c.get(reverse("admin:jobs_job_changelist"))
    assert "run_now" in actions_of(listing) and "enable" not in actions_of(listing)
    with mock.patch("jobs.tasks.job_run_now.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            response = c.post(reverse("admin:jobs_job_changelist"),
                              {"action": "run_now", "_selected_action": [http_job.pk]}, follow=True)
    assert len(callbacks) == 1
    delay.assert_called_once()
    job_id, scheduled_for, requested_by = delay.call_args.args
    assert (job_id, requested_by) == (http_job.pk, "person")
    assert any("1 job(s) queued" in m for m in messages_of(response))


def test_run_now_is_refused_without_run_job(client, project, http_job, django_capture_on_commit_callbacks):
    c = client_of(client, user_with("jobs.view_job", "jobs.enable_job"))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        c.post(reverse("admin:jobs_job_changelist"), {"action": "run_now", "_selected_action": [http_job.pk]})
    assert callbacks == []


def test_enable_and_disable_need_enable_job(client, project, http_job):
    c = client_of(client, user_with("jobs.view_job", "jobs.enable_job"))
    c.post(reverse("admin:jobs_job_changelist"), {"action": "disable", "_selected_action": [http_job.pk]})
    assert Job.objects.get(pk=http_job.pk).enabled is False
    c.post(reverse("admin:jobs_job_changelist"), {"action": "enable", "_selected_action": [http_job.pk]})
    assert Job.objects.get(pk=http_job.pk).enabled is True


def test_kill_marks_a_running_run_and_warns_about_one_not_running(client, project, http_job):
    now = timezone.now()
    running = JobRun.objects.create(job=http_job, scheduled_for=now, status=JobRunStatus.RUNNING)
    done = JobRun.objects.create(job=http_job, scheduled_for=now - timezone.timedelta(minutes=1), status=JobRunStatus.OK)
    c = client_of(client, user_with("jobs.view_jobrun", "jobs.kill_job", name="operator"))
    response = c.post(reverse("admin:jobs_jobrun_changelist"),
                      {"action": "kill", "_selected_action": [running.pk, done.pk]}, follow=True)
    running.refresh_from_db()
    assert running.kill_requested_at is not None and running.killed_by == "operator"
    assert JobRun.objects.get(pk=done.pk).kill_requested_at is None
    assert any(f"run {done.pk} is not running" in m for m in messages_of(response))


def test_the_job_page_lists_its_latest_20_runs_linked_to_their_pages(client, project, http_job):
    start = timezone.now()
    runs = [JobRun.objects.create(job=http_job, scheduled_for=start - timezone.timedelta(seconds=i), status="ok",
                                  http_status=204) for i in range(25)]
    c = client_of(client, user_with("jobs.view_job", "jobs.view_jobrun"))
    page = c.get(reverse("admin:jobs_job_change", args=[http_job.pk])).content.decode()
    shown = [run for run in runs if reverse("admin:jobs_jobrun_change", args=[run.pk]) + '"' in page]
    assert shown == runs[:20]
    assert "HTTP 204" in page


def test_a_run_page_shows_its_output_in_pre_with_the_sizes_and_cannot_be_changed(client, project, http_job):
    run = JobRun.objects.create(job=http_job, scheduled_for=timezone.now(), status="failed", stdout="<b>done</b>",
                                stdout_bytes=1258291, stderr="oops", stderr_bytes=4)
    c = client_of(client, user_with("jobs.view_jobrun", "jobs.change_jobrun", "jobs.add_jobrun"))
    page = c.get(reverse("admin:jobs_jobrun_change", args=[run.pk]))
    text = page.content.decode()
    assert "<pre" in text and "&lt;b&gt;done&lt;/b&gt;" in text
    assert "last 11 bytes of 1.2 MiB" in text and "all 4 bytes" in text
    assert not page.context["has_change_permission"]
    assert c.get(reverse("admin:jobs_jobrun_add")).status_code == 403


def test_output_sizes_read_as_kib_and_mib():
    assert output_text("x" * 65536, 1258291) == "last 64 KiB of 1.2 MiB"
    assert output_text("", 0) == "all 0 bytes"
