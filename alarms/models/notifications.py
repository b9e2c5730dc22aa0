"""Notification routes (where alarms are sent), the notifications waiting to go, and each sending attempt."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, URLValidator, validate_email
from django.db import models

from hubsched.secrets import EncryptedTextField

from .alarms import Severity

__all__ = ["RouteKind", "NotificationRoute", "NotificationStatus", "Notification", "NotificationAttempt",
           "email_to_errors"]


class RouteKind(models.TextChoices):
    EMAIL = "email", "e-mail"
    WEBHOOK = "webhook", "webhook"


def email_to_errors(value: str) -> list[str]:
    """The rule for ``email_to`` (admin, API alike): a comma-separated list of at least one valid address."""
    addresses = [a.strip() for a in (value or "").split(",") if a.strip()]
    if not addresses:
        return ["give at least one e-mail address"]
    errors = []
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            errors.append(f"{address!r} is not an e-mail address")
    return errors


class NotificationRouteQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)


class NotificationRoute(models.Model):
    """One destination of a project's alarms: an e-mail list or a webhook, with its grouping and repeat."""

    project = models.ForeignKey("hubs.Project", on_delete=models.CASCADE, related_name="notification_routes",
                                verbose_name="project", help_text="Project whose alarms it sends.")
    name = models.CharField("name", max_length=200, help_text="Name, unique within the project.")
    kind = models.CharField("kind", max_length=16, choices=RouteKind.choices,
                            help_text="email: through Django's mail backend; webhook: an HTTP POST of JSON.")
    email_to = models.CharField("e-mail to", max_length=1000, blank=True,
                                help_text="Comma-separated addresses (kind email).")
    webhook_url = models.CharField("webhook URL", max_length=1000, blank=True,
                                   help_text="http or https URL the JSON body is POSTed to (kind webhook).")
    webhook_headers = EncryptedTextField(
        "webhook headers", blank=True, default="",
        help_text='JSON object of extra headers, e.g. {"Authorization": "Bearer ..."}; encrypted at rest, '
        "never shown back.")
    min_severity = models.CharField("minimum severity", max_length=16, choices=Severity.choices,
                                    default=Severity.LOW,
                                    help_text="Alarms less urgent than this are not sent.")
    all_rules = models.BooleanField("all rules", default=True,
                                    help_text="Alarms of every rule of the project go to it (until rules name "
                                    "their routes).")
    system_alarms = models.BooleanField("system alarms", default=True,
                                        help_text="The project's system alarms (hub unreachable, ...) go to it.")
    group_wait_s = models.FloatField("group wait (s)", default=10.0, validators=[MinValueValidator(0.0)],
                                     help_text="Alarms raised within this many seconds of the first go in one "
                                     "message (Alertmanager's group_wait).")
    repeat_interval_s = models.FloatField(
        "repeat interval (s)", default=4 * 3600.0, validators=[MinValueValidator(1.0)],
        help_text="A still active, unacknowledged, unshelved alarm is sent again after this many seconds "
        "(Alertmanager's repeat_interval).")
    send_cleared = models.BooleanField("send cleared", default=True,
                                       help_text="Also send a message when an alarm clears.")
    enabled = models.BooleanField("enabled", default=True, help_text="A disabled route sends nothing.")

    objects = NotificationRouteQuerySet.as_manager()

    class Meta:
        verbose_name = "notification route"
        verbose_name_plural = "notification routes"
        ordering = ["project_id", "name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="notification_route_name_unique")]

    def __str__(self) -> str:
        return self.name

    def headers(self) -> dict[str, str]:
        """The webhook's extra headers as a dict (empty when none)."""
        return json.loads(self.webhook_headers) if self.webhook_headers else {}

    def clean(self):
        problems: dict[str, list[str]] = {}
        if self.kind == RouteKind.EMAIL:
            errors = email_to_errors(self.email_to)
            if errors:
                problems["email_to"] = errors
        if self.kind == RouteKind.WEBHOOK:
            try:
                URLValidator(schemes=["http", "https"])(self.webhook_url)
            except ValidationError:
                problems["webhook_url"] = ["give an http or https URL"]
        if self.webhook_headers:
            try:
                headers = json.loads(self.webhook_headers)
                ok = isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in headers.items())
            except ValueError:
                ok = False
            if not ok:
                problems["webhook_headers"] = ["give a JSON object of text values"]
        if problems:
            raise ValidationError(problems)


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "pending"
    SENT = "sent", "sent"
    FAILED = "failed", "failed"
    SKIPPED = "skipped", "skipped"


