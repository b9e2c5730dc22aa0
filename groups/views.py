"""HTTP API for groups."""

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from .selectors import status_summary


@require_GET
def api_status(request):
    return JsonResponse(status_summary())
