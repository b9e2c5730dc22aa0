"""/api/v1 endpoints of the jobs app: jobs (list, get, add, change, remove), their actions (run now, enable,
disable), their runs with the logs, kill, and a live tail of a running one (SSE). A ninja Router, added in
api/v1.py; docs/api.md, "Jobs".

Views parse, check the permission (``api.permissions.require``) and call one service of jobs/services.py or
selector of jobs/selectors.py; the rules are the model's (``Job.full_clean``: jobs/validators.py), answered as
422 with each problem at its path (``argv[0]``). Header VALUES are never answered: each is ``***``; a PATCH
giving ``***`` for a header keeps its stored value.
"""

import re
from datetime import datetime
from typing import Annotated, Any

from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Field, Path, Query, Router, Schema, Status
from ninja.pagination import paginate

from api.errors import ApiError, django_validation_details
from api.permissions import require
from api.schemas import In, OfProject, Page, responses

from .models import Job, JobKind, JobRun, JobRunStatus, JobTrigger, Misfire, Overlap

router = Router(tags=["jobs"])

MAX_ID = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="run id")]
MASK = "***"  # what a header's value is answered as; given back on PATCH, the stored value stays


def _default(name: str):
    return Job._meta.get_field(name).get_default()


# --- schemas ---------------------------------------------------------------------------------------------


class JobFields(In):
    """What a job is; every field's rule is the model's (422 with its path when broken)."""

    title: str = Field("", description="a longer label (ruqi's job_name)")
    trigger: str = Field(_default("trigger"), description=", ".join(JobTrigger.values))
    period: float = Field(_default("period"), description="interval: seconds between ticks (0.1 and up)")
    offset: float = Field(_default("offset"), description="interval: shift of the tick grid, seconds")
    cron: str = Field("", description="cron: six fields, seconds first (0 20 2 * * *), in the project's time zone")
    run_at: datetime | None = Field(None, description="once: when to run (ISO 8601 with offset)")
    kind: str = Field(_default("kind"), description=", ".join(JobKind.values))
    argv: list[Any] = Field(default_factory=list, description='shell: ["bash", "scripts/x.sh"]; never a shell string')
    working_directory: str = Field("", description="shell: relative to HUBSCHED_JOBS_DIR")
    environment: dict[str, Any] = Field(default_factory=dict, description="shell: variables, name to string")
    method: str = Field(_default("method"), description="http: GET, POST, PUT, PATCH, DELETE")
    url: str = Field("", description="http: the http:// or https:// URL")
    headers: dict[str, Any] = Field(default_factory=dict, description=f"http: name to value; answered as {MASK}")
    body: Any = Field(None, description="http: the JSON body; null sends none")
    success_codes: str = Field(_default("success_codes"), description="http: 200-299,304")
    script: Id | None = Field(None, description="script: id of a script of the job's project")
    timeout: float | None = Field(_default("timeout"), description="seconds per attempt; null: none")
    retries: int = Field(_default("retries"), description="attempts after a failed one (0-20)")
    retry_backoff: float = Field(_default("retry_backoff"), description="seconds before the first retry, doubled after")
    overlap: str = Field(_default("overlap"), description=", ".join(Overlap.values))
    misfire: str = Field(_default("misfire"), description=", ".join(Misfire.values))
    misfire_grace: float = Field(_default("misfire_grace"), description="run_late: seconds a tick may start late")
    output_limit_kib: int = Field(_default("output_limit_kib"), description="KiB kept of stdout and of stderr per run")
    enabled: bool = Field(_default("enabled"), description="a disabled job is not scheduled (run now still works)")


class JobIn(JobFields):
    project: Id = Field(..., description="id of the owning project")
    name: str = Field(..., description="unique within the project (ruqi's job_id)")


class JobPatch(In):
    """A change: only the fields given change (``null`` clears a nullable one)."""

    project: Id | None = None
    name: str | None = None
    title: str | None = None
    trigger: str | None = None
    period: float | None = None
    offset: float | None = None
    cron: str | None = None
    run_at: datetime | None = None
    kind: str | None = None
    argv: list[Any] | None = None
    working_directory: str | None = None
    environment: dict[str, Any] | None = None
    method: str | None = None
    url: str | None = None
    headers: dict[str, Any] | None = None
    body: Any = None
    success_codes: str | None = None
    script: Id | None = None
    timeout: float | None = None
    retries: int | None = None
    retry_backoff: float | None = None
    overlap: str | None = None
    misfire: str | None = None
    misfire_grace: float | None = None
    output_limit_kib: int | None = None
    enabled: bool | None = None


NOT_NULL = {"project", "name", "title", "trigger", "period", "offset", "cron", "kind", "argv", "working_directory",
            "environment", "method", "url", "headers", "success_codes", "retries", "retry_backoff", "overlap",
            "misfire", "misfire_grace", "output_limit_kib", "enabled"}


