"""The worker side of a job: the fence, the misfire policy, the overlap policy, then the command's attempts.

``job_ticks_run`` handles one message of the beat (one job's due ticks, ``jobs.tasks.job_tick_run``):

1. A tick of a beat round that was never committed is refused, as for groups (``groups.scheduler.leader``).
2. Never before its time: a message up to ``EARLY_WAIT_MAX_S`` early waits, one earlier is sent back with a countdown.
3. **Misfire** (APScheduler's ``misfire_grace_time`` with coalescing): a tick that cannot start within its grace
   (``Job.grace_seconds``: one second with ``skip``, ``misfire_grace`` with ``run_late``) is recorded ``missed``; of
   several ticks still within it (a new leader sending a gap), only the latest runs, the others are ``missed``
   ("coalesced").
4. **Overlap** (Nomad's ``prohibit_overlap``, Kubernetes' ``concurrencyPolicy``), decided under a row lock of the
   job so two workers starting the same job at once see each other: ``forbid`` records the tick ``skipped`` while a
   run is running; ``replace`` asks the running ones to stop (as a kill, ``killed_by`` naming the new run) and waits
   for them before starting; ``allow`` starts.
5. The command runs (``jobs.runner.command_run``), up to ``1 + retries`` attempts with a doubling backoff. While it
   runs the row is the run's heartbeat and live output (about once a second) and its kill switch (read every half
   second). A run whose worker stops beating is recorded ``lost`` by the next run of the job
   (``HUBSCHED_JOBS_LOST_AFTER_S``).

Every tick ends in one JobRun (unique per job and tick): ok, failed, timeout, killed, skipped, missed or lost.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import datetime, timedelta, timezone as tz

from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from .models import Job, JobRun, JobRunStatus, JobStats, Overlap

logger = logging.getLogger(__name__)

EARLY_WAIT_MAX_S = 1.0
KILL_POLL_S = 0.5  # how often a running job reads its kill switch
BACKOFF_MAX_S = 3600.0
REPLACE_WAIT_EXTRA_S = 5.0  # beyond the kill grace, how long a replacing run waits for the old one to end


def job_ticks_run(*, job_id: int, ticks: list, fence: list | None = None, fences=None) -> dict:
    """Run one job's ``ticks = [[scheduled_for epoch s, grace_s, rr, ids], ...]`` as the beat sent them.

    Returns the outcome in counts: ``{"ran", "ok", "failed", "skipped", "missed"}``, ``{"refused": True}`` (its beat
    round was fenced off: the new leader sends those ticks), ``{"requeued": n, "countdown_s"}``, or ``{"gone": True}``
    (the job was deleted). Never raises for the command's fault."""
    if fence is not None:
        if fences is None:
            from groups.scheduler.leader import fence_checker

            fences = fence_checker()
        if fences is not None and not fences.admit(fence):
            logger.info("job %s: ticks of beat round %s refused: that beat no longer leads", job_id, fence)
            return {"refused": True}
    job = Job.objects.select_related("project", "script").filter(pk=job_id).first()
    if job is None:
        return {"gone": True}
    ticks = sorted(ticks, key=lambda tick: tick[0])
    now = time.time()
    early = ticks[0][0] - now if ticks else 0.0
    if early > EARLY_WAIT_MAX_S:
        from .tasks import job_tick_run

        args = (job_id, ticks) if fence is None else (job_id, ticks, fence)
        job_tick_run.apply_async(args=args, countdown=early)
        return {"requeued": len(ticks), "countdown_s": round(early, 3)}
    if early > 0:
        time.sleep(early)
        now = time.time()
    untaken: list[tuple[int, float, str, str]] = []
    live = []
    for t, grace, _rr, _ids in ticks:
        if now - t > grace:
            untaken.append((job.pk, t, "missed", f"not started within its misfire grace ({grace:g} s): {now - t:.1f} s late"))
        else:
            live.append(t)
    if len(live) > 1:  # coalescing: several owed ticks run once, as the latest
        latest = _at(live[-1])
        untaken.extend((job.pk, t, "missed", f"coalesced into the run of {latest.isoformat()}") for t in live[:-1])
        live = live[-1:]
    if untaken:
        from .services import job_ticks_untaken_log

        job_ticks_untaken_log(untaken=untaken)
    out = {"ran": 0, "ok": 0, "failed": 0, "skipped": 0, "missed": len(untaken)}
    for t in live:
        run = job_execute(job_id=job.pk, scheduled_for=_at(t), job=job)
        if run is None:
            continue
        if run.status == JobRunStatus.SKIPPED:
            out["skipped"] += 1
        else:
            out["ran"] += 1
            out["ok" if run.status == JobRunStatus.OK else "failed"] += 1
    return out


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz.utc)


def _worker_name() -> str:
    try:
        from celery import current_task

        hostname = getattr(current_task.request, "hostname", None) if current_task else None
    except Exception:
        hostname = None
    return (hostname or socket.gethostname())[:300]


