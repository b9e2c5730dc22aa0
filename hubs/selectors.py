"""Reads for projects and hubs: lists with filters (the API), finding a hub by name, and the entity tree as
nested data for display."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from .models import Entity, Hub, Parameter, Project


def project_list(*, search: str | None = None, time_zone: str | None = None) -> QuerySet[Project]:
    """Projects by name, each annotated with ``hub_count`` and ``group_count``; ``search``: a part of the name
    (any case), ``time_zone``: exactly that zone."""
    projects = Project.objects.annotate(hub_count=Count("hubs", distinct=True),
                                        group_count=Count("hubs__groups", distinct=True))
    if search:
        projects = projects.filter(name__icontains=search)
    if time_zone:
        projects = projects.filter(time_zone=time_zone)
    return projects.order_by("name", "pk")


def hub_list(*, project_id: int | None = None, search: str | None = None, enabled: bool | None = None
             ) -> QuerySet[Hub]:
    """Hubs by project name then name, with their project, annotated with ``entity_count`` and ``group_count``;
    ``search``: a part of the name (any case)."""
    hubs = Hub.objects.select_related("project").annotate(entity_count=Count("entities", distinct=True),
                                                          group_count=Count("groups", distinct=True))
    if project_id is not None:
        hubs = hubs.filter(project_id=project_id)
    if search:
        hubs = hubs.filter(name__icontains=search)
    if enabled is not None:
        hubs = hubs.filter(enabled=enabled)
    return hubs.order_by("project__name", "name", "pk")


def hub_entity_list(*, hub: Hub, search: str | None = None, type: str | None = None, parent: str | None = None,
                    path: str | None = None) -> QuerySet[Entity]:
    """``hub``'s entities by id (path), annotated with ``param_count``. ``search``: a part of the id or the name
    (any case); ``type``: exactly; ``parent``: children of that entity id (``""``: the roots); ``path``: that id."""
    entities = Entity.objects.filter(hub=hub).select_related("parent").annotate(param_count=Count("params"))
    if search:
        entities = entities.filter(Q(path__icontains=search) | Q(name__icontains=search))
    if type:
        entities = entities.filter(type=type)
    if parent is not None:
        entities = entities.filter(parent__isnull=True) if parent == "" else entities.filter(parent__path=parent)
    if path is not None:
        entities = entities.filter(path=path)
    return entities.order_by("path", "pk")


def hub_parameter_list(*, hub: Hub, search: str | None = None, entity: str | None = None, type: str | None = None,
                       writable: bool | None = None, search_paths: bool = False) -> QuerySet[Parameter]:
    """``hub``'s parameters by entity id then key. ``search``: a part of the key or name (any case), with
    ``search_paths`` of the entity's id too (the console's key picker); ``entity``: of that entity id; ``type``:
    exactly (number, integer, boolean, string, array, object)."""
    params = Parameter.objects.filter(entity__hub=hub).select_related("entity")
    if search:
        found = Q(key__icontains=search) | Q(name__icontains=search)
        params = params.filter(found | Q(entity__path__icontains=search) if search_paths else found)
    if entity is not None:
        params = params.filter(entity__path=entity)
    if type:
        params = params.filter(type=type)
    if writable is not None:
        params = params.filter(writable=writable)
    return params.order_by("entity__path", "key", "pk")


def hub_find(*, ref: str, project_name: str | None = None) -> Hub:
    """The hub named ``ref`` (or with id ``ref``), optionally within project ``project_name``.

    Raises LookupError with a message for a person when there is none, or several.
    """
    hubs = Hub.objects.select_related("project")
    if project_name is not None:
        hubs = hubs.filter(project__name=project_name)
    matches = list(hubs.filter(name=ref))
    if not matches and ref.isdigit():
        matches = list(hubs.filter(pk=int(ref)))
    if not matches:
        raise LookupError(f"no hub named {ref!r}" + (f" in project {project_name!r}" if project_name else ""))
    if len(matches) > 1:
        projects = ", ".join(sorted(hub.project.name for hub in matches))
        raise LookupError(f"several hubs are named {ref!r} (projects: {projects}); say which with --project")
    return matches[0]


def hub_entity_tree(*, hub: Hub) -> list[dict]:
    """``hub``'s entities as a forest, ordered by id: ``[{"entity": Entity, "params": [Parameter], "children": [...]}]``."""
    entities = sorted(Entity.objects.filter(hub=hub).prefetch_related("params"), key=lambda e: e.path)
    nodes = {e.pk: {"entity": e, "params": list(e.params.all()), "children": []} for e in entities}
    roots = []
    for entity in entities:
        parent = nodes.get(entity.parent_id)
        (parent["children"] if parent else roots).append(nodes[entity.pk])
    return roots
