"""Routes of the HTTP API: version 1, and the aliases of the paths that came before it."""

from django.urls import path

from .aliases import alias
from .v1 import api

urlpatterns = [
    path("v1/", api.urls),
    # the health check's short name, for load balancers and container health checks (not deprecated)
    path("health", alias("/api/v1/health", deprecated=False), name="api-health"),
]
