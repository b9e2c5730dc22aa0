"""The console's sinks of a project: where its values are stored (docs/console.md, "Sinks"). A sink's URL is shown
masked (``hubsched.secrets.url_mask``) and never sent back in clear; writes go through scripts_engine.services
(the admin's, the API's and the import's rules). Needs ``scripts_engine.view_sink``, ``add_sink``, ``delete_sink``.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from hubs.models import Project
from hubsched.secrets import url_mask
from scripts_engine.forms import SinkConsoleForm
from scripts_engine.models import Sink
from scripts_engine.services import sink_create, sink_delete

from .writes import saved


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("scripts_engine.view_sink", raise_exception=True)
def sinks(request: HttpRequest, project_id: int) -> HttpResponse:
    """A project's sinks; POST adds one (``scripts_engine.add_sink``)."""
    project = get_object_or_404(Project, pk=project_id)
    form = SinkConsoleForm(instance=Sink(project=project))
    status = 200
    if request.method == "POST":
        if not request.user.has_perm("scripts_engine.add_sink"):
            return HttpResponse("needs the permission scripts_engine.add_sink", status=403)
        form = SinkConsoleForm(request.POST, instance=Sink(project=project))
        if saved(form, lambda data: sink_create(project_id=project.pk, **data)) is not None:
            return redirect("console:sinks", project_id=project.pk)
        status = 422
    rows = [(sink, url_mask(sink.url)) for sink in Sink.objects.filter(project=project).order_by("name")]
    return render(request, "console/sinks.html", {"project": project, "sinks": rows, "form": form}, status=status)


@require_POST
@login_required
@permission_required("scripts_engine.delete_sink", raise_exception=True)
def sink_delete_view(request: HttpRequest, sink_id: int) -> HttpResponse:
    """Delete a sink (after the page's confirmation); the values it holds stay in its database."""
    sink = get_object_or_404(Sink, pk=sink_id)
    project_id = sink.project_id
    sink_delete(sink=sink)
    return redirect("console:sinks", project_id=project_id)