def job_runs_lost_sweep(*, job_id: int, now: datetime | None = None) -> int:
    """Record ``lost`` the runs of ``job_id`` still ``running`` whose worker has not beaten for
    ``HUBSCHED_JOBS_LOST_AFTER_S`` (its worker was killed or cut off: the outcome is unknown); returns how many."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.HUBSCHED_JOBS_LOST_AFTER_S)
    lost = JobRun.objects.filter(job_id=job_id, status=JobRunStatus.RUNNING, heartbeat_at__lt=stale)
    ids = list(lost.values_list("pk", flat=True))
    if ids:
        JobRun.objects.filter(pk__in=ids, status=JobRunStatus.RUNNING).update(
            status=JobRunStatus.LOST, finished_at=now,
            error=f"its worker stopped beating for more than {settings.HUBSCHED_JOBS_LOST_AFTER_S:g} s "
                  "(killed, or cut off): the outcome is unknown",
        )
        _failures_count(job_id, len(ids))
        for pk in ids:
            logger.warning("job %s: run %s lost (its worker stopped beating)", job_id, pk)
    return len(ids)


def job_execute(*, job_id: int, scheduled_for: datetime, requested_by: str = "", job: Job | None = None) -> JobRun | None:
    """Run job ``job_id`` for the tick ``scheduled_for`` under its overlap policy; returns its JobRun (None: the job is
    gone, or the tick was already recorded by another delivery of the same message, which then is returned)."""
    job = job or Job.objects.select_related("project", "script").filter(pk=job_id).first()
    if job is None:
        return None
    job_runs_lost_sweep(job_id=job.pk)
    worker = _worker_name()
    try:
        with transaction.atomic():
            # serializes the overlap decision of one job between workers (PostgreSQL, MariaDB; SQLite writes are serial)
            list(Job.objects.select_for_update().filter(pk=job.pk).values_list("pk", flat=True))
            running = list(JobRun.objects.filter(job_id=job.pk, status=JobRunStatus.RUNNING).values_list("pk", flat=True))
            now = timezone.now()
            if running and job.overlap == Overlap.FORBID:
                return JobRun.objects.create(
                    job=job, scheduled_for=scheduled_for, requested_by=requested_by, status=JobRunStatus.SKIPPED,
                    finished_at=now, worker=worker,
                    error=f"run {running[0]} was still running (overlap: forbid)",
                )
            run = JobRun.objects.create(
                job=job, scheduled_for=scheduled_for, requested_by=requested_by, status=JobRunStatus.RUNNING,
                started_at=now, heartbeat_at=now, worker=worker,
            )
    except IntegrityError:  # the tick is recorded already: a redelivered message runs nothing twice
        return JobRun.objects.filter(job_id=job.pk, scheduled_for=scheduled_for).first()
    _last_run(job.pk, scheduled_for)
    if running and job.overlap == Overlap.REPLACE:
        _replace(job, running, run)
    try:
        _attempts(job, run)
    except Exception as exc:  # the runner itself failed: the run still ends with an outcome
        logger.exception("job %s: run %s failed outside its command", job.pk, run.pk)
        _finish(run, status=JobRunStatus.FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
    run.refresh_from_db()
    if run.status != JobRunStatus.OK:
        job_failure_alert(job=job, run=run)
    else:
        _failure_alarm_clear(job=job, run=run)
    return run


def _last_run(job_id: int, scheduled_for: datetime) -> None:
    JobStats.objects.get_or_create(job_id=job_id)
    JobStats.objects.filter(job_id=job_id).update(last_run_at=scheduled_for)


def _failures_count(job_id: int, n: int = 1) -> None:
    JobStats.objects.get_or_create(job_id=job_id)
    JobStats.objects.filter(job_id=job_id).update(failures=F("failures") + n)


def _replace(job: Job, running: list[int], run: JobRun) -> None:
    """Overlap ``replace``: stop the runs ``running`` (as kills by "replaced by run N") and wait for them to end."""
    from .services import job_run_kill

    for old in JobRun.objects.filter(pk__in=running, status=JobRunStatus.RUNNING):
        try:
            job_run_kill(run=old, by=f"replaced by run {run.pk}")
        except Exception:  # it ended meanwhile
            pass
    deadline = time.monotonic() + settings.HUBSCHED_JOBS_KILL_GRACE_S + REPLACE_WAIT_EXTRA_S
    while time.monotonic() < deadline:
        if not JobRun.objects.filter(pk__in=running, status=JobRunStatus.RUNNING).exists():
            return
        _beat(run)
        time.sleep(0.2)
    logger.warning("job %s: run %s starts while replaced runs %s have not ended yet", job.pk, run.pk, running)


def _beat(run: JobRun, **fields) -> None:
    JobRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now(), **fields)


class _KillSwitch:
    """``should_stop()`` for the runner: the run's ``kill_requested_at``, read at most every ``KILL_POLL_S``."""

    def __init__(self, run: JobRun):
        self.run_id = run.pk
        self.reason: str | None = None
        self._next = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        with self._lock:
            if self.reason is not None or time.monotonic() < self._next:
                return self.reason
            self._next = time.monotonic() + KILL_POLL_S
            try:
                row = JobRun.objects.filter(pk=self.run_id).values_list("kill_requested_at", "killed_by").first()
            except Exception:
                logger.exception("job run %s: could not read its kill switch", self.run_id)
                return None
            if row and row[0] is not None:
                who = row[1] or "someone"
                self.reason = who if who.startswith("replaced by") else f"killed by {who}"
            return self.reason


