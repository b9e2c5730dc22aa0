"""Jobs: commands (shell, HTTP, sandboxed script) run by hubsched's beat scheduler beside the groups, and their runs."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from groups.validators import MIN_PERIOD_S, PERIOD_MESSAGE

from .validators import OUTPUT_LIMIT_MAX_KIB, SUCCESS_CODES_DEFAULT


class JobTrigger(models.TextChoices):
    INTERVAL = "interval", "interval"
    CRON = "cron", "cron (six fields, with seconds)"
    ONCE = "once", "once at a date and time"


class JobKind(models.TextChoices):
    SHELL = "shell", "shell (an argument vector, never a shell string)"
    HTTP = "http", "HTTP request"
    SCRIPT = "script", "sandboxed script (with sql())"


class Overlap(models.TextChoices):
    # Nomad's prohibit_overlap is FORBID; Kubernetes CronJob's concurrencyPolicy names the same three
    FORBID = "forbid", "forbid (skip a tick while a run is running)"
    ALLOW = "allow", "allow (runs may overlap)"
    REPLACE = "replace", "replace (stop the running one, then start)"


class Misfire(models.TextChoices):
    # APScheduler's misfire_grace_time with coalescing: several owed ticks run once, the latest
    SKIP = "skip", "skip (a tick that cannot start on time is missed)"
    RUN_LATE = "run_late", "run once late, within the grace time"


class JobQuerySet(models.QuerySet):
    def enabled(self) -> JobQuerySet:
        return self.filter(enabled=True)


class Job(models.Model):
    project = models.ForeignKey(
        "hubs.Project", on_delete=models.CASCADE, related_name="jobs", verbose_name="project", help_text="Owning project."
    )
    name = models.CharField("name", max_length=200, help_text="Name, unique within the project (ruqi's job_id).")
    title = models.CharField("title", max_length=200, blank=True, help_text="A longer label (ruqi's job_name).")
    trigger = models.CharField(
        "trigger", max_length=16, choices=JobTrigger.choices, default=JobTrigger.INTERVAL, help_text="What starts a run."
    )
    period = models.FloatField(
        "period (s)", default=60.0, validators=[MinValueValidator(MIN_PERIOD_S, message=PERIOD_MESSAGE)],
        help_text="Interval trigger: seconds between ticks, on a grid aligned to the period (as groups).",
    )
    offset = models.FloatField("offset (s)", default=0.0, help_text="Interval trigger: shift of the tick grid, in seconds.")
    cron = models.CharField("cron", max_length=200, blank=True, help_text="Cron trigger: six fields, seconds first (0 20 2 * * *).")
    run_at = models.DateTimeField("run at", null=True, blank=True, help_text="Once trigger: when to run.")
    kind = models.CharField("command kind", max_length=16, choices=JobKind.choices, default=JobKind.SHELL,
                            help_text="What a run does.")
    argv = models.JSONField(
        "argument vector", default=list, blank=True,
        help_text='Shell: the program and its arguments, e.g. ["bash", "scripts/export.sh"]; never given to a shell.',
    )
    working_directory = models.CharField(
        "working directory", max_length=1000, blank=True,
        help_text="Shell: where the command runs; relative to HUBSCHED_JOBS_DIR, which is also the default.",
    )
    environment = models.JSONField(
        "environment", default=dict, blank=True,
        help_text="Shell: variables of the command, on top of PATH, LANG and HOME only (the worker's own are not passed).",
    )
    method = models.CharField("HTTP method", max_length=8, default="POST", blank=True, help_text="HTTP: the request's method.")
    url = models.CharField("URL", max_length=2000, blank=True, help_text="HTTP: the http:// or https:// URL called.")
    headers = models.JSONField("headers", default=dict, blank=True, help_text="HTTP: request headers, name to value.")
    body = models.JSONField("JSON body", null=True, blank=True, help_text="HTTP: the JSON body sent; empty sends none.")
    success_codes = models.CharField(
        "success codes", max_length=200, default=SUCCESS_CODES_DEFAULT, blank=True,
        help_text="HTTP: the status codes that count as success, e.g. 200-299,304.",
    )
    script = models.ForeignKey(
        "scripts_engine.Script", on_delete=models.RESTRICT, null=True, blank=True, related_name="jobs",
        verbose_name="script", help_text="Script: the project's script run in the sandbox, with sql() on its data sources.",
    )
    timeout = models.FloatField(
        "timeout (s)", null=True, blank=True, default=3600.0, validators=[MinValueValidator(0.1)],
        help_text="Most seconds one attempt may take; past it the command is stopped (SIGTERM, then SIGKILL). Empty: none.",
    )
    retries = models.PositiveIntegerField(
        "retries", default=0, validators=[MaxValueValidator(20)], help_text="Attempts after a failed or timed-out one (0-20)."
    )
    retry_backoff = models.FloatField(
        "retry backoff (s)", default=10.0, validators=[MinValueValidator(0.0)],
        help_text="Wait before the first retry; doubled for each further one (at most 1 hour).",
    )
    overlap = models.CharField("overlap", max_length=16, choices=Overlap.choices, default=Overlap.FORBID,
                               help_text="What a tick does while a run of the job is running.")
    misfire = models.CharField("misfire", max_length=16, choices=Misfire.choices, default=Misfire.SKIP,
                               help_text="What a tick that could not start on time does.")
    misfire_grace = models.FloatField(
        "misfire grace (s)", default=60.0, validators=[MinValueValidator(0.0)],
        help_text="Run late: how late a tick may still start; several owed ticks run once (the latest).",
    )
    output_limit_kib = models.PositiveIntegerField(
        "output kept (KiB)", default=64, validators=[MinValueValidator(1), MaxValueValidator(OUTPUT_LIMIT_MAX_KIB)],
        help_text="The last this many KiB of stdout and of stderr are kept per run; the full sizes are recorded.",
    )
    enabled = models.BooleanField("enabled", default=True, help_text="A disabled job is not scheduled (run now still works).")
    updated_at = models.DateTimeField(
        "updated at", auto_now=True, help_text="When the job last changed; the beat scheduler reads changes since a watermark."
    )

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["project", "name"]
        verbose_name = "job"
        verbose_name_plural = "jobs"
        permissions = [("run_job", "Can run jobs now"), ("kill_job", "Can kill a running job"),
                       ("enable_job", "Can enable and disable jobs"),
                       ("shell_job", "Can create and change shell jobs (commands run on the workers)")]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="job_name_unique_in_project")]
        indexes = [
            # serves the beat scheduler's "jobs changed since <watermark>" poll (jobs.scheduling)
            models.Index(fields=["updated_at"], name="job_updated_at"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def grace_seconds(self) -> float:
        """How late a tick may start: the grace time when running late is allowed, else one second (on time)."""
        return self.misfire_grace if self.misfire == Misfire.RUN_LATE else 1.0

    def clean(self) -> None:
        """The job rules (jobs/validators.py) that import, the API and ruqi check too."""
        super().clean()
        from .validators import job_command_problems, job_trigger_problems

        errors: dict[str, list[str]] = {}
        problems = job_trigger_problems(trigger=self.trigger, period=self.period, cron=self.cron or "",
                                        has_run_at=self.run_at is not None)
        problems += job_command_problems(
            kind=self.kind, argv=self.argv, environment=self.environment, method=self.method or "", url=self.url or "",
            headers=self.headers, success_codes=self.success_codes or "", has_script=self.script_id is not None,
        )
        if self.script_id and self.project_id:
            from scripts_engine.models import Script

            script = Script.objects.filter(pk=self.script_id).values_list("name", "project_id").first()
            if script is None:
                problems.append(("script", f"no script with id {self.script_id}"))
            elif script[1] != self.project_id:
                problems.append(("script", f"script {script[0]!r} belongs to another project"))
        fields = {f.name for f in self._meta.fields}
        for field, message in problems:
            base = field.split("[")[0].split(".")[0]
            if base in fields:
                errors.setdefault(base, []).append(message if base == field else f"{field}: {message}")
            else:
                errors.setdefault("__all__", []).append(f"{field}: {message}")
        if errors:
            raise ValidationError(errors)


class JobRunStatus(models.TextChoices):
    # Every due tick of a job ends in exactly one of these, as one JobRun (unique per job and tick)
    RUNNING = "running", "running"
    OK = "ok", "ok"
    FAILED = "failed", "failed"  # exit code not 0, HTTP status not a success code, a script error
    TIMEOUT = "timeout", "timed out"  # stopped past the job's timeout
    KILLED = "killed", "killed"  # stopped on a person's request (killed_by), or replaced by a newer run
    SKIPPED = "skipped", "skipped"  # overlap forbid: a run was still running
    MISSED = "missed", "missed"  # could not start within the misfire grace, or coalesced into a later tick
    LOST = "lost", "lost"  # its worker stopped beating while it ran (killed, host lost): outcome unknown


FINISHED = (JobRunStatus.OK, JobRunStatus.FAILED, JobRunStatus.TIMEOUT, JobRunStatus.KILLED, JobRunStatus.LOST)


class JobRun(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="runs", verbose_name="job", help_text="Job run.")
    scheduled_for = models.DateTimeField("scheduled for", help_text="The tick this run belongs to (the request's time for run now).")
    requested_by = models.CharField("requested by", max_length=150, blank=True, help_text="Who ran it now; empty: the schedule.")
    status = models.CharField("status", max_length=16, choices=JobRunStatus.choices, help_text="Outcome.")
    started_at = models.DateTimeField("started", null=True, blank=True, help_text="When the first attempt began.")
    finished_at = models.DateTimeField("finished", null=True, blank=True, help_text="When it ended.")
    heartbeat_at = models.DateTimeField("heartbeat", null=True, blank=True,
                                        help_text="The worker's last sign of life while it ran (every second).")
    attempts = models.PositiveIntegerField("attempts", default=0, help_text="Attempts made (1 + retries used).")
    exit_code = models.IntegerField("exit code", null=True, blank=True, help_text="Shell: the exit code (negative: the signal).")
    http_status = models.PositiveIntegerField("HTTP status", null=True, blank=True, help_text="HTTP: the response's status.")
    error = models.TextField("error", blank=True, help_text="Why it failed, for a person to act on.")
    worker = models.CharField("worker", max_length=300, blank=True, help_text="The Celery worker that ran it (host name).")
    pid = models.IntegerField("process id", null=True, blank=True, help_text="Shell: the command's process (group) id while it runs.")
    stdout = models.TextField("stdout", blank=True, help_text="The last output_limit_kib KiB of standard output.")
    stderr = models.TextField("stderr", blank=True, help_text="The last output_limit_kib KiB of standard error.")
    stdout_bytes = models.PositiveBigIntegerField("stdout size (bytes)", default=0, help_text="All standard output written.")
    stderr_bytes = models.PositiveBigIntegerField("stderr size (bytes)", default=0, help_text="All standard error written.")
    kill_requested_at = models.DateTimeField("kill requested", null=True, blank=True,
                                             help_text="When a person (or a replacing run) asked to stop it.")
    killed_by = models.CharField("killed by", max_length=150, blank=True, help_text="Who asked to stop it.")

    class Meta:
        ordering = ["-scheduled_for"]
        verbose_name = "job run"
        verbose_name_plural = "job runs"
        constraints = [
            # one outcome per tick (a redelivered message records nothing twice); serves "latest runs of a job"
            models.UniqueConstraint(fields=["job", "scheduled_for"], name="jobrun_one_per_tick"),
        ]
        indexes = [
            # serves the overlap check and the kill watcher: a job's runs still running
            models.Index(fields=["job", "status"], name="jobrun_job_status"),
        ]

    def __str__(self) -> str:
        return f"{self.job} @ {self.scheduled_for:%Y-%m-%d %H:%M:%S}"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class JobStats(models.Model):
    """Counters of a job's ticks kept by the beat (dispatched, passed over) and its failures, added to with F()."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="stats", verbose_name="job",
                               help_text="Job.")
    dispatched = models.PositiveBigIntegerField("dispatched", default=0, help_text="Ticks sent to workers.")
    missed = models.PositiveBigIntegerField("missed", default=0,
                                            help_text="Ticks the beat passed over (fell behind, or no beat led): no run row.")
    failures = models.PositiveBigIntegerField("failures", default=0, help_text="Runs that ended failed, timed out, killed or lost.")
    last_run_at = models.DateTimeField("last run", null=True, blank=True, help_text="Scheduled time of the latest run.")

    class Meta:
        verbose_name = "job counters"
        verbose_name_plural = "job counters"
