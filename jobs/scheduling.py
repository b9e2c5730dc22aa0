"""Jobs on hubsched's beat scheduler: GroupSpecs for Job rows, and a source that keeps the engine in step.

A job rides the same Engine as the groups (``groups.scheduler.engine``): same cohorts (a 60 s job shares its tick
instants with 60 s groups), lookahead with an eta, watermarks and the fencing epoch of high availability, misses
counted when beat falls behind. Two things keep it apart from groups:

- its spec's ``id`` and ``hub_id`` are both ``-job.pk`` (``job_spec_id``): negative ids never meet a group's or a
  hub's, and a "hub" of its own means one message per job and tick, so a job's tick never waits behind another's;
- the beat publishes a negative hub's ticks as ``jobs.tasks.job_tick_run(job_id, ticks, fence)`` on the jobs queue
  (``groups.scheduler.publish.BatchPublisher.send_job``), and the counters and missed ticks of negative ids go to
  JobStats and JobRun (``jobs.services.job_stats_add``, ``job_ticks_untaken_log``).

A tick's expiry is the job's grace (``Job.grace_seconds``): one second when a misfire is skipped, the grace time when it
may run late; a new leader sends the gap's ticks that are still within it (the worker runs the latest once).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from groups.scheduler.engine import Engine, GroupSpec

SLACK = timedelta(seconds=5)  # rows committed a little after their updated_at was stamped

_FIELDS = ("id", "name", "trigger", "period", "offset", "cron", "run_at", "enabled", "misfire", "misfire_grace",
           "project__time_zone", "stats__last_run_at")


def job_spec_id(job_id: int) -> int:
    """The engine's id (and hub id) of job ``job_id``: ``-job_id``; ``job_id_of`` is the reverse."""
    return -int(job_id)


def job_id_of(spec_id: int) -> int | None:
    """The job id of an engine id, or None when it is a group's."""
    return -spec_id if spec_id < 0 else None


def job_specs(*, ids=None, changed_since: datetime | None = None) -> list[GroupSpec]:
    """GroupSpecs of the given jobs, of those changed since a time, or of every job."""
    from .models import Job, Misfire

    qs = Job.objects.all()
    if changed_since is not None:
        qs = qs.filter(updated_at__gte=changed_since)
    if ids is not None:
        qs = qs.filter(pk__in=list(ids))
    specs = []
    for r in qs.values(*_FIELDS):
        run_at = r["run_at"].timestamp() if r["run_at"] else None
        active = bool(r["enabled"])
        if r["trigger"] == "once" and run_at is not None and r["stats__last_run_at"] is not None:
            active = active and r["stats__last_run_at"].timestamp() < run_at  # a once job runs once
        grace = r["misfire_grace"] if r["misfire"] == Misfire.RUN_LATE else 1.0
        sid = job_spec_id(r["id"])
        specs.append(GroupSpec(
            id=sid, hub_id=sid, trigger=r["trigger"], period=r["period"], offset=r["offset"] or 0.0, cron=r["cron"] or "",
            run_at=run_at, expires=grace, tz=r["project__time_zone"] or "UTC", active=active, hub_limit=1,
            name=r["name"], hub_name="jobs",
        ))
    return specs


class JobSource:
    """Keeps an Engine's jobs in step with the database: ``load()`` once, then ``poll()`` often (two small queries:
    jobs changed since a watermark, and a count that reveals deletions)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._since: datetime | None = None
        self._held: set[int] = set()

    def load(self) -> int:
        started = timezone.now()
        specs = job_specs()
        for spec in specs:
            self.engine.upsert(spec)
        self._held = {spec.id for spec in specs}
        self._since = started - SLACK
        return len(specs)

    def poll(self) -> int:
        """Apply what changed since the last poll; returns the number of jobs re-read."""
        from .models import Job

        started = timezone.now()
        changed = job_specs(changed_since=self._since)
        for spec in changed:
            self.engine.upsert(spec)
            self._held.add(spec.id)
        if Job.objects.count() != len(self._held):  # a deletion (maybe hidden by an insert)
            alive = {job_spec_id(pk) for pk in Job.objects.values_list("pk", flat=True)}
            for sid in self._held - alive:
                self.engine.remove(sid)
            missing = alive - self._held
            if missing:
                for spec in job_specs(ids=[job_id_of(sid) for sid in missing]):
                    self.engine.upsert(spec)
            self._held = alive
        self._since = started - SLACK
        return len(changed)
