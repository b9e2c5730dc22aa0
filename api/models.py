"""API tokens: per-user credentials for programs, stored as a SHA-256 digest (the secret is shown once)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiTokenQuerySet(models.QuerySet):
    def usable(self, *, now=None):
        """Tokens that authenticate now: not revoked, not expired, of an active user."""
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True, user__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now))


class ApiToken(models.Model):
    """A bearer token of one user: ``Authorization: Bearer hs_<prefix>_<secret>``.

    Only ``prefix`` (to tell tokens apart in lists) and ``digest`` (SHA-256 of the whole token, hex) are
    stored: the token is 256 bits of randomness, so a fast digest is enough (no password hash needed;
    GitHub and PyPI tokens are stored the same way). A token acts with its user's permissions.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens",
                             verbose_name="user", help_text="Whose permissions the token acts with.")
    name = models.CharField("name", max_length=200, help_text="What the token is for (ci, export script).")
    prefix = models.CharField("prefix", max_length=16, unique=True, editable=False,
                              help_text="First characters of the token, to recognise it; not a secret.")
    digest = models.CharField("digest", max_length=64, unique=True, editable=False,
                              help_text="SHA-256 of the token, hex; the token itself is never stored.")
    created_at = models.DateTimeField("created at", auto_now_add=True, help_text="When the token was made.")
    expires_at = models.DateTimeField("expires at", null=True, blank=True,
                                      help_text="After this the token no longer authenticates; empty: never.")
    last_used_at = models.DateTimeField("last used", null=True, blank=True, editable=False,
                                        help_text="Latest request it authenticated (to the minute).")
    revoked_at = models.DateTimeField("revoked at", null=True, blank=True, editable=False,
                                      help_text="When it was revoked; a revoked token never authenticates again.")

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"
        verbose_name_plural = "API tokens"
        ordering = ["-created_at"]
        permissions = [("manage_apitoken", "Can see and revoke the API tokens of every user")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def state(self) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"
