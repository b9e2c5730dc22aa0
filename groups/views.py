"""HTTP API for groups.

Errors ``{"errors": [...]}``: 401 for an anonymous caller, 403 naming the permission missing (roles in
hubsched/roles.py). The status shows hub errors, hence the permission; a process of the stack reads it
in-process (``status_summary``), not over HTTP.
"""

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from hubsched.roles import permissions_missing

from .selectors import status_summary


@require_GET
def api_status(request):
    """``GET /api/status``: ``status_summary()``; needs a login and ``groups.view_group``."""
    if not request.user.is_authenticated:
        return JsonResponse({"errors": ["authentication required: log in to the admin first"]}, status=401)
    missing = permissions_missing(request.user, "groups.view_group")
    if missing:
        return JsonResponse({"errors": [f"permission required: {perm}" for perm in missing]}, status=403)
    return JsonResponse(status_summary())
