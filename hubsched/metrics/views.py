"""``GET /metrics``: the Prometheus text exposition of ``HubschedCollector``, for a bearer API token
(``Authorization: Bearer hs_…``, as Prometheus' ``authorization`` scrape setting sends it) or a session, whose
user has ``groups.view_group``. 401 without a valid caller, 403 without the permission, 405 for any method but GET."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest

from .collectors import HubschedCollector

PERMISSION = "groups.view_group"


def _caller(request: HttpRequest):
    """The user of the bearer token when one is sent (an invalid one is not replaced by the session), else the
    session's user; None when neither is valid."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if header:
        if scheme.lower() != "bearer" or not token.strip():
            return None
        from api.services import api_token_authenticate

        return api_token_authenticate(raw=token.strip())
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None


def registry() -> CollectorRegistry:
    """A registry holding only hubsched's collector (not the process/platform collectors of one web process)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HubschedCollector())
    return reg


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    user = _caller(request)
    if user is None:
        response = HttpResponse("authentication required: Authorization: Bearer <API token>\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="hubsched"'
        return response
    if not user.has_perm(PERMISSION):
        return HttpResponse(f"permission denied: {PERMISSION} needed\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_PLAIN_0_0_4)  # what generate_latest writes
