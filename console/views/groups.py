"""The console's group editor (the group settings window): a group's name, trigger with its next five fire times
in the project's time zone (a daylight-saving change between them noted, a cron expression in words), expiry,
script, keys picked from the hub's parameters; run now, the last runs, and the live values with a trend per numeric
key (Server-Sent Events: console/live.py) (docs/console.md, "Groups").

Writes go through groups.services (``group_drafts_make``, ``groups_create``, ``group_change``), whose
``groups_check`` is the API's and the import's rule set; a refused group is answered beside its fields (422)
and nothing is saved. Every view needs a login and a model permission (hubsched/roles.py).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from groups.models import Group
from groups.selectors import group_fire_times, group_runs_list
from groups.services import GroupsInvalid, group_change, group_drafts_make, groups_create, groups_run_now
from hubs.models import Hub
from hubs.selectors import hub_parameter_list

from ..forms import GroupForm, group_keys_text

RUNS_SHOWN = 10  # the last runs the group's page shows
PICKER_MAX = 50  # parameters the key picker shows for one search


def _problems_into(form: GroupForm, problems: list[tuple[int, str, str]]) -> None:
    """GroupsInvalid's problems beside their fields: ``keys[2].entity`` beside the keys as "key 3", a field's by
    its name, the rest (the group as a whole, its hub) above the form."""
    for _index, path, message in problems:
        field = path.split(".")[0].split("[")[0]
        if field == "keys" and "[" in path:
            number = int(path.split("[")[1].split("]")[0]) + 1
            form.add_error("keys", f"key {number}: {message}")
        elif field in form.fields:
            form.add_error(field, message)
        else:
            form.add_error(None, f"{path}: {message}" if path else message)


def _bound(request: HttpRequest, hub: Hub) -> GroupForm:
    """The posted editor, its times read in the project's time zone."""
    form = GroupForm(request.POST, project=hub.project)
    with timezone.override(hub.project.time_zone):
        form.is_valid()
    return form


def _page(request: HttpRequest, *, hub: Hub, form: GroupForm, group: Group | None, status: int = 200) -> HttpResponse:
    preview_of = group
    if form.is_bound and form.is_valid():  # the times of what is being edited
        preview_of = Group(hub=hub, **{k: v for k, v in form.cleaned_data.items() if k in ("trigger", "period", "offset", "cron", "run_at")})
    times = group_fire_times(group=preview_of, time_zone=hub.project.time_zone) if preview_of is not None else None
    runs = list(group_runs_list(group_id=group.pk)[:RUNS_SHOWN]) if group is not None else []
    return render(request, "console/group.html", {
        "hub": hub, "group": group, "form": form, "times": times, "runs": runs, "time_zone": hub.project.time_zone,
    }, status=status)


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("groups.add_group", raise_exception=True)
def group_new(request: HttpRequest, hub_id: int) -> HttpResponse:
    """A new group on the hub; saved, it is scheduled at once, and its page is shown."""
    hub = get_object_or_404(Hub.objects.select_related("project"), pk=hub_id)
    if request.method == "GET":
        return _page(request, hub=hub, form=GroupForm(project=hub.project, initial={"trigger": "interval", "period": 1.0,
                                                                               "enabled": True}), group=None)
    form = _bound(request, hub)
    if form.is_valid():
        try:
            group = groups_create(drafts=group_drafts_make(items=[{**form.item(), "hub": hub.pk}]))[0]
        except GroupsInvalid as exc:
            _problems_into(form, exc.problems)
        else:
            return redirect("console:group", group_id=group.pk)
    return _page(request, hub=hub, form=form, group=None, status=422)


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("groups.view_group", raise_exception=True)
def group(request: HttpRequest, group_id: int) -> HttpResponse:
    """A group's editor (POST saves it, ``groups.change_group``; its keys are replaced as a whole, in the order
    given), its next fire times and its last runs."""
    row = get_object_or_404(Group.objects.select_related("hub__project", "script"), pk=group_id)
    hub = row.hub
    if request.method == "GET":
        initial = {name: getattr(row, name) for name in ("name", "trigger", "period", "offset", "cron", "deadband",
                                                         "expires", "execution_timeout", "script", "enabled")}
        initial["run_at"] = timezone.localtime(row.run_at, timezone=_zone(hub)) if row.run_at else None
        initial["keys"] = group_keys_text(row)
        return _page(request, hub=hub, form=GroupForm(project=hub.project, initial=initial), group=row)
    if not request.user.has_perm("groups.change_group"):
        return HttpResponse("needs the permission groups.change_group", status=403)
    form = _bound(request, hub)
    if form.is_valid():
        try:
            group_change(draft=group_drafts_make(items=[form.item()], saved=[row])[0])
        except GroupsInvalid as exc:
            _problems_into(form, exc.problems)
        else:
            return redirect("console:group", group_id=row.pk)
    return _page(request, hub=hub, form=form, group=Group.objects.get(pk=row.pk), status=422)


