"""The console's script editor and debugger (docs/console.md, "Scripts"): a project's scripts; the editor (CodeMirror
with Python highlighting, the sandbox's compile errors at their line and column as one types, breakpoints set in
the gutter); *Test on live values* (poll a group once, run what is typed, show the bindings in and out and what it
would write back, write nothing) and the debugger (the same run stopping at the breakpoints, every binding and
local at each stop: ``scripts_engine.services.script_debug``).

Reads need ``scripts_engine.view_script``; saving ``change_script`` / ``add_script``; a test or debug run
``scripts_engine.debug_script`` and ``groups.view_group`` (live values). Nothing here writes to a hub or a sink.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from groups.models import Group
from hubs.models import Project
from scripts_engine.models import Script
from scripts_engine.sandbox import ScriptError, script_compile
from scripts_engine.services import ScriptDebugError, script_change, script_create, script_debug

from ..forms import ScriptDebugForm, ScriptForm
from .writes import saved

STEPS_MAX = 1000  # stops the debugger records for one run ("step": every line after the first breakpoint)


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("scripts_engine.view_script", raise_exception=True)
def scripts(request: HttpRequest, project_id: int) -> HttpResponse:
    """A project's scripts by name; POST makes a new one (``scripts_engine.add_script``) and opens its editor."""
    project = get_object_or_404(Project, pk=project_id)
    form = ScriptForm(initial={"timeout": 2.0, "memory_limit_mb": 256})
    status = 200
    if request.method == "POST":
        if not request.user.has_perm("scripts_engine.add_script"):
            return HttpResponse("needs the permission scripts_engine.add_script", status=403)
        form = ScriptForm(request.POST)
        created = saved(form, lambda data: script_create(project_id=project.pk, **data))
        if created is not None:
            return redirect("console:script", script_id=created.pk)
        status = 422
    rows = Script.objects.filter(project=project).order_by("name")
    return render(request, "console/scripts.html", {"project": project, "scripts": rows, "form": form}, status=status)


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("scripts_engine.view_script", raise_exception=True)
def script(request: HttpRequest, script_id: int) -> HttpResponse:
    """The editor: POST saves (``scripts_engine.change_script``; code that does not compile under the sandbox's
    policy is refused with its line and column, nothing saved)."""
    row = get_object_or_404(Script.objects.select_related("project"), pk=script_id)
    form = ScriptForm(initial={name: getattr(row, name) for name in ScriptForm.FIELDS})
    status = 200
    if request.method == "POST":
        if not request.user.has_perm("scripts_engine.change_script"):
            return HttpResponse("needs the permission scripts_engine.change_script", status=403)
        form = ScriptForm(request.POST)
        if saved(form, lambda data: script_change(script=Script.objects.get(pk=row.pk), changes=data)) is not None:
            return redirect("console:script", script_id=row.pk)
        status = 422
    groups = Group.objects.filter(hub__project=row.project).select_related("hub").order_by("-script_id", "hub__name", "name")
    debug = ScriptDebugForm(project=row.project, initial={"group": Group.objects.filter(script=row).first()})
    return render(request, "console/script.html", {"script": row, "form": form, "debug": debug,
                                                   "uses": groups.filter(script=row)[:20]}, status=status)


@require_POST
@login_required
@permission_required("scripts_engine.view_script", raise_exception=True)
def script_check(request: HttpRequest) -> JsonResponse:
    """Compile ``code`` under the sandbox's policy without running it: ``{"error": null}`` or
    ``{"error": {"kind": "syntax" | "refused", "message", "line", "column"}}`` (1-based). The editor's lint."""
    code = request.POST.get("code", "")
    try:
        script_compile(code=code)
    except ScriptError as exc:
        return JsonResponse({"error": {"kind": exc.kind, "message": str(exc), "line": exc.line, "column": exc.column}})
    return JsonResponse({"error": None})


@require_POST
@login_required
@permission_required(["scripts_engine.view_script", "scripts_engine.debug_script", "groups.view_group"],
                     raise_exception=True)
def script_run(request: HttpRequest, script_id: int) -> HttpResponse:
    """Test or debug what is typed (``code``) on a group's live values (``group``, polled once now):
    ``breakpoints`` (line numbers) stop the run, ``step`` records every line after the first one. Answers the
    bindings in and out, the changed ones (what a run would write back to writable keys), the output, the stops
    with every binding and local, or the error at its line. Writes nothing to the hub or a sink."""
    row = get_object_or_404(Script.objects.select_related("project"), pk=script_id)
    form = ScriptDebugForm(request.POST, project=row.project)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        return render(request, "console/_script_run.html", {"failure": f"{field}: {errors[0]}"}, status=422)
    data = form.cleaned_data
    try:
        session = script_debug(script=row, bindings={}, breakpoints=data["breakpoints"],
                               actions=["step"] * STEPS_MAX if data["step"] else [], group_id=data["group"].pk,
                               code=data["code"])
    except ScriptDebugError as exc:
        return render(request, "console/_script_run.html", {"failure": exc.message}, status=422)
    run = session.run
    return render(request, "console/_script_run.html", {
        "bindings_in": session.bindings_in, "result": run.result, "error": run.error,
        "stops": [stop.as_dict() for stop in run.stops], "truncated": run.truncated,
        "changed": sorted(run.result.changed) if run.result is not None else [],
    })
