"""Reads for projects and hubs: finding a hub by name, and the entity tree as nested data for display."""

from __future__ import annotations

from .models import Entity, Hub


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
