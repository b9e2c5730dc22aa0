"""HTTP API for scripts: the debugger (JSON in, JSON out; staff only)."""

from __future__ import annotations

import json

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import Script
from .services import ScriptDebugError, debug_payload, script_debug


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": {"kind": "request", "message": message}}, status=status)


@csrf_exempt  # a JSON API for staff sessions; the session login is the guard
@require_POST
def api_script_debug(request, script_id: int):
    """``POST /api/scripts/<id>/debug``: run the script under the debugger; see docs/scripts.md for the shapes."""
    if not (request.user.is_authenticated and request.user.is_active and request.user.is_staff):
        return _error(403, "staff login required")
    script = Script.objects.filter(pk=script_id).select_related("project").first()
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
