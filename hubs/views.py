"""HTTP API for projects: export a project document, import one. JSON, staff only (session), CSRF-exempt."""

from __future__ import annotations

from functools import wraps

from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .models import Project
from .project_document import ProjectDocumentError
from .project_document.validation import max_bytes
from .services import project_export, project_import

TRUE = {"1", "true", "yes", "on"}


def staff_required(view):
    """401 for an anonymous caller, 403 for a user who is not staff; JSON either way (no login redirect)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return JsonResponse({"errors": ["authentication required: log in to the admin first"]}, status=401)
        if not (request.user.is_active and request.user.is_staff):
            return JsonResponse({"errors": ["staff only"]}, status=403)
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
@staff_required
def api_project_export(request, project_id: int):
    """``GET /api/projects/<id>/export[?include_secrets=1]``: the document, as a JSON download."""
    project = get_object_or_404(Project, pk=project_id)
    include = request.GET.get("include_secrets", "").lower() in TRUE
    response = HttpResponse(project_export(project=project, include_secrets=include), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{_filename(project.name)}.json"'
    return response


@csrf_exempt
@require_POST
@staff_required
def api_project_import(request):
    """``POST /api/projects/import[?replace=1]`` with the document as body.

    201 ``{"id", "name", "created"}`` (``created`` false when ``replace`` updated a project in place);
    400 ``{"errors": [...]}`` for a bad document, one past the size limit, or a project that exists
    when ``replace`` was not asked. Nothing is written unless 201.
    """
    limit = max_bytes()
    # read the stream ourselves: request.body would stop at DATA_UPLOAD_MAX_MEMORY_SIZE, and never read past the limit
    raw = request.read(limit + 1)
    replace = request.GET.get("replace", "").lower() in TRUE
    try:
        result = project_import(raw=raw, replace=replace)
    except ProjectDocumentError as exc:
        return JsonResponse({"errors": exc.errors}, status=400)
    return JsonResponse({"id": result.project.pk, "name": result.project.name, "created": result.created}, status=201)


def _filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "project"
