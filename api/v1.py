"""The NinjaAPI of ``/api/v1/``: its routers (one per app, in the app's ``api.py``), authentication, throttle
and error handlers. The schema is at ``/api/v1/openapi.json``, interactive docs at ``/api/v1/docs``.

django-ninja rather than DRF: its schemas are pydantic models (the project's rules for documents already
are), it writes OpenAPI 3.1 from the type hints, and it serves its docs' files from the package (no CDN).
"""

from __future__ import annotations

from django.conf import settings
from ninja import NinjaAPI
from ninja.throttling import AuthRateThrottle

from . import errors
from .auth import AUTH

api = NinjaAPI(
    title="hubsched API",
    version="1",
    description="Projects, hubs, groups, runs and the scheduler of hubsched. Authenticate with "
                "`Authorization: Bearer <token>` (an API token, made in the admin) or a session with its CSRF "
                "token. Every error answers `{\"error\": {\"code\", \"message\", \"details\": [{\"path\", \"message\"}]}}`.",
    urls_namespace="api-v1",
    auth=AUTH,
    throttle=[AuthRateThrottle(settings.HUBSCHED_API_RATE)],
)
errors.install(api)

api.add_router("/", "api.system.router")
api.add_router("/", "api.tokens.router")
api.add_router("/", "hubs.api.router")
api.add_router("/", "groups.api.router")
api.add_router("/", "scripts_engine.api.router")
api.add_router("/", "streams.api.router")
api.add_router("/", "alarms.api.router")
api.add_router("/", "alarms.notifications.api.router")
api.add_router("/", "jobs.api.router")