class JobStatsOut(Schema):
    dispatched: int = Field(..., description="ticks sent to workers")
    missed: int = Field(..., description="ticks the beat passed over")
    failures: int = Field(..., description="runs that ended failed, timed out, killed or lost")
    last_run_at: datetime | None


class JobOut(OfProject):
    name: str
    title: str
    trigger: str
    period: float
    offset: float
    cron: str
    run_at: datetime | None
    kind: str
    argv: list[Any]
    working_directory: str
    environment: dict[str, Any]
    method: str
    url: str
    headers: dict[str, str] = Field(..., description=f"names, each value answered as {MASK}")
    body: Any
    success_codes: str
    script: int | None
    timeout: float | None
    retries: int
    retry_backoff: float
    overlap: str
    misfire: str
    misfire_grace: float
    output_limit_kib: int
    enabled: bool
    updated_at: datetime
    next_fire_at: datetime | None = Field(..., description="the next tick, as the beat computes it; null when "
                                          "disabled or a once job is past")
    stats: JobStatsOut

    @staticmethod
    def resolve_script(obj) -> int | None:
        return obj.script_id

    @staticmethod
    def resolve_headers(obj) -> dict[str, str]:
        return {name: MASK for name in (obj.headers or {})}

    @staticmethod
    def resolve_next_fire_at(obj) -> datetime | None:
        from .selectors import job_next_fire

        return job_next_fire(job=obj, after=timezone.now())

    @staticmethod
    def resolve_stats(obj) -> dict[str, Any]:
        from .models import JobStats

        stats = getattr(obj, "stats", None) if hasattr(obj, "stats") else None
        stats = stats or JobStats(job_id=obj.pk)
        return {"dispatched": stats.dispatched, "missed": stats.missed, "failures": stats.failures,
                "last_run_at": stats.last_run_at}


class JobFilter(Schema):
    project: Id | None = Field(None, description="project id")
    kind: str | None = Field(None, description=", ".join(JobKind.values))
    enabled: bool | None = None
    trigger: str | None = Field(None, description=", ".join(JobTrigger.values))
    search: str | None = Field(None, description="part of the name or title, any case")


class DeletedOut(Schema):
    id: int
    runs: int = Field(..., description="runs deleted with the job (a running one was killed first)")


class RunQueuedOut(Schema):
    scheduled_for: datetime = Field(..., description="the run's tick: find it under /runs once a worker took it")


class RunOut(Schema):
    id: int
    job: int
    status: str = Field(..., description=", ".join(JobRunStatus.values))
    scheduled_for: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    attempts: int
    exit_code: int | None
    http_status: int | None
    error: str
    worker: str
    requested_by: str = Field(..., description="who ran it now; empty: the schedule")
    kill_requested_at: datetime | None
    killed_by: str
    stdout: str = Field(..., description="the last output_limit_kib KiB of standard output (HTTP: the first of the body)")
    stderr: str
    stdout_bytes: int = Field(..., description="all standard output written")
    stderr_bytes: int

    @staticmethod
    def resolve_job(obj) -> int:
        return obj.job_id


class RunFilter(Schema):
    status: str | None = Field(None, description=", ".join(JobRunStatus.values))


# --- helpers ---------------------------------------------------------------------------------------------

_PATH_IN_MESSAGE = re.compile(r"^([A-Za-z_]+(?:\[\d+\]|\.[^:\s]+)+): (.*)$", re.S)


def invalid(exc: ValidationError) -> ApiError:
    """A ``Job.full_clean`` error as the API's 422; ``"argv[0]: the program is empty"`` under ``argv`` gets the
    path ``argv[0]`` (the model's clean puts the inner path at the start of the message)."""
    details = []
    for d in django_validation_details(exc):
        match = _PATH_IN_MESSAGE.match(d["message"])
        if match and (not d["path"] or match.group(1).startswith(d["path"])):
            d = {"path": match.group(1), "message": match.group(2)}
        details.append(d)
    return ApiError(422, "the request did not pass validation", details=details)


def _tz_aware(value: datetime | None, path: str) -> None:
    if value is not None and value.tzinfo is None:
        raise ApiError(422, "the request did not pass validation",
                       details=[{"path": path, "message": "expected an ISO 8601 time with a UTC offset (or Z)"}])


def _shell_check(request, *, kind: str, was_shell: bool = False) -> None:
    from .services import job_shell_problem

    problem = job_shell_problem(user=request.user, kind=kind, was_shell=was_shell)
    if problem:
        raise ApiError(403, problem, details=[{"path": "kind", "message": problem}])


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    """A body's fields as the model's: ``script`` -> ``script_id``, ``project`` -> ``project_id``."""
    out = dict(data)
    if "script" in out:
        out["script_id"] = out.pop("script")
    if "project" in out:
        out["project_id"] = out.pop("project")
    return out


