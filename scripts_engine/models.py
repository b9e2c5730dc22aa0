"""Integrator scripts, and the SQL side of a project: sinks (where values are stored) and data sources."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from hubsched.secrets import EncryptedTextField


class Script(models.Model):
    project = models.ForeignKey(
        "hubs.Project",
        on_delete=models.CASCADE,
        related_name="scripts",
        verbose_name="project",
        help_text="Project the script belongs to.",
    )
    name = models.CharField("name", max_length=200, help_text="Name, unique within the project.")
    code = models.TextField(
        "code", blank=True, help_text="Python run in the sandbox on every execution; bindings are the polled values (p1 = p1 * 2)."
    )
    description = models.TextField("description", blank=True, help_text="What the script does.")
    timeout = models.FloatField(
        "CPU time limit (s)", default=2.0, validators=[MinValueValidator(0.01)], help_text="The script is stopped past this."
    )
    memory_limit_mb = models.PositiveIntegerField(
        "memory limit (MB)", default=256, validators=[MinValueValidator(16)], help_text="The script is stopped past this."
    )

    class Meta:
        ordering = ["project", "name"]
        verbose_name = "script"
        verbose_name_plural = "scripts"
        permissions = [("debug_script", "Can run scripts under the debugger")]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="script_name_unique_in_project")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Compile the code under the sandbox policy; a syntax error or a refusal is an error on ``code``."""
        super().clean()
        error = self.code_error()
        if error is not None:
            raise ValidationError({"code": ValidationError(str(error), code=f"script_{error.kind}")})

    def save(self, *args, **kwargs) -> None:
        # Refused at save time too, not only in forms: a script that cannot compile never reaches a worker.
        self.clean()
        super().save(*args, **kwargs)

    def code_error(self):
        """The ScriptError compiling ``code`` raises (line and column in it), or None when it compiles."""
        from .sandbox import ScriptError, script_compile

        try:
            script_compile(code=self.code or "")
        except ScriptError as exc:
            return exc
        return None


class SinkLayout(models.TextChoices):
    # tall: one row per value; wide: one table per group, one column per key (SCADA transaction groups)
    TALL = "tall", "tall (one row per value)"
    WIDE = "wide", "wide (one row per execution, one column per key)"


class SinkQuerySet(models.QuerySet):
    def enabled(self) -> SinkQuerySet:
        return self.filter(enabled=True)


class Sink(models.Model):
    project = models.ForeignKey(
        "hubs.Project", on_delete=models.CASCADE, related_name="sinks", verbose_name="project", help_text="Owning project."
    )
    name = models.CharField("name", max_length=200, help_text="Name, unique within the project.")
    url = EncryptedTextField(
        "SQLAlchemy URL",
        help_text="Where values are stored, e.g. postgresql+psycopg2://user@host/db or sqlite:///var/values.sqlite3. "
        "Encrypted at rest; its password is write-only in forms and masked wherever it is shown.",
    )
    layout = models.CharField(
        "layout", max_length=8, choices=SinkLayout.choices, default=SinkLayout.TALL, help_text="Table layout."
    )
    table = models.CharField("table", max_length=200, default="hubsched_values", help_text="Table name (tall layout).")
    local_infile = models.BooleanField(
        "LOAD DATA LOCAL (MySQL, MariaDB)",
        default=False,
        help_text="Fast bulk loads with LOAD DATA LOCAL INFILE. Off: the driver never sends a file, whatever the server asks; "
        "values go by multi-row INSERT, which costs about 8 times the worker CPU per value on MariaDB (docs/data-path.md).",
    )
    enabled = models.BooleanField("enabled", default=True, help_text="A disabled sink receives nothing.")
    created_at = models.DateTimeField(
        "created", default=timezone.now, editable=False,
        help_text="A new sink's forwarder starts at the log's first record written from this time (docs/streams.md).",
    )

    objects = SinkQuerySet.as_manager()

    class Meta:
        ordering = ["project", "name"]
        verbose_name = "sink"
        verbose_name_plural = "sinks"
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="sink_name_unique_in_project")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """A wide sink refuses names that would lose values (docs/data-path.md, "Wide layout names"): made wide,
        or given another table, every group of the project must keep the rules (groups/validators.py)."""
        super().clean()
        if self.layout != SinkLayout.WIDE or not self.project_id:
            return
        from groups.validators import project_wide_problems

        problems = project_wide_problems(project_id=self.project_id, sinks=[(self.name, self.table or "hubsched_values")])
        if problems:
            raise ValidationError({"layout": problems})


class DataSource(models.Model):
    project = models.ForeignKey(
        "hubs.Project",
        on_delete=models.CASCADE,
        related_name="data_sources",
        verbose_name="project",
        help_text="Owning project.",
    )
    name = models.CharField("name", max_length=200, help_text='Name scripts use: sql("name").')
    url = EncryptedTextField(
        "SQLAlchemy URL",
        help_text="Database the scripts may query (and, when writable, insert into). Encrypted at rest; its password is "
        "write-only in forms and masked wherever it is shown.",
    )
    writable = models.BooleanField(
        "writable",
        default=False,
        help_text="Off: every sql() statement runs in a read-only transaction and inserts are refused.",
    )
    allow_ddl = models.BooleanField(
        "DDL allowed",
        default=False,
        help_text="On (with writable): CREATE, ALTER, DROP and the like are allowed; off, they are refused.",
    )

    class Meta:
        ordering = ["project", "name"]
        verbose_name = "data source"
        verbose_name_plural = "data sources"
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="data_source_name_unique_in_project")]

    def __str__(self) -> str:
        return self.name
