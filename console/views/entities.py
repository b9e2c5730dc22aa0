"""The console's entity browser: a hub's tree as discovered (children loaded when an entity is opened, a search over
ids and names), each entity's parameters with type, unit and writable, their live values read from the hub with
time stamp and quality (refreshed every 2 s while the entity is open), and writing a writable parameter behind a
confirmation (docs/console.md, "Entities").

Reads need ``hubs.view_entity`` and ``hubs.view_parameter``; a write needs ``hubs.write_hub`` (the integrator
role) and goes through ``hubs.services.hub_entity_write`` (setEntityParams, all or nothing).
"""

from __future__ import annotations

import time

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST

from hubs.client import HubError
from hubs.models import Entity, Hub, Parameter
from hubs.selectors import hub_entity_list
from hubs.services import hub_entity_values, hub_entity_write, rfc3339_seconds

from ..forms import ParameterWriteForm, SearchForm

ENTITIES_PAGE = 100  # entities one level (or one search) shows at once
STALE_S = 30.0  # a value whose hub time stamp is older than this is marked stale
READ = ["hubs.view_hub", "hubs.view_entity", "hubs.view_parameter"]


def _page_number(request: HttpRequest) -> int:
    try:
        return max(1, int(request.GET.get("page") or 1))
    except ValueError:
        return 1


@require_GET
@login_required
@permission_required(READ, raise_exception=True)
def entities(request: HttpRequest, hub_id: int) -> HttpResponse:
    """The hub's top entities, 100 a page; ``?q=`` a part of an entity's id or name, anywhere in the tree."""
    hub = get_object_or_404(Hub.objects.select_related("project"), pk=hub_id)
    search = SearchForm(request.GET)
    query = search.cleaned_data["q"] if search.is_valid() else ""
    rows = hub_entity_list(hub=hub, search=query or None, parent=None if query else "")
    page = Paginator(rows, ENTITIES_PAGE).get_page(_page_number(request))
    return render(request, "console/entities.html", {"hub": hub, "page": page, "q": query})


@require_GET
@login_required
@permission_required(READ, raise_exception=True)
def entity_children(request: HttpRequest, hub_id: int, entity_id: int) -> HttpResponse:
    """An opened entity: its parameters, then its children (100 at a time, ``?page=``): a fragment."""
    hub = get_object_or_404(Hub, pk=hub_id)
    entity = get_object_or_404(Entity, pk=entity_id, hub=hub)
    children = Paginator(hub_entity_list(hub=hub, parent=entity.path), ENTITIES_PAGE).get_page(_page_number(request))
    params = list(entity.params.order_by("key"))
    return render(request, "console/_entity_open.html", {
        "hub": hub, "entity": entity, "page": children, "params": params,
        "can_write": request.user.has_perm("hubs.write_hub") and any(p.writable for p in params)})


def _stale(ts) -> bool:
    """Whether a hub time stamp (RFC 3339, hub protocol v1) is older than STALE_S; an unreadable one is not."""
    seconds = rfc3339_seconds(ts)
    return seconds is not None and time.time() - seconds > STALE_S


@require_GET
@login_required
@permission_required(READ, raise_exception=True)
def entity_values(request: HttpRequest, hub_id: int, entity_id: int) -> HttpResponse:
    """The entity's live values read from the hub now (getEntityParams), each with its time stamp and quality,
    marked stale when the hub's time stamp is older than 30 s; or the hub's error in words. A fragment."""
    hub = get_object_or_404(Hub, pk=hub_id)
    entity = get_object_or_404(Entity, pk=entity_id, hub=hub)
    try:
        values = hub_entity_values(hub=hub, entity=entity.path)
    except HubError as exc:
        return render(request, "console/_entity_values.html", {"entity": entity, "error": str(exc)})
    for item in values:
        item["stale"] = _stale(item.get("ts"))
    return render(request, "console/_entity_values.html", {"entity": entity, "values": values})


@require_POST
@login_required
@permission_required([*READ, "hubs.write_hub"], raise_exception=True)
def entity_write(request: HttpRequest, hub_id: int, entity_id: int) -> HttpResponse:
    """Write one writable parameter (``key``, ``value`` typed as the parameter is) after the page's confirmation;
    answers what was written or, with 422, why not (a value that does not fit, a parameter not writable, the hub's
    refusal), nothing written then."""
    hub = get_object_or_404(Hub, pk=hub_id)
    entity = get_object_or_404(Entity, pk=entity_id, hub=hub)
    parameter = Parameter.objects.filter(entity=entity, key=request.POST.get("key", "")).first()
    if parameter is None or not parameter.writable:
        return _written(request, entity, key=request.POST.get("key", ""), error="not a writable parameter of this entity")
    form = ParameterWriteForm(request.POST, parameter_type=parameter.type)
    if not form.is_valid():
        error = next(iter(form.errors.values()))[0]
        return _written(request, entity, key=parameter.key, error=error)
    try:
        hub_entity_write(hub=hub, entity=entity.path, values={parameter.key: form.cleaned_data["value"]},
                         by=request.user.get_username())
    except HubError as exc:
        return _written(request, entity, key=parameter.key, error=f"the hub refused it, nothing written: {exc}")
    return _written(request, entity, key=parameter.key, value=form.cleaned_data["value"])


def _written(request: HttpRequest, entity: Entity, *, key: str, value=None, error: str = "") -> HttpResponse:
    return render(request, "console/_entity_written.html", {"entity": entity, "key": key, "value": value,
                                                            "error": error}, status=422 if error else 200)
