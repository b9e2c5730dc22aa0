"""The console's jobs of a project (docs/console.md, "Jobs"): each job with its trigger, next fire time and last
run, run now, enable and disable; a job's runs with their exit code or HTTP status, duration and error; a run's
output with a live tail while it runs (the API's Server-Sent Events, jobs/sse.py); kill a running run.

Needs ``jobs.view_job``; run now ``jobs.run_job``, the switch ``jobs.enable_job``, kill ``jobs.kill_job`` (the
operator role). Jobs are made and changed in the admin, the API and project documents.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from hubs.models import Project
from jobs.models import Job, JobRun
from jobs.selectors import job_next_fire, job_runs_list, jobs_list
from jobs.services import job_run_kill, job_run_now, job_set_enabled

RUNS_SHOWN = 20  # the runs a job's page lists


@require_GET
@login_required
@permission_required("jobs.view_job", raise_exception=True)
def jobs(request: HttpRequest, project_id: int) -> HttpResponse:
    """A project's jobs by name, each with its next fire time and its newest run."""
    project = get_object_or_404(Project, pk=project_id)
    now = timezone.now()
    rows = []
    for job in jobs_list(project_id=project.pk):
        rows.append({"job": job, "next": job_next_fire(job=job, after=now) if job.enabled else None,
                     "last": job_runs_list(job_id=job.pk).first()})
    return render(request, "console/jobs.html", {"project": project, "rows": rows})


@require_GET
@login_required
@permission_required("jobs.view_job", raise_exception=True)
def job(request: HttpRequest, job_id: int) -> HttpResponse:
    """A job's settings in short and its last 20 runs."""
    row = get_object_or_404(Job.objects.select_related("project"), pk=job_id)
    runs = list(job_runs_list(job_id=row.pk)[:RUNS_SHOWN])
    return render(request, "console/job.html", {"job": row, "runs": runs,
                                                "next": job_next_fire(job=row, after=timezone.now()) if row.enabled else None})


@require_POST
@login_required
@permission_required("jobs.run_job", raise_exception=True)
def job_run(request: HttpRequest, job_id: int) -> HttpResponse:
    """Send one run of the job to the jobs worker now (``jobs.services.job_run_now``); then the job's page."""
    row = get_object_or_404(Job, pk=job_id)
    job_run_now(job=row, requested_by=request.user.get_username())
    return redirect("console:job", job_id=row.pk)


@require_POST
@login_required
@permission_required("jobs.enable_job", raise_exception=True)
def job_switch(request: HttpRequest, job_id: int) -> HttpResponse:
    """Enable (``enabled=1``) or disable the job; then its project's jobs."""
    row = get_object_or_404(Job, pk=job_id)
    job_set_enabled(job=row, enabled=request.POST.get("enabled") == "1")
    return redirect("console:jobs", project_id=row.project_id)


@require_GET
@login_required
@permission_required("jobs.view_job", raise_exception=True)
def job_run_view(request: HttpRequest, run_id: int) -> HttpResponse:
    """A run: its outcome and output; while it runs, the output follows live (the API's tail) and Kill is offered."""
    run = get_object_or_404(JobRun.objects.select_related("job__project"), pk=run_id)
    return render(request, "console/job_run.html", {"run": run, "job": run.job, "refused": ""})


@require_POST
@login_required
@permission_required("jobs.kill_job", raise_exception=True)
def job_run_kill_view(request: HttpRequest, run_id: int) -> HttpResponse:
    """Kill a running run (``jobs.services.job_run_kill``: SIGTERM to its process group, SIGKILL after the grace
    time; recorded ``killed`` with who). A run no longer running is said so (409), nothing changed."""
    run = get_object_or_404(JobRun.objects.select_related("job__project"), pk=run_id)
    try:
        job_run_kill(run=run, by=request.user.get_username())
    except ValidationError as exc:
        return render(request, "console/job_run.html", {"run": run, "job": run.job, "refused": exc.messages[0]},
                      status=409)
    return redirect("console:job-run", run_id=run.pk)
