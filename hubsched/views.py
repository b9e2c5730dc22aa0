"""Project-wide views: the CSRF failure answer (JSON for the HTTP API, Django's page elsewhere)."""

from __future__ import annotations

from django.views.csrf import csrf_failure as django_csrf_failure


def csrf_failure(request, reason: str = ""):
    """``CSRF_FAILURE_VIEW``: a 403 in the API's error shape for ``/api/`` paths, so a program is told what is
    missing (the ``X-CSRFToken`` header with the ``csrftoken`` cookie); Django's HTML page for the rest."""
    if request.path.startswith("/api/"):
        from api.errors import error_response

        return error_response(
            403, f"CSRF check failed ({reason}): send the csrftoken cookie's value in the X-CSRFToken header")
    return django_csrf_failure(request, reason=reason)