def _attempts(job: Job, run: JobRun) -> None:
    from .runner import Command, command_run

    command = Command.from_job(job)
    stop = _KillSwitch(run)
    limit = job.output_limit_kib * 1024
    retries = job.retries
    attempt = None
    for n in range(retries + 1):
        JobRun.objects.filter(pk=run.pk).update(attempts=n + 1)

        def progress(p, _run=run):
            try:
                _beat(_run, pid=p.pid, stdout=p.stdout, stderr=p.stderr, stdout_bytes=p.stdout_bytes,
                      stderr_bytes=p.stderr_bytes)
            except Exception:
                logger.exception("job run %s: could not write its progress", _run.pk)
            finally:
                if threading.current_thread() is not threading.main_thread():
                    close_old_connections()

        attempt = command_run(command, timeout=job.timeout, output_limit=limit, on_progress=progress, should_stop=stop)
        if attempt.status in ("ok", "killed") or n == retries:
            break
        wait = min(job.retry_backoff * (2 ** n), BACKOFF_MAX_S)
        logger.info("job %s: attempt %d of run %s %s (%s); retrying in %.1f s", job.pk, n + 1, run.pk, attempt.status,
                    attempt.error, wait)
        _beat(run, error=f"attempt {n + 1}: {attempt.error}; retrying in {wait:g} s")
        deadline = time.monotonic() + wait
        next_beat = time.monotonic() + 1.0
        while time.monotonic() < deadline and stop() is None:  # the backoff: a kill still stops it, beats go on
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= next_beat:
                _beat(run)
                next_beat = time.monotonic() + 1.0
        if stop() is not None:
            attempt.status, attempt.error = "killed", stop()
            break
    status = {"ok": JobRunStatus.OK, "timeout": JobRunStatus.TIMEOUT, "killed": JobRunStatus.KILLED}.get(
        attempt.status, JobRunStatus.FAILED)
    error = attempt.error
    if retries and attempt.status != "ok" and n > 0:
        error = f"{error} (after {n + 1} attempts)"
    _finish(run, status=status, error=error, exit_code=attempt.exit_code, http_status=attempt.http_status,
            stdout=attempt.stdout, stderr=attempt.stderr, stdout_bytes=attempt.stdout_bytes,
            stderr_bytes=attempt.stderr_bytes, pid=attempt.pid)


def _finish(run: JobRun, *, status: str, error: str = "", **fields) -> None:
    now = timezone.now()
    JobRun.objects.filter(pk=run.pk).update(status=status, error=error[:10_000], finished_at=now, heartbeat_at=now,
                                            **fields)


def job_failure_alert(*, job: Job, run: JobRun) -> None:
    """A failed, timed-out or killed run: counted in JobStats.failures, logged at WARNING, and the system alarm
    ``job_failed`` of ``job:<id>`` raised (severity high; its routes notify: docs/alarms.md), cleared by the job's next
    ok run. A skipped or missed tick is no failure: it is the job's policy at work (docs/jobs.md, "Failure alerts")."""
    if run.status not in (JobRunStatus.FAILED, JobRunStatus.TIMEOUT, JobRunStatus.KILLED):
        return
    _failures_count(job.pk)
    logger.warning("job %s (%s): run %s %s: %s", job.name, job.pk, run.pk, run.status, run.error)
    try:
        from alarms.services import alarm_raise

        alarm_raise(project_id=job.project_id, source="system", kind="job_failed", subject=f"job:{job.pk}",
                    severity="high", message=f"job {job.name}: run {run.pk} {run.status}: {run.error[:300]}",
                    values={"run": run.pk, "status": run.status, "exit_code": run.exit_code,
                            "http_status": run.http_status, "error": run.error[:1000]})
    except Exception:  # the run's outcome is recorded already; an alarm that cannot be raised is logged
        logger.exception("job %s: could not raise its failure alarm", job.pk)


def _failure_alarm_clear(*, job: Job, run: JobRun) -> None:
    from alarms.models import Alarm
    from alarms.services import alarm_clear, alarm_identity

    identity = alarm_identity(source="system", kind="job_failed", subject=f"job:{job.pk}")
    try:
        if Alarm.objects.open().filter(identity=identity).exists():
            alarm_clear(identity=identity, values={"run": run.pk, "status": run.status})
    except Exception:
        logger.exception("job %s: could not clear its failure alarm", job.pk)
