"""HTTP API for scripts: the debugger (JSON in, JSON out).

Errors ``{"error": {"kind": "request", "message"}}``: 401 for an anonymous caller, 403 naming the permission
missing (roles in hubsched/roles.py). A POST carries Django's CSRF token (``X-CSRFToken`` header, from the
``csrftoken`` cookie), as every admin form does.
"""

from __future__ import annotations

import json

from django.http import JsonResponse
from django.views.decorators.http import require_POST

from hubsched.roles import permissions_missing

from .models import Script
from .services import ScriptDebugError, debug_payload, script_debug


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": {"kind": "request", "message": message}}, status=status)


# What each part of a debug request needs beyond scripts_engine.debug_script. Storing writes the bindings
# into the project's sinks, the step a group run ends with, so it needs what running a group needs.
PERMISSIONS_OF = {
    "live": ("groups.view_group",),
    "write_back": ("hubs.write_hub",),
    "store": ("groups.run_group",),
}


def scripts_visible(user):
    """The scripts ``user`` may see: every one with ``scripts_engine.view_script``, else none."""
    return Script.objects.all() if user.has_perm("scripts_engine.view_script") else Script.objects.none()


@require_POST
def api_script_debug(request, script_id: int):
    """``POST /api/scripts/<id>/debug``: run the script under the debugger; see docs/scripts.md for the shapes.

    Needs ``scripts_engine.debug_script`` (and ``view_script``: an unseen script is a 404); ``live`` also
    ``groups.view_group``, ``write_back`` also ``hubs.write_hub``, ``store`` also ``groups.run_group``.
    """
    if not request.user.is_authenticated:
        return _error(401, "authentication required: log in to the admin first")
    missing = permissions_missing(request.user, "scripts_engine.debug_script")
    if missing:
        return _error(403, f"permission required: {missing[0]}")
    script = scripts_visible(request.user).filter(pk=script_id).select_related("project").first()
    if script is None:
        return _error(404, f"no script {script_id}")
    try:
        body = json.loads(request.body or b"{}")
    except ValueError as exc:
        return _error(400, f"the body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    bindings = body.get("bindings") or {}
    breakpoints = body.get("breakpoints") or []
    actions = body.get("actions") or []
    if body.get("step"):
        actions = ["step"] * 1000  # record every line after the first breakpoint
    if not isinstance(bindings, dict):
        return _error(400, "bindings must be an object of name -> value")
    if not (isinstance(breakpoints, list) and all(isinstance(b, int) and not isinstance(b, bool) for b in breakpoints)):
        return _error(400, "breakpoints must be a list of line numbers")
    if not (isinstance(actions, list) and all(a in ("step", "continue") for a in actions)):
        return _error(400, 'actions must be a list of "step" or "continue"')
    asked = [part for part in PERMISSIONS_OF if body.get(part)]
    missing = permissions_missing(request.user, *dict.fromkeys(p for part in asked for p in PERMISSIONS_OF[part]))
    if missing:
        return _error(403, f"permission required: {', '.join(missing)}")
    group_id = body.get("group")
    if body.get("live") and not isinstance(group_id, int):
        return _error(400, "live values need a group id: {\"live\": true, \"group\": <id>}")
    try:
        session = script_debug(
            script=script,
            bindings=bindings,
            breakpoints=breakpoints,
            actions=actions,
            group_id=group_id if body.get("live") else None,
            write_back=bool(body.get("write_back")),
            store=bool(body.get("store")),
        )
    except ScriptDebugError as exc:
        return _error(exc.status, exc.message)
    return JsonResponse(debug_payload(session))
