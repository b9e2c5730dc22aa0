"""Projects, hubs, and the nested entity tree each hub exposes (hub protocol v1: getEntities, getParams)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from hubsched.secrets import EncryptedTextField


class Project(models.Model):
    name = models.CharField("name", max_length=200, unique=True, help_text="Unique name of the project.")
    description = models.TextField("description", blank=True, help_text="Free text for the integrators.")
    time_zone = models.CharField(
        "time zone",
        max_length=64,
        default="UTC",
        help_text="IANA time zone that aligns interval ticks and cron triggers (e.g. Europe/Berlin).",
    )
    created_at = models.DateTimeField("created at", auto_now_add=True, help_text="When the project was created.")
    updated_at = models.DateTimeField("updated at", auto_now=True, help_text="When the project was last changed.")

    class Meta:
        ordering = ["name"]
        verbose_name = "project"
        verbose_name_plural = "projects"
        permissions = [("export_secrets", "Can export projects with their secrets (hub keys, database passwords)")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """The project rule import checks too (hubs/validators.py): a time zone zoneinfo knows."""
        super().clean()
        from .validators import time_zone_problem

        problem = time_zone_problem(self.time_zone)
        if problem:
            raise ValidationError({"time_zone": [problem]})


class RedundancyMode(models.TextChoices):
    # SCADA redundancy: a master and standbys, or every member read at once and compared
    MASTER_BACKUP = "master_backup", "master/backup"
    PARALLEL = "parallel", "parallel"


class RedundancySet(models.Model):
    """Hubs of one project that serve the same entities (docs/redundancy.md). Its members are the hubs
    pointing at it; the member of lowest ``Hub.redundancy_priority`` (0) is the master, then the backups."""

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="redundancy_sets", verbose_name="project",
        help_text="Project the set belongs to; its members are hubs of this project.",
    )
    name = models.CharField("name", max_length=200, help_text="Name of the set, unique within its project.")
    mode = models.CharField(
        "mode", max_length=16, choices=RedundancyMode.choices, default=RedundancyMode.MASTER_BACKUP,
        help_text="master/backup: read the master, a backup when the master's read fails or is bad; "
        "parallel: read every member, store the master's values and compare the others'.",
    )
    failback_after_s = models.FloatField(
        "failback after (s)", default=30.0, validators=[MinValueValidator(0.0)],
        help_text="Seconds the master must have been healthy before its groups are read from it again.",
    )

    threshold_abs = models.FloatField(
        "disagreement threshold (absolute)", null=True, blank=True, validators=[MinValueValidator(0.0)],
        help_text="Parallel mode: members whose numbers differ by more than this (in the key's unit) disagree; "
        "empty: not checked this way.",
    )
    threshold_percent = models.FloatField(
        "disagreement threshold (%)", null=True, blank=True, validators=[MinValueValidator(0.0)],
        help_text="Parallel mode: members whose numbers differ by more than this percentage of the larger "
        "magnitude disagree; empty: not checked this way. With neither threshold, any difference counts.",
    )
    key_thresholds = models.JSONField(
        "per-key thresholds", default=dict, blank=True,
        help_text='Parallel mode: thresholds of single keys, in place of the set\'s: {"flow": {"abs": 0.5}, '
        '"pressure": {"percent": 2}} ("abs", "percent", either or both; a key not listed uses the set\'s).',
    )
    disagree_ticks = models.PositiveIntegerField(
        "ticks before a disagreement", default=3, validators=[MinValueValidator(1)],
        help_text="Parallel mode: consecutive ticks a key must disagree before a disagreement event is raised.",
    )

    class Meta:
        ordering = ["project__name", "name"]
        verbose_name = "redundancy set"
        verbose_name_plural = "redundancy sets"
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="redundancy_set_name_unique_in_project")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """The set rules import checks too (hubs/validators.py): a finite failback time of 0 s or more, and
        the members already in the set belonging to the set's project."""
        super().clean()
        from .validators import failback_problem, key_thresholds_problems, redundancy_project_problem

        errors: dict[str, list[str]] = {}
        problem = failback_problem(self.failback_after_s)
        if problem:
            errors["failback_after_s"] = [problem]
        for where, message in key_thresholds_problems(self.key_thresholds):
            errors.setdefault("key_thresholds", []).append(f"{where}: {message}" if where else message)
        if self.pk and self.project_id:
            for hub in self.members.exclude(project_id=self.project_id).only("name"):
                errors.setdefault("project", []).append(f"hub {hub.name!r}: {redundancy_project_problem()}")
        if errors:
            raise ValidationError(errors)


