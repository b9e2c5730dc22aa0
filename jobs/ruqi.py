"""ruqi compatibility: ruqi's HTTP API (``/ruqi/get_jobs``, ``status``, ``add_job``, ``modify_job``,
``remove_job``) on hubsched's jobs, so a ruqi user switches by changing an address and adding an API token.

ruqi is the scheduler of meetbill/butterfly (handlers/ruqi.py, xlib/apscheduler/manager.py); its answers are
``{"stat": "OK", ...}``. Its jobs live in one project, ``settings.HUBSCHED_RUQI_PROJECT`` (a name, default
``ruqi``; made by the first add_job). ``job_id`` is Job.name, ``job_name`` Job.title. Rules and commands are
parsed here into Job fields (``rule_fields``, ``cmd_fields``) and shown back the ruqi way (``rule_text``,
``cmd_text``); the job rules themselves are the model's (jobs/validators.py), and their text is ruqi's ``msg``.

Errors: ruqi answers HTTP 200 with a ``stat`` other than ``OK`` (``ERR``; ``ERR_BAD_PARAMS`` when a parameter is
missing or unreadable) and its message in the ``x-reason`` header; here the message is also the body's ``msg``.
Authentication is the API's (api/auth.py: a bearer token, or a session with its CSRF token on POST): 401 and 403
keep their HTTP status, in the same envelope (``ERR_UNAUTHORIZED``, ``ERR_FORBIDDEN``). docs/jobs.md, "ruqi
compatibility".
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.utils import timezone
from ninja import NinjaAPI

from api.auth import AUTH
from api.errors import ApiError

from .models import Job, JobKind, JobTrigger

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # ruqi's times, in the project's time zone
ONCE_NAMES = ("date", "once")  # ruqi (APScheduler) calls a once trigger "date"; hubsched "once": both are taken
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RuqiError(Exception):
    """An answer ``{"stat": stat, "msg": message}`` with HTTP ``status`` (ruqi: 200 for every refusal)."""

    def __init__(self, message: str, *, stat: str = "ERR", status: int = 200):
        super().__init__(message)
        self.message, self.stat, self.status = message, stat, status


# --- parsing ---------------------------------------------------------------------------------------------


def rule_fields(*, job_trigger: str, rule: str, tz: str, now: datetime | None = None) -> dict[str, Any]:
    """ruqi's ``job_trigger`` and ``rule`` as Job fields; raises RuqiError.

    ``interval`` + ``10s``/``3m``/``2h``/``1d`` -> period in seconds; ``date`` (or ``once``) + ``now``,
    ``2020-12-16 18:03:17`` or ``2020-12-16 18:05:17.682862`` (in ``tz``) -> run_at; ``cron`` + six fields,
    seconds first -> cron."""
    rule = (rule or "").strip()
    if job_trigger == "interval":
        match = re.fullmatch(r"(\d+)\s*([smhd])", rule)
        if not match:
            raise RuqiError(f"Job_rule not match: interval rule {rule!r}: expected Xs, Xm, Xh or Xd (10s)")
        return {"trigger": JobTrigger.INTERVAL, "period": float(int(match.group(1)) * UNITS[match.group(2)])}
    if job_trigger in ONCE_NAMES:
        if rule == "now":
            return {"trigger": JobTrigger.ONCE, "run_at": now or timezone.now()}
        for fmt in (TIME_FORMAT, TIME_FORMAT + ".%f"):
            try:
                local = datetime.strptime(rule, fmt)
            except ValueError:
                continue
            return {"trigger": JobTrigger.ONCE, "run_at": local.replace(tzinfo=ZoneInfo(tz or "UTC"))}
        raise RuqiError(f"Job_rule not match: date rule {rule!r}: expected now, 2020-12-16 18:03:17 or "
                        "2020-12-16 18:05:17.682862")
    if job_trigger == "cron":
        fields = rule.split()
        if len(fields) != 6:
            raise RuqiError(f"Job_rule not match: cron rule {rule!r}: expected six fields, seconds first (0 20 2 * * *)")
        return {"trigger": JobTrigger.CRON, "cron": " ".join(fields)}
    raise RuqiError(f"Job_trigger not in jobs_map: {job_trigger!r}: expected interval, date (or once) or cron")


def cmd_fields(cmd: str) -> dict[str, Any]:
    """ruqi's ``cmd`` as Job fields; raises RuqiError. ``http(s)://host/path#{"json": "body"}`` -> an HTTP POST
    with that body (ruqi posts ``{}`` without one); anything else -> a shell job whose argument vector is
    ``shlex.split(cmd)`` (never given to a shell: ``;`` or ``&&`` are plain arguments)."""
    cmd = (cmd or "").strip()
    if not cmd:
        raise RuqiError("(scripts) Cmd does not meet expectations: cmd is empty")
    if cmd.startswith(("http://", "https://")):
        url, sep, body = cmd.partition("#")
        data: Any = {}
        if sep:
            try:
                data = json.loads(body)
            except ValueError:
                raise RuqiError("the body after # is not JSON") from None
        return {"kind": JobKind.HTTP, "method": "POST", "url": url, "body": data, "argv": []}
    if cmd.startswith("/"):
        raise RuqiError("message queue commands (/topic#msg) are not supported by hubsched")
    try:
        argv = shlex.split(cmd)
    except ValueError as exc:
        raise RuqiError(f"(scripts) Cmd does not meet expectations: {exc}") from None
    return {"kind": JobKind.SHELL, "argv": argv, "url": "", "body": None}


def cmd_text(job: Job) -> str:
    """A job's command the ruqi way (the reverse of ``cmd_fields``)."""
    if job.kind == JobKind.HTTP:
        return job.url + (f"#{json.dumps(job.body, ensure_ascii=False)}" if job.body not in (None, {}) else "")
    if job.kind == JobKind.SHELL:
        return shlex.join(job.argv or [])
    return f"script {job.script.name}" if job.script_id else ""


