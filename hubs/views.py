"""HTTP API for projects: export a project document, import one.

JSON errors ``{"errors": [...]}``: 401 for an anonymous caller, 403 naming the permission missing (roles in
hubsched/roles.py). A session login is the credential, and a POST carries Django's CSRF token
(``X-CSRFToken`` header, from the ``csrftoken`` cookie) like every form of the admin.
"""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET, require_POST

from hubsched.roles import permissions_missing, project_import_permissions

from .models import Project
from .project_document import ProjectDocumentError
from .project_document.validation import max_bytes
from .services import project_export, project_import

TRUE = {"1", "true", "yes", "on"}


def _refused(request, *perms: str) -> JsonResponse | None:
    """The 401/403 answer when ``request.user`` may not do this, else None."""
    user = request.user
    if not user.is_authenticated:
        return JsonResponse({"errors": ["authentication required: log in to the admin first"]}, status=401)
    missing = permissions_missing(user, *perms)
    if missing:
        return JsonResponse({"errors": [f"permission required: {perm}" for perm in missing]}, status=403)
    return None


@require_GET
def api_project_export(request, project_id: int):
    """``GET /api/projects/<id>/export[?include_secrets=1]``: the document, as a JSON download.

    Needs ``hubs.view_project``; with ``include_secrets`` also ``hubs.export_secrets`` (403 otherwise: a
    caller who asked for the secrets never gets a document without them by surprise).
    """
    include = request.GET.get("include_secrets", "").lower() in TRUE
    refused = _refused(request, "hubs.view_project", *(["hubs.export_secrets"] if include else []))
    if refused:
        return refused
    project = get_object_or_404(Project, pk=project_id)
    response = HttpResponse(project_export(project=project, include_secrets=include), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{_filename(project.name)}.json"'
    return response


@require_POST
def api_project_import(request):
    """``POST /api/projects/import[?replace=1]`` with the document as body; needs the add permissions of
    every kind of row a document holds, and with ``replace`` their change and delete permissions
    (``hubsched.roles.project_import_permissions``: the integrator role holds them).

    201 ``{"id", "name", "created"}`` (``created`` false when ``replace`` updated a project in place);
    400 ``{"errors": [...]}`` for a bad document, one past the size limit, or a project that exists
    when ``replace`` was not asked. Nothing is written unless 201.
    """
    replace = request.GET.get("replace", "").lower() in TRUE
    refused = _refused(request, *project_import_permissions(replace=replace))
    if refused:
        return refused
    limit = max_bytes()
    # read the stream ourselves: request.body would stop at DATA_UPLOAD_MAX_MEMORY_SIZE, and never read past the limit
    raw = request.read(limit + 1)
    try:
        result = project_import(raw=raw, replace=replace)
    except ProjectDocumentError as exc:
        return JsonResponse({"errors": exc.errors}, status=400)
    return JsonResponse({"id": result.project.pk, "name": result.project.name, "created": result.created}, status=201)


def _filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "project"
