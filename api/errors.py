"""The one error shape of /api/: ``{"error": {"code", "message", "details": [{"path", "message"}]}}``.

Every answer of status 400 and above under ``/api/`` has it: the NinjaAPI's own errors (``install``), and
whatever Django answers outside it (an unknown path, a wrong method, a refused CSRF check, a body past
``DATA_UPLOAD_MAX_MEMORY_SIZE``: ``ApiErrorShapeMiddleware``).
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied, ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

log = logging.getLogger(__name__)

CODES = {
    400: "bad_request", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 422: "invalid", 429: "throttled",
    500: "server_error", 503: "unavailable",
}
MESSAGES = {
    400: "the request could not be read", 401: "authentication required: send Authorization: Bearer <token>, "
    "or log in and send the csrftoken cookie's value in X-CSRFToken", 403: "permission denied",
    404: "no such resource", 405: "method not allowed on this path", 413: "the request body is too large",
    429: "too many requests", 500: "internal error: it was logged", 503: "unavailable",
}


class ApiError(Exception):
    """An answer in the error shape. ``details``: ``[{"path": "keys[3].entity", "message": "..."}]``."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 details: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or CODES.get(status, "error")
        self.details = details or []


def error_body(status: int, message: str | None = None, *, code: str | None = None,
               details: list[dict[str, str]] | None = None) -> dict:
    return {"error": {"code": code or CODES.get(status, "error"), "message": message or MESSAGES.get(status, "error"),
                      "details": details or []}}


def error_response(status: int, message: str | None = None, **kw) -> JsonResponse:
    return JsonResponse(error_body(status, message, **kw), status=status)


def denied(perms: list[str]) -> ApiError:
    return ApiError(403, "permission required: " + ", ".join(perms),
                    details=[{"path": "", "message": f"permission required: {p}"} for p in perms])


def _loc_path(loc) -> str:
    """pydantic's ``("body", "payload", "keys", 3, "entity")`` as ``keys[3].entity`` (the JSON path a caller wrote)."""
    parts = list(loc)
    # ninja puts the parameter's source and name first: body/query/path, then the argument's name
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form", "file"):
        source = parts.pop(0)
        if source == "body" and parts:
            parts.pop(0)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def django_validation_details(exc: DjangoValidationError, prefix: str = "") -> list[dict[str, str]]:
    """A Django ``ValidationError`` (a model's ``full_clean``) as details: one per message, at its field."""
    out = []
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            path = prefix + ("" if field == "__all__" else (("." if prefix else "") + field))
            out += [{"path": path, "message": m} for m in errors]
    else:
        out += [{"path": prefix, "message": m} for m in exc.messages]
    return out


def install(api) -> None:
    """Give ``api`` (a NinjaAPI) handlers that answer every error in the shape."""
    from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError

    def respond(request, status, message=None, **kw):
        return api.create_response(request, error_body(status, message, **kw), status=status)

    def on_api_error(request, exc: ApiError):
        return respond(request, exc.status, exc.message, code=exc.code, details=exc.details)

    def on_validation(request, exc: ValidationError):
        # pydantic prefixes a validator's own text with "Value error, ": the rule's text is what the admin says
        details = [{"path": _loc_path(e.get("loc", ())), "message": str(e.get("msg", "invalid")).removeprefix("Value error, ")}
                   for e in exc.errors]
        # a body that is not JSON at all is a 400: nothing in it could be checked
        if any(e.get("type") == "json_invalid" for e in exc.errors):
            return respond(request, 400, "the body is not valid JSON", details=details)
        return respond(request, 422, "the request did not pass validation", details=details)

    def on_django_validation(request, exc: DjangoValidationError):
        return respond(request, 422, "the request did not pass validation", details=django_validation_details(exc))

    def on_throttled(request, exc: Throttled):
        response = respond(request, 429, "too many requests: slow down")
        if getattr(exc, "wait", None):
            response["Retry-After"] = str(int(exc.wait) + 1)
        return response

    def on_authentication(request, exc):
        return respond(request, 401)

    def on_http_error(request, exc: HttpError):
        return respond(request, exc.status_code, str(exc) or None)

    def on_404(request, exc):
        return respond(request, 404, str(exc) if isinstance(exc, ApiError) else None)

    def on_denied(request, exc):
        return respond(request, 403, str(exc) or None)

    def on_integrity(request, exc: IntegrityError):
        # a unique rule the validators did not see first (two requests at once): a conflict, not a 500
        return respond(request, 409, "the change conflicts with an existing row (a name that must be unique?)")

    def on_exception(request, exc: Exception):
        log.exception("API %s %s failed", request.method, request.path)
        return respond(request, 500)

    api.add_exception_handler(ApiError, on_api_error)
    api.add_exception_handler(ValidationError, on_validation)
    api.add_exception_handler(DjangoValidationError, on_django_validation)
    api.add_exception_handler(Throttled, on_throttled)
    api.add_exception_handler(AuthenticationError, on_authentication)
    api.add_exception_handler(HttpError, on_http_error)
    api.add_exception_handler(Http404, on_404)
    api.add_exception_handler(PermissionDenied, on_denied)
    api.add_exception_handler(IntegrityError, on_integrity)
    api.add_exception_handler(Exception, on_exception)


class ApiErrorShapeMiddleware:
    """Under ``/api/``, an error answer that is not JSON (Django's HTML 404, a bare 405, a 413) gets the shape.
    JSON answers (the API's own, the CSRF failure view) pass untouched."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (response.status_code >= 400 and request.path.startswith("/api/")
                and not response.get("Content-Type", "").startswith("application/json")
                and not getattr(response, "streaming", False)):
            shaped = error_response(response.status_code)
            for header in ("Allow", "Retry-After", "WWW-Authenticate"):
                if response.has_header(header):
                    shaped[header] = response[header]
            return shaped
        return response