def _local(value: datetime | None, tz: str) -> str | None:
    return value.astimezone(ZoneInfo(tz or "UTC")).strftime(TIME_FORMAT) if value else None


def rule_text(job: Job) -> tuple[str, str]:
    """``(job_trigger, rule)`` the ruqi way: ``("interval", "3.0s")``, ``("cron", "0 20 2 * * *")``,
    ``("date", "2020-12-16 18:03:17")``."""
    if job.trigger == JobTrigger.INTERVAL:
        return "interval", f"{float(job.period)}s"
    if job.trigger == JobTrigger.CRON:
        return "cron", job.cron
    return "date", _local(job.run_at, job.project.time_zone) or ""


def job_item(job: Job, *, now: datetime) -> dict[str, Any]:
    """One job of ``get_jobs``: ruqi's documented keys (``Job_trigger`` with a capital J, as its README shows)
    and ``job_trigger`` (as its code writes)."""
    from .selectors import job_next_fire

    trigger, rule = rule_text(job)
    return {"job_id": job.name, "job_name": job.title, "cmd": cmd_text(job),
            "next_run_time": _local(job_next_fire(job=job, after=now), job.project.time_zone),
            "rule": rule, "Job_trigger": trigger, "job_trigger": trigger}


# --- the views -------------------------------------------------------------------------------------------

ruqi_api = NinjaAPI(title="hubsched: ruqi compatibility", version="ruqi", urls_namespace="ruqi", auth=AUTH,
                    docs_url=None, openapi_url=None)


def _answer(stat: str, status: int = 200, **data) -> JsonResponse:
    response = JsonResponse({**data, "stat": stat}, status=status, json_dumps_params={"ensure_ascii": False})
    if "msg" in data:
        response["x-reason"] = data["msg"].encode("ascii", "replace").decode()[:500]  # ruqi's header for the reason
    return response


@ruqi_api.exception_handler(RuqiError)
def _on_ruqi(request, exc: RuqiError):
    return _answer(exc.stat, exc.status, msg=exc.message)


