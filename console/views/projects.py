"""The console's project tree: projects, their hubs, each hub's groups (loaded when a hub is opened), the hub form
with its connection test and discovery, and project documents' import and export (docs/console.md, "Projects and
hubs").

Every view needs a login and a model permission (hubsched/roles.py), never just ``is_staff``; writes are POSTs with
Django's CSRF token and go through the services of hubs/services.py and groups/services.py, whose model validation
is the admin's, the API's and the import's. A refused write answers 422 with the message beside its field and
changes nothing. A delete is confirmed on a page that says what goes with it (a dry run of the same delete).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from groups.models import Group
from groups.services import groups_enabled_set
from hubs.client import HubError
from hubs.forms import HubConsoleForm, ProjectImportForm
from hubs.models import Hub, Project
from hubs.project_document import ProjectDocumentError
from hubs.project_document.validation import max_bytes
from hubs.selectors import hub_list, project_list
from hubs.services import (hub_change, hub_connection_test, hub_create, hub_delete, hub_entities_sync,
                           hub_method_try, hubs_enabled_set, project_change, project_create, project_delete,
                           project_export, project_export_filename, project_import_as)

from ..forms import HubMethodForm, ProjectForm, SearchForm
from .writes import saved

PROJECTS_PAGE = 50  # projects a page of the list shows
HUBS_PAGE = 50  # hubs a page of a project shows
HUB_IDS = "hub_%s"  # the hub form's element ids: unique beside the project form on the project page
GROUPS_PAGE = 100  # groups an opened hub shows at once ("more" loads the next ones)

DELETED_LABELS = {  # the rows a delete takes with it, in words (Django's app_label.model from services._deleted_counts)
    "hubs.project": "project", "hubs.hub": "hubs", "hubs.entity": "entities", "hubs.parameter": "parameters",
    "hubs.huboffset": "offsets", "groups.group": "groups", "groups.groupkey": "group keys", "groups.grouprun": "runs",
    "scripts_engine.script": "scripts", "scripts_engine.sink": "sinks", "scripts_engine.datasource": "data sources",
    "alarms.alarmrule": "alarm rules", "jobs.job": "jobs", "groups.groupstats": "counters",
    "django_celery_beat.periodictask": "schedule entries", "alarms.rulestate": "rule states",
}


def _page_number(request: HttpRequest) -> int:
    try:
        return max(1, int(request.GET.get("page") or 1))
    except ValueError:
        return 1


def _hub_fields(data: dict) -> dict:
    return {name: data[name] for name in HubConsoleForm.Meta.fields}


def _deleted_words(counts: dict[str, int]) -> list[tuple[str, int]]:
    return [(DELETED_LABELS.get(label, label), n) for label, n in counts.items()]


# --- projects ----------------------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("hubs.view_project", raise_exception=True)
def projects(request: HttpRequest) -> HttpResponse:
    """The projects by name, 50 a page, ``?q=`` a part of the name; POST creates one (``hubs.add_project``)."""
    form = ProjectForm()
    status = 200
    if request.method == "POST":
        if not request.user.has_perm("hubs.add_project"):
            return HttpResponse("needs the permission hubs.add_project", status=403)
        form = ProjectForm(request.POST)
        created = saved(form, lambda data: project_create(**data))
        if created is not None:
            return redirect("console:project", project_id=created.pk)
        status = 422
    search = SearchForm(request.GET)
    query = search.cleaned_data["q"] if search.is_valid() else ""
    page = Paginator(project_list(search=query or None), PROJECTS_PAGE).get_page(_page_number(request))
    return render(request, "console/projects.html", {"page": page, "form": form, "q": query}, status=status)


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("hubs.view_project", raise_exception=True)
def project(request: HttpRequest, project_id: int) -> HttpResponse:
    """A project: its settings (POST changes them, ``hubs.change_project``) and its hubs, 50 a page, ``?q=`` a part
    of a hub's name; each hub opens to its groups."""
    row = get_object_or_404(Project, pk=project_id)
    form = ProjectForm(instance=row)
    status = 200
    if request.method == "POST":
        if not request.user.has_perm("hubs.change_project"):
            return HttpResponse("needs the permission hubs.change_project", status=403)
        form = ProjectForm(request.POST, instance=Project.objects.get(pk=row.pk))
        if saved(form, lambda data: project_change(project=Project.objects.get(pk=row.pk), **data)) is not None:
            return redirect("console:project", project_id=row.pk)
        status = 422
    search = SearchForm(request.GET)
    query = search.cleaned_data["q"] if search.is_valid() else ""
    hubs = Paginator(hub_list(project_id=row.pk, search=query or None), HUBS_PAGE).get_page(_page_number(request))
    return render(request, "console/project.html", {
        "project": row, "form": form, "hubs": hubs, "q": query,
        "hub_form": HubConsoleForm(instance=Hub(project=row), auto_id=HUB_IDS),
    }, status=status)


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("hubs.delete_project", raise_exception=True)
def project_delete_view(request: HttpRequest, project_id: int) -> HttpResponse:
    """GET: what deleting the project would take with it (a dry run); POST: delete it, then the project list."""
    row = get_object_or_404(Project, pk=project_id)
    if request.method == "POST":
        project_delete(project=row)
        return redirect("console:projects")
    counts = project_delete(project=row, dry_run=True)
    return render(request, "console/delete_confirm.html", {
        "what": f"project {row.name}", "counts": _deleted_words(counts),
        "action": reverse("console:project-delete", args=[row.pk]),
        "back": reverse("console:project", args=[row.pk]),
    })


