"""HTTP API routes of the hubs app (included under api/)."""

from django.urls import path

from groups.views import api_group_kill

from . import views

urlpatterns = [
    path("projects/<int:project_id>/export", views.api_project_export, name="api-project-export"),
    path("projects/import", views.api_project_import, name="api-project-import"),
    path("groups/<int:group_id>/kill", api_group_kill, name="api-group-kill"),  # groups' API, routed under api/ here
]
