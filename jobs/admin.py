"""Admin for jobs and their runs: permission-checked run now, enable/disable and kill; shell jobs need jobs.shell_job."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import OuterRef, Subquery
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from scripts_engine.models import Script

from .models import Job, JobKind, JobRun, JobRunStatus, JobStats, JobTrigger
from .services import job_run_kill, job_run_now, job_set_enabled, job_shell_problem

RECENT_RUNS = 20


def size_text(n: int) -> str:
    """``1258291`` -> ``"1.2 MiB"``; ``65536`` -> ``"64 KiB"``; ``300`` -> ``"300 bytes"``."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def output_text(kept: str, total: int) -> str:
    """What a run kept of one stream: ``"last 64 KiB of 1.2 MiB"``, or ``"all 300 bytes"`` when nothing was cut."""
    kept_bytes = len(kept.encode("utf-8", "surrogatepass"))
    if total <= kept_bytes:
        return f"all {size_text(total)}"
    return f"last {size_text(kept_bytes)} of {size_text(total)}"


def trigger_summary(job: Job) -> str:
    if job.trigger == JobTrigger.INTERVAL:
        return f"every {job.period:g} s" + (f" +{job.offset:g} s" if job.offset else "")
    if job.trigger == JobTrigger.CRON:
        return f"cron {job.cron}"
    return f"once at {timezone.localtime(job.run_at):%Y-%m-%d %H:%M:%S}" if job.run_at else "once (no time set)"


class JobForm(forms.ModelForm):
    """The job's own rules are ``Job.clean``'s (jobs/validators.py); this adds who may save a shell job."""

    user = None  # set per request by JobAdmin.get_form

    class Meta:
        model = Job
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        # an empty JSON box is the field's empty value, not SQL NULL (the columns are not nullable)
        for name, empty in (("argv", list), ("environment", dict), ("headers", dict)):
            if name in cleaned and cleaned[name] is None:
                cleaned[name] = empty()
        if self.user is not None and "kind" in cleaned:
            # the stored kind: self.instance is updated from the form only after clean()
            was_shell = bool(self.instance.pk) and self.instance.kind == JobKind.SHELL
            problem = job_shell_problem(user=self.user, kind=cleaned["kind"], was_shell=was_shell)
            if problem:
                self.add_error("kind", problem)
        return cleaned


class _RunColumns:
    """The columns a run shows in the job's inline and in the runs' list."""

    error_shown = 120

    @admin.display(description="duration")
    def duration(self, obj):
        return f"{obj.duration_s:.3f} s" if obj.duration_s is not None else "-"

    @admin.display(description="exit code / HTTP status")
    def outcome(self, obj):
        return _outcome(obj)

    @admin.display(description="error")
    def short_error(self, obj):
        return obj.error[:self.error_shown] + ("…" if len(obj.error) > self.error_shown else "")


class JobRunInline(_RunColumns, admin.TabularInline):
    error_shown = 200
    """The job's latest runs, read-only; each links to its own page (stdout, stderr)."""

    model = JobRun
    fields = ("run", "status", "scheduled_for", "duration", "outcome", "short_error")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = f"latest {RECENT_RUNS} runs"

    def get_queryset(self, request):
        # an inline's queryset cannot be sliced (the formset filters it by the job afterwards): keep the ids instead
        queryset = super().get_queryset(request)
        job_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
        if not job_id or not str(job_id).isdigit():
            return queryset.none()
        latest = JobRun.objects.filter(job_id=int(job_id)).order_by("-scheduled_for").values_list("pk", flat=True)
        return queryset.filter(pk__in=list(latest[:RECENT_RUNS])).order_by("-scheduled_for")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="run")
    def run(self, obj):
        return format_html('<a href="{}">{}</a>', reverse("admin:jobs_jobrun_change", args=[obj.pk]), f"#{obj.pk}")



