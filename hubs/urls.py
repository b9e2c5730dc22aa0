"""HTTP API routes of the hubs app (included under api/)."""

from django.urls import path

from . import views

urlpatterns = [
    path("projects/<int:project_id>/export", views.api_project_export, name="api-project-export"),
    path("projects/import", views.api_project_import, name="api-project-import"),
]