def _zone(hub: Hub):
    from zoneinfo import ZoneInfo

    return ZoneInfo(hub.project.time_zone)


@require_POST
@login_required
@permission_required("groups.view_group", raise_exception=True)
def group_times(request: HttpRequest, hub_id: int) -> HttpResponse:
    """The next five fire times of the trigger being edited (the editor posts itself as it changes): a fragment.
    Saves nothing."""
    hub = get_object_or_404(Hub.objects.select_related("project"), pk=hub_id)
    form = GroupForm(request.POST, project=hub.project)
    with timezone.override(hub.project.time_zone):
        form.is_valid()
    data = {k: form.cleaned_data.get(k) for k in ("trigger", "period", "offset", "cron", "run_at")
            if form.cleaned_data.get(k) is not None}
    times = group_fire_times(group=Group(hub=hub, **data), time_zone=hub.project.time_zone)
    return render(request, "console/_group_times.html", {"times": times, "time_zone": hub.project.time_zone})


@require_POST
@login_required
@permission_required("groups.run_group", raise_exception=True)
def group_run(request: HttpRequest, group_id: int) -> HttpResponse:
    """Queue one execution of the group now (``groups.services.groups_run_now``); answers a line to show."""
    row = get_object_or_404(Group, pk=group_id)
    groups_run_now(group_ids=[row.pk])
    return HttpResponse(f'<p class="result ok" id="run-queued">Queued: a worker runs {row.name} now; its run appears '
                        'below (reload).</p>')


@require_GET
@login_required
@permission_required("hubs.view_parameter", raise_exception=True)
def hub_parameters(request: HttpRequest, hub_id: int) -> HttpResponse:
    """The key picker: the hub's parameters whose key, name or entity holds ``?q=`` (any case), at most 50, each
    with its type, unit and whether it is writable: a fragment."""
    hub = get_object_or_404(Hub, pk=hub_id)
    query = request.GET.get("q", "").strip()[:200]
    params = hub_parameter_list(hub=hub, search=query or None, search_paths=True)
    shown = list(params[: PICKER_MAX + 1])
    return render(request, "console/_key_picker.html", {
        "params": shown[:PICKER_MAX], "more": len(shown) > PICKER_MAX, "q": query})


@require_GET
@login_required
@permission_required(["groups.view_group", "groups.view_grouprun", "streams.read_stream"], raise_exception=True)
def group_live(request: HttpRequest, group_id: int):
    """The group's live values as Server-Sent Events (console/live.py): its newest good run's values, as the durable
    log holds them, each time a newer run is stored. Needs what reading values takes in the API."""
    from ..live import live_respond

    row = get_object_or_404(Group, pk=group_id)
    return live_respond(request, group_id=row.pk)


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("groups.delete_group", raise_exception=True)
def group_delete_view(request: HttpRequest, group_id: int) -> HttpResponse:
    """GET: what deleting the group takes with it (keys, runs, counters, its schedule); POST: delete it
    (``groups.services.groups_delete``), then its hub."""
    from django.urls import reverse

    from groups.selectors import group_delete_counts
    from groups.services import groups_delete

    from .projects import DELETED_LABELS

    row = get_object_or_404(Group.objects.select_related("hub"), pk=group_id)
    if request.method == "POST":
        groups_delete(group_ids=[row.pk])
        return redirect("console:hub", hub_id=row.hub_id)
    counts = group_delete_counts(group=row)
    return render(request, "console/delete_confirm.html", {
        "what": f"group {row.name} of hub {row.hub.name}",
        "counts": [(DELETED_LABELS.get(label, label), n) for label, n in counts.items()],
        "action": reverse("console:group-delete", args=[row.pk]), "back": reverse("console:group", args=[row.pk]),
    })