def _outcome(run: JobRun) -> str:
    if run.exit_code is not None:
        return f"exit {run.exit_code}"
    if run.http_status is not None:
        return f"HTTP {run.http_status}"
    return "-"


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    form = JobForm
    list_display = ("name", "project", "schedule", "kind", "enabled", "last_status", "last_run_at")
    list_filter = ("enabled", "kind", "trigger", "project")
    search_fields = ("name", "title", "project__name", "url", "cron")
    list_select_related = ("project", "stats")
    readonly_fields = ("counters",)
    fieldsets = (
        (None, {"fields": ("project", "name", "title", "enabled")}),
        ("Trigger", {"fields": ("trigger", "period", "offset", "cron", "run_at")}),
        ("Command", {"fields": ("kind",),
                     "description": "Fill in the section of the kind chosen; the others are ignored. A shell job "
                                    "needs the permission “Can create and change shell jobs”."}),
        ("Shell", {"fields": ("argv", "working_directory", "environment")}),
        ("HTTP", {"fields": ("method", "url", "headers", "body", "success_codes")}),
        ("Script", {"fields": ("script",)}),
        ("Policies", {"fields": ("timeout", "retries", "retry_backoff", "overlap", "misfire", "misfire_grace",
                                 "output_limit_kib")}),
        ("Status", {"fields": ("counters",)}),
    )
    inlines = [JobRunInline]
    actions = ["run_now", "enable", "disable"]

    def get_queryset(self, request):
        latest = JobRun.objects.filter(job=OuterRef("pk")).order_by("-scheduled_for").values("status")[:1]
        return super().get_queryset(request).annotate(_last_status=Subquery(latest))

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"user": request.user})  # a class per request: never shared state

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "script":  # on a job's page, the scripts of its own project (Job.clean refuses others)
            job_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
            if job_id and str(job_id).isdigit():
                kwargs["queryset"] = Script.objects.filter(project__jobs__pk=int(job_id))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        # JobForm.clean has put the refusal beside the kind field; this is the last guard, never reached from the form
        was_shell = change and Job.objects.filter(pk=obj.pk, kind=JobKind.SHELL).exists()
        if job_shell_problem(user=request.user, kind=obj.kind, was_shell=was_shell):
            raise PermissionDenied(job_shell_problem(user=request.user, kind=obj.kind, was_shell=was_shell))
        super().save_model(request, obj, form, change)

    @admin.display(description="trigger")
    def schedule(self, obj):
        return trigger_summary(obj)

    @admin.display(description="last run status", ordering="_last_status")
    def last_status(self, obj):
        status = getattr(obj, "_last_status", None)
        return JobRunStatus(status).label if status in JobRunStatus.values else "-"

    @admin.display(description="last run", ordering="stats__last_run_at")
    def last_run_at(self, obj):
        stats = getattr(obj, "stats", None) if obj.pk else None
        return stats.last_run_at if stats else None

    @admin.display(description="counters")
    def counters(self, obj):
        stats = getattr(obj, "stats", None) if obj.pk else None
        if stats is None:
            return "no ticks yet"
        return f"{stats.dispatched} dispatched, {stats.missed} missed, {stats.failures} failures"

    def has_run_job_permission(self, request):
        return request.user.has_perm("jobs.run_job")

    def has_enable_job_permission(self, request):
        return request.user.has_perm("jobs.enable_job")

    @admin.action(description="Run now (once, in a worker)", permissions=["run_job"])
    def run_now(self, request, queryset):
        jobs = list(queryset)
        for job in jobs:
            job_run_now(job=job, requested_by=request.user.get_username())
        self.message_user(request, f"{len(jobs)} job(s) queued; their runs appear under Job runs.", messages.SUCCESS)

    @admin.action(description="Enable selected jobs", permissions=["enable_job"])
    def enable(self, request, queryset):
        jobs = list(queryset)
        for job in jobs:
            job_set_enabled(job=job, enabled=True)
        self.message_user(request, f"{len(jobs)} job(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected jobs", permissions=["enable_job"])
    def disable(self, request, queryset):
        jobs = list(queryset)
        for job in jobs:
            job_set_enabled(job=job, enabled=False)
        self.message_user(request, f"{len(jobs)} job(s) disabled.", messages.SUCCESS)


@admin.register(JobRun)
class JobRunAdmin(_RunColumns, admin.ModelAdmin):
    """Records written by workers: looked at, never edited by hand; a running one may be killed."""

    list_display = ("job", "scheduled_for", "status", "requested_by", "started_at", "finished_at", "duration",
                    "outcome", "attempts", "killed_by", "short_error")
    list_filter = ("status", "job__project", "job__kind", "job")
    search_fields = ("job__name", "error", "requested_by", "killed_by")
    date_hierarchy = "scheduled_for"
    list_select_related = ("job__project",)
    fields = ("job", "scheduled_for", "status", "requested_by", "started_at", "finished_at", "heartbeat_at", "attempts",
              "exit_code", "http_status", "error", "worker", "pid", "kill_requested_at", "killed_by",
              "stdout_shown", "stderr_shown")
    readonly_fields = ("stdout_shown", "stderr_shown")
    actions = ["kill"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


    def _stream(self, kept: str, total: int):
        return format_html('<p>{}</p><pre style="white-space:pre-wrap;max-height:40em;overflow:auto">{}</pre>',
                           output_text(kept, total), kept)

    @admin.display(description="stdout")
    def stdout_shown(self, obj):
        return self._stream(obj.stdout, obj.stdout_bytes)

    @admin.display(description="stderr")
    def stderr_shown(self, obj):
        return self._stream(obj.stderr, obj.stderr_bytes)

    def has_kill_job_permission(self, request):
        return request.user.has_perm("jobs.kill_job")

    @admin.action(description="Kill (stop the running command)", permissions=["kill_job"])
    def kill(self, request, queryset):
        """Asks the workers to stop them (``job_run_kill``); the runs are recorded killed once the workers have."""
        asked, idle = [], []
        for run in queryset.select_related("job"):
            try:
                job_run_kill(run=run, by=request.user.get_username())
            except ValidationError as exc:
                idle.append(" ".join(exc.messages))
            else:
                asked.append(run)
        if asked:
            self.message_user(request, f"Asked to stop {len(asked)} run(s); they are recorded killed when their "
                                       "workers have stopped them.", messages.SUCCESS)
        for message in idle:
            self.message_user(request, f"Nothing to kill: {message}.", messages.WARNING)


@admin.register(JobStats)
class JobStatsAdmin(admin.ModelAdmin):
    list_display = ("job", "dispatched", "missed", "failures", "last_run_at")
    search_fields = ("job__name",)
    list_select_related = ("job",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
