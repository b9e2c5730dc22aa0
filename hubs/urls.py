"""HTTP API routes of the hubs app (included under api/)."""

from django.urls import path

from api.aliases import alias

urlpatterns = [
    # deprecated aliases of /api/v1/ (one release): the v1 views, with Deprecation and Link headers
    path("projects/<int:project_id>/export", alias("/api/v1/projects/{project_id}/export"), name="api-project-export"),
    path("projects/import", alias("/api/v1/projects/import"), name="api-project-import"),
    path("groups/<int:group_id>/kill", alias("/api/v1/groups/{group_id}/kill"), name="api-group-kill"),  # groups' API
]