def _script_check(script_id: int | None) -> None:
    """422 at ``script`` for an id of no script (Job.clean() would read the missing row and fail)."""
    from scripts_engine.models import Script

    if script_id is not None and not Script.objects.filter(pk=script_id).exists():
        raise ApiError(422, "the request did not pass validation",
                       details=[{"path": "script", "message": f"no script with id {script_id}"}])


def _job(job_id: int) -> Job:
    from .selectors import jobs_list

    return get_object_or_404(jobs_list(), pk=job_id)


def _headers_merged(given: dict[str, Any], stored: dict[str, str]) -> dict[str, Any]:
    """``given`` with each ``***`` value replaced by the stored value of that header (422 when it has none)."""
    out = {}
    for name, value in given.items():
        if value == MASK:
            if name not in (stored or {}):
                raise ApiError(422, "the request did not pass validation", details=[
                    {"path": f"headers.{name}", "message": f"{MASK} keeps a stored value, and this header has none"}])
            value = stored[name]
        out[name] = value
    return out


# --- jobs ------------------------------------------------------------------------------------------------


@router.get("/jobs", response=responses(list[JobOut], 400, 401, 403, 422), summary="List jobs")
@paginate(Page)
def jobs_list_view(request, filters: Query[JobFilter]):
    """Jobs ordered by project and name, with their counters and next tick; filter by ``project`` (id),
    ``kind``, ``enabled``, ``trigger``; ``search`` in the name or title. Needs ``jobs.view_job``."""
    from .selectors import jobs_list

    require(request, "jobs.view_job")
    return jobs_list(project_id=filters.project, kind=filters.kind, enabled=filters.enabled, trigger=filters.trigger,
                     search=filters.search)


@router.get("/jobs/{int:job_id}", response=responses(JobOut, 401, 403, 404, 422), summary="Get a job")
def job_get(request, job_id: JobId):
    """One job. Needs ``jobs.view_job``."""
    require(request, "jobs.view_job")
    return _job(job_id)


@router.post("/jobs", response=responses({201: JobOut}, 400, 401, 403, 409, 422), summary="Create a job")
def job_create_view(request, payload: JobIn):
    """A new job, scheduled at once (the beat reads changed jobs). 422 with each problem at its path. Needs
    ``jobs.add_job``; a shell job also ``jobs.shell_job`` (403 without it)."""
    from .services import job_create

    require(request, "jobs.add_job")
    _shell_check(request, kind=payload.kind)
    _tz_aware(payload.run_at, "run_at")
    _script_check(payload.script)
    fields = _fields(payload.model_dump())
    try:
        job = job_create(**fields)
    except ValidationError as exc:
        raise invalid(exc) from None
    return Status(201, _job(job.pk))


@router.patch("/jobs/{int:job_id}", response=responses(JobOut, 400, 401, 403, 404, 409, 422), summary="Change a job")
def job_update(request, job_id: JobId, payload: JobPatch):
    """Change the fields given; a header given as ``***`` keeps its stored value. Needs ``jobs.change_job``; a
    shell job (before or after the change) also ``jobs.shell_job``."""
    from .services import job_change

    require(request, "jobs.change_job")
    job = get_object_or_404(Job.objects.select_related("project"), pk=job_id)
    changes = payload.model_dump(exclude_unset=True)
    for name in sorted(NOT_NULL & {k for k, v in changes.items() if v is None}):
        raise ApiError(422, "the request did not pass validation",
                       details=[{"path": name, "message": "may not be null"}])
    _shell_check(request, kind=changes.get("kind", job.kind), was_shell=job.kind == JobKind.SHELL)
    _tz_aware(changes.get("run_at"), "run_at")
    _script_check(changes.get("script"))
    if "headers" in changes:
        changes["headers"] = _headers_merged(changes["headers"], job.headers)
    try:
        job_change(job=job, changes=_fields(changes))
    except ValidationError as exc:
        raise invalid(exc) from None
    return _job(job_id)


@router.delete("/jobs/{int:job_id}", response=responses(DeletedOut, 401, 403, 404, 422), summary="Delete a job")
def job_delete_view(request, job_id: JobId):
    """Delete a job with its runs and counters (a run still running is killed first); answers what went with
    it. Needs ``jobs.delete_job``."""
    from .services import job_delete

    require(request, "jobs.delete_job")
    job = get_object_or_404(Job, pk=job_id)
    return {"id": job_id, **job_delete(job=job)}


@router.post("/jobs/{int:job_id}/run", response=responses({202: RunQueuedOut}, 401, 403, 404, 422),
             summary="Run a job now")
