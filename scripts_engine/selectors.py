"""Reads of scripts, sinks and data sources: what a user may see, filtered as the API and the admin list them."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from .models import DataSource, Script, Sink


def _visible(model, user, perm: str) -> QuerySet:
    """Every row of ``model`` with ``perm`` (model permissions: no row-level rules), else none."""
    return model.objects.all() if user.has_perm(perm) else model.objects.none()


def script_list(*, user, project_id: int | None = None, search: str | None = None) -> QuerySet[Script]:
    """The scripts ``user`` may see (``scripts_engine.view_script``), by project then name; ``search``
    matches name, description or code (as the admin's search), case-insensitive."""
    qs = _visible(Script, user, "scripts_engine.view_script").select_related("project")
    if project_id is not None:
        qs = qs.filter(project_id=project_id)
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(description__icontains=search) | Q(code__icontains=search))
    return qs.order_by("project__name", "name", "pk")


def sink_list(*, user, project_id: int | None = None, search: str | None = None,
              enabled: bool | None = None) -> QuerySet[Sink]:
    """The sinks ``user`` may see (``scripts_engine.view_sink``); ``search`` matches name or table, never the
    URL (encrypted, and it may hold a password)."""
    qs = _visible(Sink, user, "scripts_engine.view_sink").select_related("project")
    if project_id is not None:
        qs = qs.filter(project_id=project_id)
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(table__icontains=search))
    if enabled is not None:
        qs = qs.filter(enabled=enabled)
    return qs.order_by("project__name", "name", "pk")


def data_source_list(*, user, project_id: int | None = None, search: str | None = None) -> QuerySet[DataSource]:
    """The data sources ``user`` may see (``scripts_engine.view_datasource``); ``search`` matches the name
    (never the URL)."""
    qs = _visible(DataSource, user, "scripts_engine.view_datasource").select_related("project")
    if project_id is not None:
        qs = qs.filter(project_id=project_id)
    if search:
        qs = qs.filter(name__icontains=search)
    return qs.order_by("project__name", "name", "pk")
