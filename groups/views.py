"""HTTP API for groups.

Errors ``{"errors": [...]}``: 401 for an anonymous caller, 403 naming the permission missing (roles in
hubsched/roles.py). The status shows hub errors, hence the permission; a process of the stack reads it
in-process (``status_summary``), not over HTTP. A POST carries Django's CSRF token (``X-CSRFToken`` header,
from the ``csrftoken`` cookie) like every form of the admin.
"""

from datetime import datetime

from django.http import JsonResponse
from django.views.decorators.http import require_GET, require_POST

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


@require_POST
def api_group_kill(request, group_id: int):
    """``POST /api/groups/<id>/kill[?scheduled_for=<ISO 8601 with offset>]``: kill the group's running execution
    (of that tick; without it whichever runs now); needs a login, ``groups.kill_group`` and ``groups.view_group``.

    Waits up to ``groups.execution.KILL_PICKUP_S`` (3 s) for a worker to stop it. 200 ``{"request": id,
    "outcome": "killed", "killed_by": username}``: the run is recorded as ``killed`` (through the log, within
    a few seconds); 409 ``{"errors": ["nothing was running: ..."], "outcome": "nothing_running"}`` when no
    worker ran it; 400 for a bad ``scheduled_for``; 404 for an unknown group.
    """
    from .models import Group, KillOutcome
    from .services import group_kill

    if not request.user.is_authenticated:
        return JsonResponse({"errors": ["authentication required: log in to the admin first"]}, status=401)
    missing = permissions_missing(request.user, "groups.kill_group", "groups.view_group")
    if missing:
        return JsonResponse({"errors": [f"permission required: {perm}" for perm in missing]}, status=403)
    tick = None
    if request.GET.get("scheduled_for"):
        try:
            tick = datetime.fromisoformat(request.GET["scheduled_for"])
        except ValueError:
            tick = None
        if tick is None or tick.tzinfo is None:
            return JsonResponse({"errors": ["scheduled_for: expected an ISO 8601 time with a UTC offset"]}, status=400)
    try:
        kill = group_kill(group_id=group_id, requested_by=request.user.get_username(), scheduled_for=tick)
    except Group.DoesNotExist:
        return JsonResponse({"errors": [f"group {group_id} does not exist"]}, status=404)
    if kill.outcome == KillOutcome.KILLED:
        return JsonResponse({"request": kill.pk, "outcome": kill.outcome, "killed_by": kill.requested_by})
    return JsonResponse({"errors": [f"nothing was running: no worker was executing group {group_id}"
                                    + (f" at {tick.isoformat()}" if tick else "")],
                         "request": kill.pk, "outcome": kill.outcome}, status=409)