@ruqi_api.exception_handler(ApiError)
def _on_api(request, exc: ApiError):
    stat = {401: "ERR_UNAUTHORIZED", 403: "ERR_FORBIDDEN"}.get(exc.status, "ERR")
    return _answer(stat, exc.status if exc.status in (401, 403, 429) else 200, msg=exc.message)


def _on_auth(request, exc):
    return _answer("ERR_UNAUTHORIZED", 401, msg="authentication required: send Authorization: Bearer <token>, "
                   "or log in and send the csrftoken cookie's value in X-CSRFToken")


def _on_http(request, exc):
    status = getattr(exc, "status_code", 400)
    return _answer({401: "ERR_UNAUTHORIZED", 403: "ERR_FORBIDDEN"}.get(status, "ERR_BAD_PARAMS"),
                   status if status in (401, 403, 429) else 200, msg=str(exc))


def _install() -> None:
    from ninja.errors import AuthenticationError, HttpError

    ruqi_api.add_exception_handler(AuthenticationError, _on_auth)
    ruqi_api.add_exception_handler(HttpError, _on_http)


_install()


def _params(request) -> dict[str, Any]:
    """The query string and, for a POST, the JSON body (ruqi merges both; curl -d sends no content type)."""
    params: dict[str, Any] = {k: v for k, v in request.GET.items()}
    if request.method == "POST" and request.body:
        try:
            body = json.loads(request.body)
        except ValueError:
            raise RuqiError("the body is not JSON", stat="ERR_BAD_PARAMS") from None
        if not isinstance(body, dict):
            raise RuqiError("the body is not a JSON object", stat="ERR_BAD_PARAMS")
        params.update(body)
    return params


def _needed(params: dict[str, Any], *names: str) -> list[str]:
    missing = [n for n in names if not isinstance(params.get(n), str) or params.get(n) == ""]
    if missing:
        raise RuqiError("Param check failed: expected " + ", ".join(missing) + " (strings)", stat="ERR_BAD_PARAMS")
    return [params[n] for n in names]


def _project(*, create: bool):
    from hubs.models import Project

    name = settings.HUBSCHED_RUQI_PROJECT
    if create:
        return Project.objects.get_or_create(name=name)[0]
    return Project.objects.filter(name=name).first()


def _message(exc: ValidationError) -> str:
    from api.errors import django_validation_details

    return "; ".join(f"{d['path']}: {d['message']}" if d["path"] else d["message"] for d in django_validation_details(exc))


@ruqi_api.get("/get_jobs")
def get_jobs(request):
    """``{"stat": "OK", "data": {"total": N, "list": [job_item...]}}``; ruqi's ``job_id``, ``job_name``,
    ``page_index`` (from 1) and ``page_size`` (default 15) filter and page. Needs ``jobs.view_job``."""
    from api.permissions import require

    require(request, "jobs.view_job")
    params = _params(request)
    project = _project(create=False)
    jobs = Job.objects.none() if project is None else Job.objects.filter(project=project).select_related("project", "script")
    if params.get("job_id"):
        jobs = jobs.filter(name=params["job_id"])
    if params.get("job_name"):
        jobs = jobs.filter(title=params["job_name"])
    jobs = jobs.order_by("name")
    total = jobs.count()
    if params.get("page_index"):
        try:
            index, size = int(params["page_index"]), int(params.get("page_size") or 15)
        except ValueError:
            raise RuqiError("page_index and page_size: expected integers", stat="ERR_BAD_PARAMS") from None
        start = max(0, index - 1) * max(1, size)
        jobs = jobs[start:start + max(1, size)]
    now = timezone.now()
    return _answer("OK", data={"total": total, "list": [job_item(job, now=now) for job in jobs]})