class HubQuerySet(models.QuerySet):
    def enabled(self) -> HubQuerySet:
        return self.filter(enabled=True)


class Hub(models.Model):
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="hubs", verbose_name="project", help_text="Project the hub belongs to."
    )
    name = models.CharField("name", max_length=200, help_text="Name of the hub, unique within its project.")
    url = models.CharField(
        "URL", max_length=500, help_text="WebSocket endpoint with its path, e.g. ws://10.10.20.8/connect (wss:// for TLS)."
    )
    api_key = EncryptedTextField(
        "API key",
        blank=True,
        help_text="Sent with every request (hub protocol v1: `key`). Encrypted at rest; write-only in forms; never shown or logged.",
    )
    timeout = models.FloatField(
        "call timeout (s)",
        default=5.0,
        validators=[MinValueValidator(0.01)],
        help_text="Seconds to wait for one answer before the call fails with a timeout.",
    )
    max_in_flight = models.PositiveIntegerField(
        "requests in flight",
        # 128: a batch of up to 128 reads costs one round trip (at 50 ms: 69 ms against 229 ms with 32;
        # docs/benchmarks.md, "Pipelining"); a hub that takes fewer answers 429 and the client keeps to what it holds
        default=128,
        validators=[MinValueValidator(1)],
        help_text="Most requests outstanding at once on this hub's connection (fairness between groups).",
    )
    max_frame_bytes = models.PositiveIntegerField(
        "largest frame (bytes)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1024)],
        help_text="A frame from the hub larger than this drops the connection; empty: HUBSCHED_HUB_MAX_FRAME_BYTES.",
    )
    max_value_bytes = models.PositiveIntegerField(
        "largest value (bytes)",
        null=True,
        blank=True,
        validators=[MinValueValidator(16)],
        help_text="A value whose JSON is larger than this fails its execution; empty: HUBSCHED_HUB_MAX_VALUE_BYTES.",
    )
    tls_ca_bundle = models.TextField(
        "TLS CA bundle",
        blank=True,
        help_text="wss:// only. PEM certificates of the CAs that sign the hub's certificate; empty: the system's CA store.",
    )
    tls_client_cert = models.TextField(
        "TLS client certificate",
        blank=True,
        help_text="wss:// only. PEM certificate (then its intermediate CAs) shown to a hub that asks for one; needs the client key.",
    )
    tls_client_key = EncryptedTextField(
        "TLS client key",
        blank=True,
        help_text="wss:// only. Unencrypted PEM private key of the client certificate. Encrypted at rest; write-only in "
        "forms; never shown or logged; exported only with the permission to export secrets.",
    )
    tls_verify = models.BooleanField(
        "verify the hub's TLS certificate",
        default=True,
        help_text="wss:// only. Check the hub's certificate chain and host name. Turn off only for a test bench: anyone "
        "on the network path can then read and change the traffic, the API key included.",
    )
    enabled = models.BooleanField("enabled", default=True, help_text="A disabled hub's groups are not run.")
    redundancy_set = models.ForeignKey(
        RedundancySet, on_delete=models.SET_NULL, null=True, blank=True, related_name="members",
        verbose_name="redundancy set",
        help_text="Set of hubs serving the same entities as this one (docs/redundancy.md); empty: none.",
    )
    redundancy_priority = models.PositiveSmallIntegerField(
        "redundancy priority", default=0,
        help_text="Role in the redundancy set: 0 is the master, then the backups in this order; unique within the set.",
    )

    objects = HubQuerySet.as_manager()

    class Meta:
        ordering = ["project__name", "name"]
        verbose_name = "hub"
        verbose_name_plural = "hubs"
        permissions = [
            ("write_hub", "Can write parameter values to hubs (script write-back in the debugger, the console)"),
            ("enable_hub", "Can enable and disable hubs"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="hub_name_unique_in_project"),
            # one hub per role in a set (one master); hubs in no set have NULL, which never collides
            models.UniqueConstraint(fields=["redundancy_set", "redundancy_priority"],
                                    name="hub_priority_unique_in_redundancy_set"),
        ]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:  # the API key and TLS key stay out of reprs, and so out of logs and tracebacks
        return f"<Hub {self.pk} {self.name!r} {self.url!r}>"

    def tls_options(self):
        """The client's ``hubs.client.TlsOptions`` of this hub's TLS fields (used for wss:// URLs only)."""
        from .client import TlsOptions

        return TlsOptions(ca_pem=self.tls_ca_bundle, cert_pem=self.tls_client_cert, key_pem=self.tls_client_key,
                          verify=self.tls_verify)

    @property
    def tls_insecure(self) -> bool:
        """Whether the hub is reached over TLS without checking its certificate (shown as a warning)."""
        return not self.tls_verify and self.url.strip().lower().startswith("wss://")

    def clean(self) -> None:
        """The hub rules import checks too (hubs/validators.py): a WebSocket URL with a host; TLS settings that
        parse (PEM certificates, an unencrypted key matching its certificate); and a new name must not give one
        of its groups the wide table of another group of the project (groups/validators.py)."""
        super().clean()
        from groups.validators import hub_rename_problems

        from .validators import hub_tls_problems, hub_url_problem

        errors: dict[str, list[str]] = {}
        if self.url and hub_url_problem(self.url):
            errors["url"] = [hub_url_problem(self.url)]
        for field_name, message in hub_tls_problems(ca_pem=self.tls_ca_bundle, cert_pem=self.tls_client_cert,
                                                    key_pem=self.tls_client_key):
            errors.setdefault(field_name, []).append(message)
        if self.redundancy_set_id is not None:
            from .validators import redundancy_priority_problem, redundancy_project_problem

            # a set that does not exist is the field's own error (ForeignKey.validate), reported by clean_fields
            set_project = RedundancySet.objects.filter(pk=self.redundancy_set_id).values_list("project_id", flat=True).first()
            if set_project is not None and self.project_id and set_project != self.project_id:
                errors["redundancy_set"] = [redundancy_project_problem()]
            elif set_project is not None:
                taken = (Hub.objects.filter(redundancy_set_id=self.redundancy_set_id,
                                            redundancy_priority=self.redundancy_priority)
                         .exclude(pk=self.pk).values_list("name", flat=True).first())
                problem = redundancy_priority_problem(priority=self.redundancy_priority, taken_by=taken)
                if problem:
                    errors["redundancy_priority"] = [problem]
        if self.pk and self.project_id and self.name:
            problems = hub_rename_problems(project_id=self.project_id, hub_id=self.pk, hub_name=self.name)
            if problems:
                errors["name"] = problems
        if errors:
            raise ValidationError(errors)


