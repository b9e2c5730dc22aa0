"""/api/v1 endpoints of the notifications: routes (list, get; the webhook headers never shown back), their attempts,
and the test button. A ninja Router; the lead adds it in api/v1.py."""

from datetime import datetime
from typing import Annotated

from django.shortcuts import get_object_or_404
from ninja import Field, Path, Router, Schema
from ninja.pagination import paginate

from api.permissions import require
from api.schemas import Page, responses

from ..models import NotificationAttempt, NotificationRoute

router = Router(tags=["notifications"])

RouteId = Annotated[int, Path(ge=1, le=2**63 - 1, description="notification route id")]


class RouteOut(Schema):
    id: int
    project: int
    name: str
    kind: str = Field(..., description="email or webhook")
    email_to: str
    webhook_url: str = Field(..., description="the URL with any password or token masked")
    webhook_headers: list[str] = Field(..., description="the names of the extra headers; their values are secret")
    min_severity: str
    all_rules: bool
    system_alarms: bool
    group_wait_s: float
    repeat_interval_s: float
    send_cleared: bool
    enabled: bool

    @staticmethod
    def resolve_project(obj) -> int:
        return obj.project_id

    @staticmethod
    def resolve_webhook_url(obj) -> str:
        from hubsched.secrets import url_mask

        return url_mask(obj.webhook_url) if obj.webhook_url else ""

    @staticmethod
    def resolve_webhook_headers(obj) -> list[str]:
        return sorted(obj.headers())


class AttemptOut(Schema):
    id: int
    batch: str
    number: int
    at: datetime
    ok: bool
    status: int | None = Field(..., description="the webhook's HTTP status; null for e-mail")
    error: str
    alarms_count: int
    final: bool
    test: bool

    @staticmethod
    def resolve_batch(obj) -> str:
        return str(obj.batch)


@router.get("/notification-routes", response=responses(list[RouteOut], 400, 401, 403, 422),
            summary="List notification routes")
@paginate(Page)
def routes_list_view(request):
    """Every route. Needs ``alarms.view_notificationroute``."""
    require(request, "alarms.view_notificationroute")
    return NotificationRoute.objects.order_by("project_id", "name")


@router.get("/notification-routes/{int:route_id}/attempts", response=responses(list[AttemptOut], 400, 401, 403, 404, 422),
            summary="List a route's sending attempts")
@paginate(Page)
def route_attempts_view(request, route_id: RouteId):
    """The route's attempts, newest first (failed batches stay here). Needs ``alarms.view_notificationroute``."""
    require(request, "alarms.view_notificationroute")
    route = get_object_or_404(NotificationRoute, id=route_id)
    return NotificationAttempt.objects.filter(route=route).order_by("-at", "-id")


@router.post("/notification-routes/{int:route_id}/test", response=responses(AttemptOut, 400, 401, 403, 404, 422),
             summary="Send a test message")
def route_test_view(request, route_id: RouteId):
    """Send a test message on the route now; the attempt says whether it was delivered. Needs
    ``alarms.change_notificationroute``."""
    from .dispatch import route_test_send

    require(request, "alarms.change_notificationroute")
    route = get_object_or_404(NotificationRoute, id=route_id)
    return route_test_send(route=route, by=getattr(request, "auth", None) or request.user)
