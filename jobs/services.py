"""Writes of jobs: create, change, delete, enable, run now and kill (the admin, the API, import and ruqi call these)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .models import Job, JobKind, JobRun, JobRunStatus

SHELL_PERMISSION = "jobs.shell_job"
SHELL_REFUSED = "creating or changing a shell job needs the permission jobs.shell_job (commands run on the workers)"


def job_shell_problem(*, user, kind: str, was_shell: bool = False) -> str | None:
    """Why ``user`` may not save a job of ``kind`` (or change one that ``was_shell``), or None.

    A shell job runs a program on the workers, so making one (or turning a job into one, or changing one) takes
    ``jobs.shell_job`` besides the model permission (the admin role holds it; docs/jobs.md, "Safety")."""
    if (kind == JobKind.SHELL or was_shell) and not user.has_perm(SHELL_PERMISSION):
        return SHELL_REFUSED
    return None


def job_create(*, project_id: int, name: str, **fields: Any) -> Job:
    """Validate (``Job.full_clean``: jobs/validators.py) and save a new job; raises ValidationError, nothing saved."""
    job = Job(project_id=project_id, name=name, **fields)
    job.full_clean()
    job.save()
    return job


def job_change(*, job: Job, changes: dict[str, Any]) -> Job:
    """Apply ``changes`` (field -> value), validate the whole job and save; raises ValidationError, nothing saved."""
    for field, value in changes.items():
        setattr(job, field, value)
    job.full_clean()
    job.save()
    return job


def job_delete(*, job: Job) -> dict[str, int]:
    """Delete a job and its runs; returns ``{"runs": n}``, what went with it. A run still running is killed first."""
    with transaction.atomic():
        for run in JobRun.objects.filter(job=job, status=JobRunStatus.RUNNING):
            job_run_kill(run=run, by="job deleted")
        runs = JobRun.objects.filter(job=job).count()
        job.delete()
    return {"runs": runs}


def job_set_enabled(*, job: Job, enabled: bool) -> Job:
    job.enabled = enabled
    job.save(update_fields=["enabled", "updated_at"])
    return job


def job_run_now(*, job: Job, requested_by: str) -> datetime:
    """Send one run of ``job`` to the jobs queue at once (after the transaction commits); returns its ``scheduled_for``.

    The run is a JobRun like a scheduled one, with ``requested_by``; the job's overlap policy applies to it too."""
    from .tasks import job_run_now as task

    scheduled_for = timezone.now()
    transaction.on_commit(lambda: task.delay(job.pk, scheduled_for.isoformat(), requested_by))
    return scheduled_for


def job_run_kill(*, run: JobRun, by: str) -> JobRun:
    """Ask the worker running ``run`` to stop it: its process group gets SIGTERM, then SIGKILL after
    ``HUBSCHED_JOBS_KILL_GRACE_S`` (jobs.runner), and the run is recorded ``killed`` with ``killed_by``.

    The request is the row itself (``kill_requested_at``), read by the worker's watcher every half second, so it
    reaches a worker on any host. Raises ValidationError when the run is not running."""
    updated = JobRun.objects.filter(pk=run.pk, status=JobRunStatus.RUNNING, kill_requested_at__isnull=True).update(
        kill_requested_at=timezone.now(), killed_by=by[:150]
    )
    run.refresh_from_db()
    if not updated and run.status != JobRunStatus.RUNNING:
        raise ValidationError(f"run {run.pk} is not running (it is {run.status})", code="not_running")
    return run


def job_stats_add(*, counts: dict[str, dict[int, int]]) -> None:
    """Add the beat's counters ``{"dispatched"|"missed": {job_id: n}}`` to JobStats (rows made when missing; jobs that
    no longer exist left out). Concurrent writers add up (F())."""
    from django.db.models import F

    from .models import JobStats

    for field, per_job in counts.items():
        if field not in ("dispatched", "missed"):
            continue  # the engine's other counters are the groups'
        alive = set(Job.objects.filter(pk__in=list(per_job)).values_list("pk", flat=True))
        have = set(JobStats.objects.filter(job_id__in=alive).values_list("job_id", flat=True))
        JobStats.objects.bulk_create([JobStats(job_id=jid) for jid in alive - have], ignore_conflicts=True)
        for jid in alive:
            JobStats.objects.filter(job_id=jid).update(**{field: F(field) + per_job[jid]})


def job_ticks_untaken_log(*, untaken: list[tuple[int, float, str]]) -> int:
    """Record ``[(job_id, scheduled_for epoch s, "missed"|"skipped", ...)]`` as JobRuns of that status (a tick
    already recorded keeps its first outcome; jobs gone are left out); returns rows written."""
    from datetime import datetime, timezone as tz

    if not untaken:
        return 0
    alive = set(Job.objects.filter(pk__in={jid for jid, *_ in untaken}).values_list("pk", flat=True))
    now = timezone.now()
    rows = []
    for jid, t, status, *why in untaken:
        if jid not in alive:
            continue
        error = why[0] if why else ("no beat sent it in time (it fell due while no beat led)" if status == "missed" else "")
        rows.append(JobRun(job_id=jid, scheduled_for=datetime.fromtimestamp(t, tz.utc), status=status, error=error,
                           finished_at=now))
    JobRun.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)