class RedundancyEvent(models.Model):
    """A disagreement of a parallel set (docs/redundancy.md): a member's value of one key differed from the
    master's beyond the set's threshold for ``disagree_ticks`` ticks; open until they agree again. Written by the
    workers only (until the alarms app lands, this and the log are where a disagreement shows)."""

    redundancy_set = models.ForeignKey(
        RedundancySet, on_delete=models.CASCADE, related_name="events", verbose_name="redundancy set",
        help_text="Set whose members disagreed.",
    )
    master = models.CharField("master", max_length=200, help_text="Name of the hub whose values were stored.")
    member = models.CharField("member", max_length=200, help_text="Name of the member that disagreed with it.")
    entity = models.CharField("entity", max_length=1000, help_text="Entity id of the key.")
    key = models.CharField("key", max_length=200, help_text="Parameter key that disagreed.")
    master_value = models.JSONField("master's value", null=True, help_text="The master's value when the event was raised.")
    member_value = models.JSONField("member's value", null=True, help_text="The member's value when the event was raised.")
    raised_at = models.DateTimeField("raised at", help_text="Tick at which the disagreement was raised.")
    cleared_at = models.DateTimeField("cleared at", null=True, blank=True,
                                      help_text="Tick at which the values agreed again; empty: still disagreeing.")

    class Meta:
        ordering = ["-raised_at"]
        verbose_name = "redundancy event"
        verbose_name_plural = "redundancy events"
        indexes = [
            # the open events of a set (groups/redundancy.py at each config refresh; /api/status)
            models.Index(fields=["redundancy_set", "cleared_at"], name="redundancy_event_open"),
        ]

    def __str__(self) -> str:
        state = "open" if self.cleared_at is None else "cleared"
        return f"{self.redundancy_set_id}: {self.member} vs {self.master} on {self.entity}.{self.key} ({state})"


