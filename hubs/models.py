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
        default=32,
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

    objects = HubQuerySet.as_manager()

    class Meta:
        ordering = ["project__name", "name"]
        verbose_name = "hub"
        verbose_name_plural = "hubs"
        permissions = [
            ("write_hub", "Can write parameter values to hubs (script write-back in the debugger, the console)"),
            ("enable_hub", "Can enable and disable hubs"),
        ]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="hub_name_unique_in_project")]

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
        if self.pk and self.project_id and self.name:
            problems = hub_rename_problems(project_id=self.project_id, hub_id=self.pk, hub_name=self.name)
            if problems:
                errors["name"] = problems
        if errors:
            raise ValidationError(errors)


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
