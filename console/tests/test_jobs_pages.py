"""The console's jobs of a project: the list with the next fire time and the last run, run now, the switch, a run's
output, kill of a running run (recorded for the worker's watcher) and of a finished one refused, the permissions."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from api.testing import logged_in
from hubs.models import Project
from jobs.models import Job, JobRun


@pytest.fixture
def job(db):
    project = Project.objects.create(name="plant")
    return Job.objects.create(project=project, name="export", kind="shell", argv=["bash", "-c", "echo hi"],
                              trigger="interval", period=60)


@pytest.mark.django_db
def test_the_jobs_are_listed_run_now_and_switched(job, monkeypatch):
    viewer, operator = logged_in("viewer"), logged_in("operator")
    page = viewer.get(f"/projects/{job.project_id}/jobs/").content.decode()
    assert "export" in page and "every 60.0 s" in page and "none yet" in page
    assert viewer.post(f"/jobs/{job.pk}/run").status_code == 403
    queued = []
    monkeypatch.setattr("jobs.services.transaction.on_commit", lambda call: queued.append(call))
    assert operator.post(f"/jobs/{job.pk}/run").status_code == 302 and len(queued) == 1
    assert operator.post(f"/jobs/{job.pk}/switch", {"enabled": "0"}).status_code == 302
    assert not Job.objects.get(pk=job.pk).enabled
    assert "disabled" in viewer.get(f"/projects/{job.project_id}/jobs/").content.decode()


@pytest.mark.django_db
def test_a_run_shows_its_output_and_a_running_one_is_killed(job):
    at = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)
    done = JobRun.objects.create(job=job, scheduled_for=at, status="ok", exit_code=0, stdout="hi\n", stdout_bytes=3)
    running = JobRun.objects.create(job=job, scheduled_for=at.replace(minute=1), status="running", stdout="part")
    viewer, operator = logged_in("viewer"), logged_in("operator")
    page = viewer.get(f"/jobs/runs/{done.pk}/").content.decode()
    assert '<pre class="output" id="stdout">hi\n</pre>' in page and "exit code 0" in page and "Kill" not in page
    page = operator.get(f"/jobs/runs/{running.pk}/").content.decode()
    assert "Kill…" in page and f"/api/v1/jobs/{job.pk}/runs/{running.pk}/tail" in page  # the live tail
    assert viewer.post(f"/jobs/runs/{running.pk}/kill").status_code == 403
    assert operator.post(f"/jobs/runs/{running.pk}/kill").status_code == 302
    running.refresh_from_db()
    assert running.kill_requested_at is not None and running.killed_by  # the worker's watcher acts on it
    refused = operator.post(f"/jobs/runs/{done.pk}/kill")
    assert refused.status_code == 409 and "not running" in refused.content.decode()
    job_page = viewer.get(f"/jobs/{job.pk}/").content.decode()
    assert job_page.count('<tr class="run-') == 2
