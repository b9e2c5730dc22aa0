"""The permission check every endpoint makes (the roles of hubsched/roles.py)."""

from __future__ import annotations

from hubsched.roles import permissions_missing

from .errors import ApiError, denied


def require(request, *perms: str) -> None:
    """Raise ``ApiError(403)`` naming each of ``perms`` (``"app_label.codename"``) the caller lacks, 401
    when nobody is logged in."""
    user = getattr(request, "auth", None) or request.user
    if not getattr(user, "is_authenticated", False):
        raise ApiError(401, "authentication required")
    missing = permissions_missing(user, *perms)
    if missing:
        raise denied(missing)
