"""API token writes: create (the secret returned once), revoke, and the authentication of a bearer token."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.utils import timezone

from .models import ApiToken

TOKEN_PREFIX = "hs_"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most once a minute per token


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_secret() -> tuple[str, str, str]:
    """A new token's ``(prefix, digest, token)``: what a row stores, and the secret to show once."""
    prefix = secrets.token_hex(4)
    raw = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return prefix, _digest(raw), raw


def api_token_check(*, name: str, expires_at: datetime | None) -> str:
    """The rules of a new token (admin, console and API alike); returns the stripped name.
    Raises ``ValueError`` naming the field."""
    name = (name or "").strip()
    if not name:
        raise ValueError("name: a token needs a name that says what it is for")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValueError("expires_at: the expiry is in the past")
    return name


def api_token_create(*, user, name: str, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Make a token for ``user``; returns ``(row, token)``. ``token`` (``hs_<8 hex>_<43 chars>``) is the
    only copy of the secret: show it once and forget it. Raises ``ValueError`` for an empty name or an
    expiry in the past."""
    name = api_token_check(name=name, expires_at=expires_at)
    prefix, digest, raw = api_token_secret()
    token = ApiToken.objects.create(user=user, name=name, prefix=prefix, digest=digest, expires_at=expires_at)
    return token, raw


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke ``token`` (idempotent: a second call keeps the first time)."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def api_token_authenticate(*, raw: str):
    """The user a bearer token stands for, or None when it is unknown, revoked, expired or its user inactive.
    Records ``last_used_at`` (to the minute)."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    now = timezone.now()
    token = ApiToken.objects.usable(now=now).select_related("user").filter(digest=_digest(raw)).first()
    if token is None:
        return None
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