def job_run_now_view(request, job_id: JobId):
    """Send one run to the jobs queue now (a disabled job runs too: a person asked); its overlap policy applies.
    Needs ``jobs.run_job``."""
    from .services import job_run_now

    require(request, "jobs.run_job")
    job = get_object_or_404(Job, pk=job_id)
    return Status(202, {"scheduled_for": job_run_now(job=job, requested_by=request.user.get_username())})


@router.post("/jobs/{int:job_id}/enable", response=responses(JobOut, 401, 403, 404, 422), summary="Enable a job")
def job_enable(request, job_id: JobId):
    """Enable the job: scheduled again. Needs ``jobs.enable_job``."""
    from .services import job_set_enabled

    require(request, "jobs.enable_job")
    job_set_enabled(job=get_object_or_404(Job, pk=job_id), enabled=True)
    return _job(job_id)


@router.post("/jobs/{int:job_id}/disable", response=responses(JobOut, 401, 403, 404, 422), summary="Disable a job")
def job_disable(request, job_id: JobId):
    """Disable the job: no longer scheduled (a running run goes on; kill stops it). Needs ``jobs.enable_job``."""
    from .services import job_set_enabled

    require(request, "jobs.enable_job")
    job_set_enabled(job=get_object_or_404(Job, pk=job_id), enabled=False)
    return _job(job_id)


# --- runs ------------------------------------------------------------------------------------------------


@router.get("/jobs/{int:job_id}/runs", response=responses(list[RunOut], 400, 401, 403, 404, 422),
            summary="Runs of a job, with their logs")
@paginate(Page)
def job_runs(request, job_id: JobId, filters: Query[RunFilter]):
    """The job's runs, newest tick first (``?limit=5``), each with its output (``stdout``, ``stderr``: the kept
    part; ``*_bytes``: the full sizes); ``status`` filters. Needs ``jobs.view_job``."""
    from .selectors import job_runs_list

    require(request, "jobs.view_job")
    job = get_object_or_404(Job, pk=job_id)
    if filters.status and filters.status not in JobRunStatus.values:
        raise ApiError(422, "the request did not pass validation",
                       details=[{"path": "status", "message": f"expected one of {', '.join(JobRunStatus.values)}"}])
    return job_runs_list(job_id=job.pk, status=filters.status)


@router.get("/jobs/{int:job_id}/runs/{int:run_id}", response=responses(RunOut, 401, 403, 404, 422),
            summary="One run of a job, with its log")
def job_run_get(request, job_id: JobId, run_id: RunId):
    """One run with its output. Needs ``jobs.view_job``."""
    require(request, "jobs.view_job")
    return get_object_or_404(JobRun, pk=run_id, job_id=job_id)


@router.post("/jobs/{int:job_id}/runs/{int:run_id}/kill", response=responses({202: RunOut}, 401, 403, 404, 409, 422),
             summary="Kill a running run")
def job_run_kill_view(request, job_id: JobId, run_id: RunId):
    """Ask the worker running it to stop it (SIGTERM, then SIGKILL after HUBSCHED_JOBS_KILL_GRACE_S): 202 with
    ``kill_requested_at`` set; the run ends ``killed`` within about a second. 409 when it is not running.
    Needs ``jobs.kill_job``."""
    from .services import job_run_kill

    require(request, "jobs.kill_job")
    run = get_object_or_404(JobRun, pk=run_id, job_id=job_id)
    try:
        run = job_run_kill(run=run, by=request.user.get_username())
    except ValidationError as exc:
        raise ApiError(409, exc.messages[0]) from None
    return Status(202, run)


SSE = {"description": "The run's output as Server-Sent Events (jobs/sse.py): `event: stdout`/`stderr` with "
       '`data: {"text", "offset"}`, `event: skipped` with `{"stream", "bytes"}`, one `event: end` with the final '
       "status, and `: keep-alive` after 15 s of silence.",
       "content": {"text/event-stream": {"schema": {"type": "string"}}}}


@router.get("/jobs/{int:job_id}/runs/{int:run_id}/tail", response=responses({}, 401, 403, 404, 422),
            summary="Live tail of a run's output (SSE)", openapi_extra={"responses": {200: SSE}})
def job_run_tail(request, job_id: JobId, run_id: RunId):
    """The output so far, then each new part as the worker writes it (read every 0.5 s), then ``end``; at once
    for a finished run. Needs ``jobs.view_job`` (checked before anything is sent)."""
    from .sse import tail_respond

    require(request, "jobs.view_job")
    run = get_object_or_404(JobRun.objects.select_related("job"), pk=run_id, job_id=job_id)
    return tail_respond(request, run_id=run.pk, head=run.job.kind == JobKind.HTTP)