@ruqi_api.get("/status")
def status(request):
    """``{"stat": "OK", "data": {"check_time", "wait_seconds", "next_wakeup_time"}}``: now, and the next tick of
    any enabled job (``jobs.selectors.jobs_due``), in the ruqi project's time zone; ``wait_seconds`` and
    ``next_wakeup_time`` are null while no job will fire. Needs ``jobs.view_job``."""
    from api.permissions import require

    from .selectors import jobs_due

    require(request, "jobs.view_job")
    project = _project(create=False)
    tz = project.time_zone if project else "UTC"
    now = timezone.now()
    due = jobs_due(within_s=0, now=now)
    nxt = due["next_fire_at"]
    return _answer("OK", data={"check_time": _local(now, tz),
                               "wait_seconds": round((nxt - now).total_seconds(), 6) if nxt else None,
                               "next_wakeup_time": _local(nxt, tz)})


def _save(request, *, replace: bool):
    from api.permissions import require

    from .services import job_change, job_create, job_shell_problem

    params = _params(request)
    job_trigger, job_id, cmd, rule = _needed(params, "job_trigger", "job_id", "cmd", "rule")
    job_name = params.get("job_name") or ""
    if not isinstance(job_name, str):
        raise RuqiError("Param check failed: job_name: expected a string", stat="ERR_BAD_PARAMS")
    require(request, "jobs.change_job" if replace else "jobs.add_job")
    project = _project(create=not replace)
    existing = Job.objects.filter(project=project, name=job_id).first() if project else None
    if replace and existing is None:
        raise RuqiError(f"No job by the id of {job_id} was found")
    if not replace and existing is not None:
        # ruqi (APScheduler's add_job) refuses an id that exists; modify_job changes one
        raise RuqiError(f"Job identifier ({job_id}) conflicts with an existing job: use modify_job")
    fields = {**rule_fields(job_trigger=job_trigger, rule=rule, tz=project.time_zone), **cmd_fields(cmd),
              "title": job_name}
    problem = job_shell_problem(user=request.user, kind=fields["kind"],
                                was_shell=existing is not None and existing.kind == JobKind.SHELL)
    if problem:
        raise ApiError(403, problem)
    # ruqi lets a tick run up to 30 s late (misfire_grace_time=30)
    fields.setdefault("misfire", "run_late")
    fields.setdefault("misfire_grace", 30.0)
    try:
        if existing is None:
            job_create(project_id=project.pk, name=job_id, **fields)
        else:
            job_change(job=existing, changes=fields)
    except ValidationError as exc:
        raise RuqiError(_message(exc)) from None
    return _answer("OK")


@ruqi_api.post("/add_job")
def add_job(request):
    """``{"job_trigger", "job_id", "job_name", "rule", "cmd"}`` (JSON body or query) -> ``{"stat": "OK"}``. An
    existing ``job_id`` is refused (ruqi's too); ``modify_job`` changes it. Needs ``jobs.add_job``, and
    ``jobs.shell_job`` for a command that is not a URL."""
    return _save(request, replace=False)


@ruqi_api.post("/modify_job")
def modify_job(request):
    """As ``add_job``, for an existing ``job_id``. Needs ``jobs.change_job`` (and ``jobs.shell_job``)."""
    return _save(request, replace=True)


@ruqi_api.api_operation(["GET", "POST"], "/remove_job")
def remove_job(request):
    """``?job_id=test3`` -> ``{"stat": "OK"}``; an unknown id is ``ERR``. A GET, as ruqi's, takes an API token
    only (a GET carries no CSRF token); a browser session POSTs with its CSRF token. Needs ``jobs.delete_job``."""
    from api.permissions import require

    from .services import job_delete

    params = _params(request)
    (job_id,) = _needed(params, "job_id")
    require(request, "jobs.delete_job")
    if request.method == "GET" and not request.META.get("HTTP_AUTHORIZATION", "").lower().startswith("bearer "):
        # a GET carries no CSRF token: from a browser session, a link on another site could delete a job
        raise ApiError(403, "remove_job by GET takes an API token (Authorization: Bearer); a browser session "
                            "POSTs with its CSRF token")
    project = _project(create=False)
    job = Job.objects.filter(project=project, name=job_id).first() if project else None
    if job is None:
        raise RuqiError(f"No job by the id of {job_id} was found")
    job_delete(job=job)
    return _answer("OK")
