"""URL routes: the admin, the HTTP API, and the console."""

from django.contrib import admin
from django.urls import include, path

from groups.views import api_status

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/status", api_status, name="api-status"),
    path("api/", include("hubs.urls")),
    path("api/", include("scripts_engine.urls")),
    path("api/streams/", include("streams.urls")),
]