class HubOffset(models.Model):
    """A per-member, per-key correction of a hub known to read differently: a number becomes
    ``value * factor + add`` before the script and the sinks see it (docs/redundancy.md)."""

    hub = models.ForeignKey(
        Hub, on_delete=models.CASCADE, related_name="offsets", verbose_name="hub", help_text="Hub whose values are corrected."
    )
    entity = models.CharField(
        "entity", max_length=1000, blank=True,
        help_text="Entity id (plant/line1/pump1) the correction applies to; empty: the key on every entity.",
    )
    key = models.CharField("key", max_length=200, help_text="Parameter key corrected (p1).")
    add = models.FloatField("add", default=0.0, help_text="Constant added after the factor, in the key's unit.")
    factor = models.FloatField("factor", default=1.0, help_text="Factor the value is multiplied by first; not 0.")

    class Meta:
        ordering = ["hub", "entity", "key"]
        verbose_name = "hub offset"
        verbose_name_plural = "hub offsets"
        constraints = [models.UniqueConstraint(fields=["hub", "entity", "key"], name="hub_offset_unique_per_key")]

    def __str__(self) -> str:
        return f"{self.entity or '*'}.{self.key}: x{self.factor:g} {self.add:+g}"

    def clean(self) -> None:
        """hubs/validators.py ``hub_offset_problems`` (import checks the same)."""
        super().clean()
        from .validators import hub_offset_problems

        errors: dict[str, list[str]] = {}
        for field_name, message in hub_offset_problems(add=self.add, factor=self.factor):
            errors.setdefault(field_name, []).append(message)
        if errors:
            raise ValidationError(errors)

    def apply(self, value):
        """``value * factor + add`` for a number (an int or float, not a bool); any other value unchanged."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        return value * self.factor + self.add


class Entity(models.Model):
    hub = models.ForeignKey(
        Hub, on_delete=models.CASCADE, related_name="entities", verbose_name="hub", help_text="Hub exposing the entity."
    )
    parent = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="children",
        verbose_name="parent",
        help_text="Enclosing entity; empty for a root entity. Entities nest to any depth.",
    )
    path = models.CharField(
        "id", max_length=1000, help_text="The hub's entity id, a /-separated path unique within the hub (plant/line1/pump1)."
    )
    name = models.CharField("name", max_length=200, help_text="Display name reported by the hub.")
    type = models.CharField("type", max_length=100, blank=True, help_text="Entity type reported by the hub.")

    class Meta:
        ordering = ["hub", "path"]
        verbose_name = "entity"
        verbose_name_plural = "entities"
        constraints = [models.UniqueConstraint(fields=["hub", "path"], name="entity_path_unique_in_hub")]

    def __str__(self) -> str:
        return self.path

    @property
    def depth(self) -> int:
        return self.path.count("/")


class ParameterType(models.TextChoices):
    # hub protocol v1: getParams `type`
    NUMBER = "number", "number"
    INTEGER = "integer", "integer"
    BOOLEAN = "boolean", "boolean"
    STRING = "string", "string"
    ARRAY = "array", "array"
    OBJECT = "object", "object"


class Parameter(models.Model):
    entity = models.ForeignKey(
        Entity, on_delete=models.CASCADE, related_name="params", verbose_name="entity", help_text="Entity owning the parameter."
    )
    key = models.CharField("key", max_length=200, help_text="Parameter key, unique within its entity (p1).")
    name = models.CharField("name", max_length=200, blank=True, help_text="Display name reported by the hub.")
    type = models.CharField(
        "type", max_length=16, choices=ParameterType.choices, default=ParameterType.NUMBER, help_text="Value type."
    )
    unit = models.CharField("unit", max_length=50, blank=True, help_text="Engineering unit (bar, °C).")
    writable = models.BooleanField(
        "writable", default=False, help_text="Whether setEntityParams may change it; scripts write back only these."
    )

    class Meta:
        ordering = ["entity", "key"]
        verbose_name = "parameter"
        verbose_name_plural = "parameters"
        constraints = [models.UniqueConstraint(fields=["entity", "key"], name="parameter_key_unique_in_entity")]

    def __str__(self) -> str:
        return f"{self.entity.path}.{self.key}"