# --- hubs --------------------------------------------------------------------------------------------------------


@require_POST
@login_required
@permission_required("hubs.add_hub", raise_exception=True)
def hub_add(request: HttpRequest, project_id: int) -> HttpResponse:
    """Add a hub to the project from the hub form; then its page (where the connection can be tested)."""
    row = get_object_or_404(Project, pk=project_id)
    form = HubConsoleForm(request.POST, instance=Hub(project=row), auto_id=HUB_IDS)
    created = saved(form, lambda data: hub_create(project=row, **_hub_fields(data)))
    if created is not None:
        return redirect("console:hub", hub_id=created.pk)
    hubs = Paginator(hub_list(project_id=row.pk), HUBS_PAGE).get_page(1)
    return render(request, "console/project.html", {
        "project": row, "form": ProjectForm(instance=row), "hubs": hubs, "q": "", "hub_form": form, "adding": True,
    }, status=422)


def _hub_page(request: HttpRequest, hub: Hub, form: HubConsoleForm, status: int = 200) -> HttpResponse:
    groups = Paginator(Group.objects.filter(hub=hub).order_by("name", "pk"), GROUPS_PAGE).get_page(1)
    return render(request, "console/hub.html", {"hub": hub, "form": form, "groups": groups,
                                                "try_form": HubMethodForm(auto_id="try_%s")}, status=status)


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("hubs.view_hub", raise_exception=True)
def hub(request: HttpRequest, hub_id: int) -> HttpResponse:
    """A hub: its form (POST saves it, ``hubs.change_hub``; the key is write-only: left blank it is kept), the
    connection test, discovery, and its groups."""
    row = get_object_or_404(Hub.objects.select_related("project"), pk=hub_id)
    if request.method == "GET":
        return _hub_page(request, row, HubConsoleForm(instance=row, auto_id=HUB_IDS))
    if not request.user.has_perm("hubs.change_hub"):
        return HttpResponse("needs the permission hubs.change_hub", status=403)
    form = HubConsoleForm(request.POST, instance=Hub.objects.get(pk=row.pk), auto_id=HUB_IDS)
    if saved(form, lambda data: hub_change(hub=Hub.objects.get(pk=row.pk), **_hub_fields(data))) is not None:
        return redirect("console:hub", hub_id=row.pk)
    return _hub_page(request, row, form, status=422)


@require_POST
@login_required
@permission_required("hubs.view_hub", raise_exception=True)
def hub_test(request: HttpRequest, hub_id: int) -> HttpResponse:
    """Test the connection with the saved settings (``hubs.services.hub_connection_test``): what getInfo says, the
    clock offset and the round trip, or the error in words. A fragment for the hub page."""
    row = get_object_or_404(Hub, pk=hub_id)
    report = hub_connection_test(hub=row)
    methods = report.info.get("methods")
    return render(request, "console/_hub_test.html", {
        "report": report, "hub_name": report.info.get("hub") if isinstance(report.info.get("hub"), str) else "",
        "protocol": report.info.get("protocol"),
        "methods": [m for m in methods if isinstance(m, str)] if isinstance(methods, list) else [],
    })


@require_POST
@login_required
@permission_required("hubs.view_hub", raise_exception=True)
def hub_discover(request: HttpRequest, hub_id: int) -> HttpResponse:
    """Read the hub's entity tree and parameters; ``apply=1`` (``hubs.change_hub``) makes the hub's entities match,
    otherwise a dry run shows what would be added, changed and removed, with the button that applies it."""
    row = get_object_or_404(Hub, pk=hub_id)
    apply = request.POST.get("apply") == "1"
    if apply and not request.user.has_perm("hubs.change_hub"):
        return HttpResponse("needs the permission hubs.change_hub", status=403)
    try:
        changes = hub_entities_sync(hub=row, dry_run=not apply)
    except HubError as exc:
        return render(request, "console/_hub_discover.html", {"hub": row, "error": str(exc)}, status=422)
    return render(request, "console/_hub_discover.html", {
        "hub": row, "applied": apply, "changes": changes,
        "empty": not (changes.added or changes.changed or changes.gone),
        "can_apply": request.user.has_perm("hubs.change_hub"),
    })


