"""Celery tasks for jobs: thin wrappers that take ids and call one service. Routed to the jobs queue
(``CELERY_TASK_ROUTES``, ``HUBSCHED_JOBS_QUEUE``), so a long job never holds a worker that polls hubs."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task

TICK_TASK = "jobs.tasks.job_tick_run"


@shared_task(name=TICK_TASK, ignore_result=True)
def job_tick_run(job_id: int, ticks: list, fence: list | None = None) -> dict:
    """Run one job's due ticks as the beat scheduler sent them: ``ticks = [[scheduled_for (epoch s), grace_s, rr,
    [spec id]], ...]`` (``jobs.execution.job_ticks_run``: fence, misfire, overlap, then the command). Returns the
    outcome in counts, which Flower shows as the result."""
    from .execution import job_ticks_run

    return job_ticks_run(job_id=job_id, ticks=ticks, fence=fence)


@shared_task(name="jobs.tasks.job_run_now", ignore_result=True)
def job_run_now(job_id: int, scheduled_for: str, requested_by: str = "") -> dict:
    """Run ``job_id`` once now (``jobs.services.job_run_now``); ``scheduled_for`` is an ISO 8601 time."""
    from .execution import job_execute

    run = job_execute(job_id=job_id, scheduled_for=datetime.fromisoformat(scheduled_for), requested_by=requested_by)
    return {"run": run.pk if run else None, "status": run.status if run else None}
