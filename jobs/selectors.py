"""Reads of jobs: lists with filters, a job's runs, and when jobs fire next (from the beat's own triggers)."""

from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

from django.db.models import Q, QuerySet

from .models import Job, JobRun

JOBS_DUE_MAX = 1000  # fire times listed by jobs_due at most (a 0.1 s job over an hour would be 36,000)


def jobs_list(*, project_id: int | None = None, kind: str | None = None, enabled: bool | None = None,
              trigger: str | None = None, search: str | None = None) -> QuerySet[Job]:
    """Jobs ordered by project and name, with their project and counters; ``search``: part of the name or the
    title, any case."""
    qs = Job.objects.select_related("project", "stats")
    if project_id is not None:
        qs = qs.filter(project_id=project_id)
    if kind:
        qs = qs.filter(kind=kind)
    if enabled is not None:
        qs = qs.filter(enabled=enabled)
    if trigger:
        qs = qs.filter(trigger=trigger)
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(title__icontains=search))
    return qs.order_by("project__name", "name")


def job_runs_list(*, job_id: int, status: str | None = None) -> QuerySet[JobRun]:
    """A job's runs, newest tick first (served by the constraint jobrun_one_per_tick's index)."""
    qs = JobRun.objects.filter(job_id=job_id)
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-scheduled_for", "-pk")


def _epoch(value: datetime) -> float:
    return value.timestamp()


def _aware(t: float) -> datetime:
    return datetime.fromtimestamp(t, dt_timezone.utc)


def _specs_with_triggers(*, ids=None, now: float):
    """``[(spec, trigger)]`` of the active jobs (``jobs.scheduling.job_specs``: what the beat loads), built by
    the engine's own ``cohort_key_and_trigger``; a job whose settings do not build (TriggerError) is left out."""
    from groups.scheduler.engine import cohort_key_and_trigger
    from groups.scheduler.triggers import TriggerError

    from .scheduling import job_specs

    out = []
    for spec in job_specs(ids=ids):
        if not spec.active:
            continue
        try:
            _key, trigger = cohort_key_and_trigger(spec, now)
        except TriggerError:
            continue
        out.append((spec, trigger))
    return out


def job_next_fire(*, job: Job, after: datetime) -> datetime | None:
    """The first tick of ``job`` strictly after ``after`` (aware), as the beat computes it: interval on its grid,
    cron in the project's time zone, once at ``run_at``. None when the job is disabled, a once job has run or its
    time has passed, or its settings do not build a trigger."""
    t = _epoch(after)
    for _spec, trigger in _specs_with_triggers(ids=[job.pk], now=t):
        at = trigger.next_after(t)
        return _aware(at) if at is not None else None
    return None


def jobs_due(*, within_s: float, now: datetime | None = None) -> dict:
    """The enabled jobs' ticks in ``(now, now + within_s]``::

        {"next_fire_at": datetime | None,     # the earliest tick of any active job, even past the window
         "next_job": {"id", "name", "project_id"} | None,
         "ticks": [{"at": datetime, "job": id, "name": str, "project_id": int}],  # in time order
         "truncated": bool}                   # more than JOBS_DUE_MAX ticks fell in the window

    ``within_s`` is clamped to 0..3600."""
    from django.utils import timezone

    now = now or timezone.now()
    start = _epoch(now)
    end = start + max(0.0, min(3600.0, float(within_s)))
    ticks: list[tuple[float, object]] = []
    first: tuple[float, object] | None = None
    truncated = False
    for spec, trigger in _specs_with_triggers(now=start):
        at = trigger.next_after(start)
        if at is None:
            continue
        if first is None or at < first[0]:
            first = (at, spec)
        while at is not None and at <= end:
            if len(ticks) >= JOBS_DUE_MAX:
                truncated = True
                break
            ticks.append((at, spec))
            at = trigger.next_after(at)
    ticks.sort(key=lambda item: (item[0], item[1].name))
    names = dict(Job.objects.filter(pk__in={-s.id for _t, s in ticks} | ({-first[1].id} if first else set()))
                 .values_list("pk", "project_id"))

    def job_of(spec) -> dict:
        return {"id": -spec.id, "name": spec.name, "project_id": names.get(-spec.id)}

    return {
        "next_fire_at": _aware(first[0]) if first else None,
        "next_job": job_of(first[1]) if first else None,
        "ticks": [{"at": _aware(t), "job": -s.id, "name": s.name, "project_id": names.get(-s.id)} for t, s in ticks],
        "truncated": truncated,
    }