@require_POST
@login_required
@permission_required("hubs.enable_hub", raise_exception=True)
def hub_switch(request: HttpRequest, hub_id: int) -> HttpResponse:
    """Enable (``enabled=1``) or disable a hub; its groups follow. Answers the hub's row of the project tree."""
    row = get_object_or_404(Hub, pk=hub_id)
    hubs_enabled_set(hub_ids=[row.pk], enabled=request.POST.get("enabled") == "1")
    shown = hub_list(project_id=row.project_id).get(pk=row.pk)
    return render(request, "console/_hub_row.html", {"hub": shown})


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("hubs.delete_hub", raise_exception=True)
def hub_delete_view(request: HttpRequest, hub_id: int) -> HttpResponse:
    """GET: what deleting the hub would take with it (a dry run); POST: delete it, then its project."""
    row = get_object_or_404(Hub.objects.select_related("project"), pk=hub_id)
    if request.method == "POST":
        project_id = row.project_id
        hub_delete(hub=row)
        return redirect("console:project", project_id=project_id)
    counts = hub_delete(hub=row, dry_run=True)
    return render(request, "console/delete_confirm.html", {
        "what": f"hub {row.name} of project {row.project.name}", "counts": _deleted_words(counts),
        "action": reverse("console:hub-delete", args=[row.pk]), "back": reverse("console:hub", args=[row.pk]),
    })


# --- a hub's groups (the tree's third level) ---------------------------------------------------------------------


@require_GET
@login_required
@permission_required("groups.view_group", raise_exception=True)
def hub_groups(request: HttpRequest, hub_id: int) -> HttpResponse:
    """The groups of a hub, 100 at a time (``?page=``): the fragment an opened hub loads."""
    row = get_object_or_404(Hub, pk=hub_id)
    groups = Paginator(Group.objects.filter(hub=row).order_by("name", "pk"), GROUPS_PAGE).get_page(_page_number(request))
    return render(request, "console/_hub_groups.html", {"hub": row, "groups": groups})


@require_POST
@login_required
@permission_required("groups.enable_group", raise_exception=True)
def group_switch(request: HttpRequest, group_id: int) -> HttpResponse:
    """Enable (``enabled=1``) or disable a group (its schedule follows). Answers the group's row."""
    group = Group.objects.filter(pk=group_id).select_related("hub").first()
    if group is None:
        raise Http404("no such group")
    groups_enabled_set(group_ids=[group.pk], enabled=request.POST.get("enabled") == "1")
    group.refresh_from_db()
    return render(request, "console/_group_row.html", {"group": group})


# --- project documents: import and export ------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("hubs.add_project", raise_exception=True)
def project_import_view(request: HttpRequest) -> HttpResponse:
    """Import a project document (an uploaded file, ``replace`` to update the project of its name): on success the
    project's page, else every error at its JSON path (``hubs[0].groups[1].period: ...``) and nothing changed.
    What it takes is checked by ``hubs.services.project_import_as`` (the admin's import)."""
    form = ProjectImportForm(request.POST or None, request.FILES or None)
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        raw = form.cleaned_data["document"].read(max_bytes() + 1)
        try:
            result = project_import_as(user=request.user, raw=raw, replace=form.cleaned_data["replace"])
        except ProjectDocumentError as exc:
            errors = exc.errors
        else:
            return redirect("console:project", project_id=result.project.pk)
    status = 422 if request.method == "POST" else 200
    return render(request, "console/project_import.html", {"form": form, "errors": errors}, status=status)


@require_GET
@login_required
@permission_required("hubs.view_project", raise_exception=True)
def project_export_view(request: HttpRequest, project_id: int) -> HttpResponse:
    """The project as a ``hubsched.project/1`` JSON download; secrets as ``${NAME}`` references unless
    ``?secrets=1``, which needs ``hubs.export_secrets``."""
    row = get_object_or_404(Project, pk=project_id)
    secrets = request.GET.get("secrets") == "1"
    if secrets and not request.user.has_perm("hubs.export_secrets"):
        return HttpResponse("needs the permission hubs.export_secrets", status=403)
    response = HttpResponse(project_export(project=row, include_secrets=secrets), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{project_export_filename(row.name)}.json"'
    return response


@require_POST
@login_required
@permission_required("hubs.view_hub", raise_exception=True)
def hub_try(request: HttpRequest, hub_id: int) -> HttpResponse:
    """Call one of the hub's methods with the params typed (``hubs.services.hub_method_try``; ``setEntityParams``
    also needs ``hubs.write_hub``) and show its answer as JSON, or the error in words, with the round trip."""
    import json

    row = get_object_or_404(Hub, pk=hub_id)
    form = HubMethodForm(request.POST)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        return render(request, "console/_hub_try.html", {"failure": f"{field}: {errors[0]}"}, status=422)
    method = form.cleaned_data["method"]
    if method == "setEntityParams" and not request.user.has_perm("hubs.write_hub"):
        return render(request, "console/_hub_try.html", {"failure": "setEntityParams needs the permission "
                                                                    "hubs.write_hub"}, status=403)
    outcome = hub_method_try(hub=row, method=method, params=form.cleaned_data["params"])
    return render(request, "console/_hub_try.html", {
        "outcome": outcome, "answer": json.dumps(outcome.result, indent=2, ensure_ascii=False, default=str)})
