"""URL routes: the admin, the HTTP API, and the console."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from api.aliases import alias
from hubsched.metrics.views import metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),
    path("api/status", alias("/api/v1/status"), name="api-status"),  # deprecated: GET /api/v1/status answers
    path("api/", include("hubs.urls")),
    path("api/", include("scripts_engine.urls")),
    path("api/streams/", include("streams.urls")),
    path("ruqi/", include("jobs.urls")),
    path("metrics", metrics, name="metrics"),  # Prometheus (docs/metrics.md)
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),  # POST only (Django 5)
    path("", include("console.urls")),  # the console (docs/console.md); last: its paths are the most general
]
