"""``/api/v1`` endpoints of the installation itself: health (anonymous), status, the scheduler's plan, the workers.

``GET /health`` is the one endpoint without authentication (a load balancer, a container health check): it names
no host, URL or sink. The others need ``groups.view_group``: they show groups' errors and counters (status), when
and how many groups tick (scheduler), and which hub's batches each worker runs (workers), all of them facts about
groups, and a viewer may see groups. Nothing here writes.
"""

from __future__ import annotations

from typing import Any

from ninja import Field, Query, Router, Schema, Status

from .errors import ApiError
from .permissions import require
from .schemas import ErrorOut, responses

router = Router(tags=["system"])


# --- health ---------------------------------------------------------------------------------------------------------

class HealthCheckOut(Schema):
    ok: bool
    ms: float = Field(..., description="How long the check took, in milliseconds")
    error: str | None = Field(None, description="What failed: the error's class name, `timed out`, or a reason; "
                              "never a host, URL or secret")


class HealthSinksOut(HealthCheckOut):
    total: int | None = Field(None, description="Sinks tried: every enabled sink, and the default sink where a "
                              "project has none of its own")
    failed: int | None = None


class HealthChecksOut(Schema):
    database: HealthCheckOut
    broker: HealthCheckOut
    sinks: HealthSinksOut
    beat: HealthCheckOut = Field(..., description="A beat leads (holds the lease on Redis, the lock file on the embedded broker)")


class HealthOut(Schema):
    status: str = Field(..., description="`ok` when every check is, else `fail`")
    checks: HealthChecksOut


@router.get("/health", auth=None, response={200: HealthOut, 503: HealthOut, 429: ErrorOut}, exclude_none=True,
            summary="Whether the database, broker, sinks and beat answer (anonymous)")
def health(request):
    """200 when every check is ok, 503 otherwise; answers within about 2 s whatever is down
    (``hubsched.health.health_check``)."""
    from hubsched.health import health_check

    result = health_check()
    return Status(200 if result["status"] == "ok" else 503, result)


# --- status ---------------------------------------------------------------------------------------------------------

class StatusGroupOut(Schema):
    id: int
    name: str
    hub: str
    hub_id: int
    project: str
    project_id: int
    trigger: str
    enabled: bool
    last_run_at: str | None = Field(None, description="RFC 3339 UTC: the latest tick with an outcome")
    last_status: str | None = Field(None, description="ok, failed, skipped, missed or killed")
    last_error: str | None = Field(None, description="The error still standing (masked): null once the group "
                                   "ran ok again")
    last_error_at: str | None = Field(None, description="RFC 3339 UTC: the tick of the run that failed with last_error")
    previous_error: str | None = Field(None, description="An error an ok run has cleared since (masked): old")
    runs: int
    values: int
    dispatched: int
    started: int
    done: int
    failed: int
    skipped: int
    missed: int
    killed: int
    lag_ms_mean: float | None


class StatusOut(Schema):
    values_acquired: int
    beat: dict[str, Any] | None = Field(None, description="The leading beat, as in /scheduler's `leader`")
    log: dict[str, Any] = Field(..., description="The durable log and its consumers (streams.selectors.log_status)")
    redundancy: dict[str, Any]
    groups: list[StatusGroupOut]


@router.get("/status", response=responses(StatusOut, 401, 403), summary="Counters and last errors of every group")
def status(request):
    """``groups.selectors.status_summary``; needs ``groups.view_group``. Also at ``/api/status`` (deprecated)."""
    from groups.selectors import status_summary

    require(request, "groups.view_group")
    return status_summary()


# --- scheduler ------------------------------------------------------------------------------------------------------

class SchedulerQuery(Schema):
    within: float = Field(10.0, ge=0, le=3600, description="List the ticks due in the next this many seconds")


class SchedulerTickOut(Schema):
    at: str = Field(..., description="RFC 3339 UTC")
    groups: int
    hubs: int = Field(..., description="Hubs with groups at this tick: beat sends each one message")
    cohorts: list[str] = Field(..., description="The triggers ticking now: `interval 1 s`, `cron */5 * * * * * UTC`, `once`")


class SchedulerGroupsOut(Schema):
    total: int
    active: int = Field(..., description="Group, hub and PeriodicTask enabled")
    interval: int
    cron: int
    once: int
    on_change: int