class Notification(models.Model):
    """One alarm transition to send on one route; grouped with others into one message (``batch``)."""

    route = models.ForeignKey(NotificationRoute, on_delete=models.CASCADE, related_name="notifications",
                              verbose_name="route", help_text="Where it goes.")
    alarm = models.ForeignKey("alarms.Alarm", on_delete=models.CASCADE, related_name="notifications",
                              verbose_name="alarm", help_text="What it is about.")
    transition = models.CharField("transition", max_length=16,
                                  help_text="raised, reraised, cleared, or repeat (still active after the "
                                  "route's repeat interval).")
    created_at = models.DateTimeField("created at", help_text="When the transition happened.")
    status = models.CharField("status", max_length=16, choices=NotificationStatus.choices,
                              default=NotificationStatus.PENDING,
                              help_text="pending, sent, failed (every attempt failed) or skipped (shelved by then).")
    sent_at = models.DateTimeField("sent at", null=True, blank=True, help_text="When its message was delivered.")
    batch = models.UUIDField("batch", null=True, blank=True,
                             help_text="The message it went in; the attempts of that message share it.")
    tries = models.PositiveIntegerField("tries", default=0, help_text="Failed attempts at sending its message.")
    next_try_at = models.DateTimeField("next try at", null=True, blank=True,
                                       help_text="After a failed attempt: not before then (backoff 1 s, 2 s, 4 s ...).")

    class Meta:
        verbose_name = "notification"
        verbose_name_plural = "notifications"
        ordering = ["created_at", "id"]
        indexes = [
            # notifications_dispatch: the pending ones of a route, oldest first
            models.Index(fields=["route", "status", "created_at"], name="notification_route_pending"),
            # the repeat: the latest notification of an alarm on a route
            models.Index(fields=["route", "alarm", "-created_at"], name="notification_route_alarm"),
        ]

    def __str__(self) -> str:
        return f"{self.transition} of alarm {self.alarm_id} on {self.route_id}"


class NotificationAttempt(models.Model):
    """One try at sending one message (a batch of notifications, or a test message)."""

    route = models.ForeignKey(NotificationRoute, on_delete=models.CASCADE, related_name="attempts",
                              verbose_name="route", help_text="Where it was sent.")
    batch = models.UUIDField("batch", help_text="The message; its retries share it.")
    number = models.PositiveIntegerField("attempt", help_text="1 for the first try, 2 for the first retry, ...")
    at = models.DateTimeField("at", help_text="When it was tried.")
    ok = models.BooleanField("ok", help_text="Delivered (HTTP 2xx, or the mail server accepted it).")
    status = models.PositiveIntegerField("HTTP status", null=True, blank=True,
                                         help_text="The webhook's answer; empty for e-mail or no answer.")
    error = models.TextField("error", blank=True, help_text="Why it failed (secrets masked).")
    alarms_count = models.PositiveIntegerField("alarms", default=0, help_text="Alarms in the message.")
    final = models.BooleanField("final", default=False,
                                help_text="The last try: delivered, or given up (the batch is failed).")
    test = models.BooleanField("test", default=False, help_text="A test message (the test button).")

    class Meta:
        verbose_name = "notification attempt"
        verbose_name_plural = "notification attempts"
        ordering = ["-at", "-id"]
        indexes = [
            # a route's history, newest first (the admin)
            models.Index(fields=["route", "-at"], name="notification_attempt_route_at"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.batch}: {'ok' if self.ok else 'failed'}"