class SchedulerCountersOut(Schema):
    dispatched: int
    started: int
    done: int
    failed: int
    skipped: int
    missed: int
    killed: int
    values: int


class BeatLeaderOut(Schema):
    owner: str | None = Field(None, description="host:pid:tag")
    host: str | None = None
    pid: int | None = None
    epoch: int | None = Field(None, description="The lease's fencing epoch (Redis); null on the embedded broker")
    since: str | None = Field(None, description="RFC 3339 UTC: when it took the lead")
    lease_until: str | None = None
    error: str | None = Field(None, description="The lease store did not answer")


class SchedulerJobTickOut(Schema):
    at: str = Field(..., description="RFC 3339 UTC")
    job: int
    name: str
    project_id: int | None


class SchedulerJobsOut(Schema):
    next_fire_at: str | None = Field(None, description="The earliest tick of an enabled job (RFC 3339 UTC)")
    next_job: dict[str, Any] | None = Field(None, description="That job: id, name, project_id")
    ticks: list[SchedulerJobTickOut] = Field(..., description="The jobs' ticks due within the window")
    ticks_truncated: bool


class SchedulerOut(Schema):
    now: str
    within_s: float
    next_tick_at: str | None = Field(None, description="The earliest tick of an active timed group")
    next_wakeup: str | None = Field(None, description="When beat sends it: the tick less its lead")
    ticks: list[SchedulerTickOut]
    ticks_truncated: bool
    groups: SchedulerGroupsOut
    counters: SchedulerCountersOut
    leader: BeatLeaderOut | None = Field(None, description="The leading beat; null while none leads")
    jobs: SchedulerJobsOut | None = Field(None, description="The jobs' next tick and ticks due within the window "
                                          "(jobs.selectors.jobs_due); null without jobs.view_job")


@router.get("/scheduler", response=responses(SchedulerOut, 401, 403, 422),
            summary="The next wakeup, the ticks due soon, counters and the leading beat")
def scheduler(request, query: Query[SchedulerQuery]):
    """``groups.selectors.scheduler_summary``; needs ``groups.view_group``."""
    from groups.selectors import scheduler_summary

    require(request, "groups.view_group")
    summary = scheduler_summary(within_s=query.within)
    if request.user.has_perm("jobs.view_job"):
        from jobs.selectors import jobs_due

        def iso(t):
            return t.isoformat().replace("+00:00", "Z") if t else None

        due = jobs_due(within_s=query.within)
        summary["jobs"] = {"next_fire_at": iso(due["next_fire_at"]), "next_job": due["next_job"],
                           "ticks": [{**t, "at": iso(t["at"])} for t in due["ticks"]],
                           "ticks_truncated": due["truncated"]}
    return summary


# --- workers --------------------------------------------------------------------------------------------------------

class WorkersQuery(Schema):
    timeout: float = Field(1.0, ge=0.1, le=5.0, description="Seconds to wait for the workers' answers")


class WorkerTaskOut(Schema):
    id: str | None
    name: str | None
    args: str = Field(..., description="The task's argsrepr, masked (a batch: its hub, groups and ticks)")
    started_at: str | None
    worker_pid: int | None


class WorkerOut(Schema):
    name: str = Field(..., description="The worker's node name (celery@host)")
    host: str
    pid: int | None
    pool: str | None = Field(None, description="threads, prefork, solo...")
    concurrency: int | None
    prefetch_count: int | None
    queues: list[str]
    started_at: str | None
    uptime_s: float | None
    last_heartbeat: str | None = Field(None, description="RFC 3339 UTC: when it answered this inspection")
    tasks_accepted: int | None = Field(None, description="Tasks it has accepted since it started")
    active: list[WorkerTaskOut] = Field(..., description="What it is running now")


@router.get("/workers", response=responses(list[WorkerOut], 401, 403, 422) | {503: ErrorOut},
            summary="The Celery workers that answer, with what each runs")
def workers(request, query: Query[WorkersQuery]):
    """``hubsched.workers.workers_inspect`` (Celery's remote inspection: stats, active_queues, active); needs
    ``groups.view_group``. An empty list when no worker answers within ``timeout``; 503 when the broker does not."""
    from hubsched.workers import WorkersError, workers_inspect

    require(request, "groups.view_group")
    try:
        return workers_inspect(timeout=query.timeout)
    except WorkersError as exc:
        raise ApiError(503, str(exc)) from None
